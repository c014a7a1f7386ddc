package decorator

import (
	"context"
	"fmt"
	"strconv"

	"github.com/txlock/txlock/dblock"
)

// A KeyFunc computes the lock key of one call from its context and
// request. A KeyFunc that cannot compute the key (an empty request field,
// no user in the context) returns the zero Key: the decorated call then
// fails with an error wrapping dblock.ErrInvalidKey instead of taking a
// broader or narrower lock than intended. The helpers below also say why
// in that error, naming the helper; a KeyFunc of your own is named as
// such.
//
// Any function literal func(context.Context, Req) dblock.Key is a KeyFunc;
// the helpers below build the common ones, one per granularity.
type KeyFunc[Req any] func(ctx context.Context, req Req) dblock.Key

// Fixed returns a KeyFunc that always returns k, whatever the request.
func Fixed[Req any](k dblock.Key) KeyFunc[Req] {
	return fixed[Req](k, "Fixed: the key given is the zero dblock.Key")
}

// MethodKey returns a KeyFunc for the method granularity: one lock per
// service method, such as "OrderService.Refund", whatever the request.
// Calls of the method are serialised across all processes.
func MethodKey[Req any](name string) KeyFunc[Req] {
	return fixed[Req](dblock.Method(name), "MethodKey: the name is empty")
}

// OperationKey returns a KeyFunc for the operation granularity: one lock
// per kind of action, such as "refund", shared by every method that
// performs it.
func OperationKey[Req any](name string) KeyFunc[Req] {
	return fixed[Req](dblock.Operation(name), "OperationKey: the name is empty")
}

// fixed returns a KeyFunc that returns k, or says why when k is zero.
func fixed[Req any](k dblock.Key, whyZero string) KeyFunc[Req] {
	if k.IsZero() {
		return func(ctx context.Context, _ Req) dblock.Key { return zeroKey(ctx, whyZero) }
	}
	return func(context.Context, Req) dblock.Key { return k }
}

// GlobalKey is the KeyFunc of the global granularity: the one
// system-wide key. Pass it uninstantiated, the request type is inferred:
//
//	job := decorator.WithLock0(locker, decorator.GlobalKey, runNightly, dblock.NoWait())
func GlobalKey[Req any](context.Context, Req) dblock.Key { return dblock.Global() }

// ResourceKey returns a KeyFunc for the resource granularity: one lock per
// business object, named prefix followed by the id that id returns from
// the request ("order:" + req.OrderID). ID is inferred from id, and is
// turned into text as cmd/txlockgen turns a placeholder: a string as is,
// an integer in decimal (even when its type has a String method),
// time.Time as the instant in UTC (RFC 3339 with nanoseconds), another
// type by its String method. An empty string, a zero time.Time, a nil
// pointer or an empty String() gives the zero key: the call fails with
// dblock.ErrInvalidKey, naming this helper and prefix, rather than lock
// "order:". So does an ID of another type, or a nil id.
//
//	decorator.ResourceKey("order:", func(r RefundRequest) int64 { return r.OrderID })
func ResourceKey[Req, ID any](prefix string, id func(req Req) ID) KeyFunc[Req] {
	return idKey(fmt.Sprintf("ResourceKey(%s)", strconv.Quote(prefix)), id,
		func(text string) dblock.Key { return dblock.Resource(prefix + text) })
}

// UserKey returns a KeyFunc for the user granularity taken from the
// request: one lock per user (or tenant), whose id the function id
// returns, turned into text as ResourceKey's. An empty id gives the zero
// key.
func UserKey[Req, ID any](id func(req Req) ID) KeyFunc[Req] {
	return idKey("UserKey", id, dblock.User)
}

// idKey is ResourceKey and UserKey: the key that key builds from the text
// of the id, or the zero key with the reason, after helper.
func idKey[Req, ID any](helper string, id func(Req) ID, key func(text string) dblock.Key) KeyFunc[Req] {
	text, err := textOf[ID]()
	switch {
	case id == nil:
		why := helper + ": nil id function: pass a func(Req) ID that returns the request's id"
		return func(ctx context.Context, _ Req) dblock.Key { return zeroKey(ctx, why) }
	case err != nil:
		why := helper + ": the id " + err.Error()
		return func(ctx context.Context, _ Req) dblock.Key { return zeroKey(ctx, why) }
	}
	return func(ctx context.Context, req Req) dblock.Key {
		t, empty := text(id(req))
		if empty != "" {
			return zeroKey(ctx, helper+": the id "+empty)
		}
		return key(t)
	}
}

// UserFromContext is the KeyFunc of the user granularity taken from the
// context: the user that ContextWithUser put there (typically an
// authentication middleware). Without one it returns the zero key, and the
// call fails with dblock.ErrInvalidKey. Pass it uninstantiated:
//
//	withdraw := decorator.WithLockErr(locker, decorator.UserFromContext, wallet.Withdraw)
func UserFromContext[Req any](ctx context.Context, _ Req) dblock.Key {
	id, ok := UserFrom(ctx)
	if !ok {
		return zeroKey(ctx, "UserFromContext: ctx carries no user: put it there with decorator.ContextWithUser")
	}
	return dblock.User(id)
}

// Compose returns a KeyFunc whose key combines the fields of the keys of
// parts: Compose(UserFromContext, ResourceKey("order:", orderID)) locks
// "user u-7 on order 42", a lock of its own, distinct from either part.
//
// If a part returns the zero key, or two parts set the same field to
// different values, the composed key is the zero key: the call fails with
// dblock.ErrInvalidKey, saying which part and why, instead of silently
// locking with a field missing. So does Compose without parts or with a
// nil one. Global cannot be combined with other fields
// (dblock.Key.Validate).
func Compose[Req any](parts ...KeyFunc[Req]) KeyFunc[Req] {
	if len(parts) == 0 {
		return func(ctx context.Context, _ Req) dblock.Key {
			return zeroKey(ctx, "Compose: no parts: pass the KeyFuncs to combine")
		}
	}
	for i, p := range parts {
		if p == nil {
			why := fmt.Sprintf("Compose: part %d of %d is nil", i+1, len(parts))
			return func(ctx context.Context, _ Req) dblock.Key { return zeroKey(ctx, why) }
		}
	}
	return func(ctx context.Context, req Req) dblock.Key {
		var k dblock.Key
		for i, p := range parts {
			pk := p(ctx, req)
			if pk.IsZero() {
				return zeroKey(ctx, fmt.Sprintf("Compose: part %d of %d returned the zero key", i+1, len(parts)))
			}
			var clash string
			if k, clash = merge(k, pk); clash != "" {
				return zeroKey(ctx, fmt.Sprintf("Compose: part %d of %d sets %s", i+1, len(parts), clash))
			}
		}
		return k
	}
}

// merge sets the fields of b on a. When both set one field to different
// values it describes the clash.
func merge(a, b dblock.Key) (dblock.Key, string) {
	clash := ""
	set := func(name string, dst *string, v string) {
		switch {
		case v == "":
		case *dst == "":
			*dst = v
		case *dst != v && clash == "":
			clash = fmt.Sprintf("%s to %q, an earlier part to %q", name, v, *dst)
		}
	}
	set("Resource", &a.Resource, b.Resource)
	set("Operation", &a.Operation, b.Operation)
	set("Method", &a.Method, b.Method)
	set("User", &a.User, b.User)
	a.Global = a.Global || b.Global
	return a, clash
}

// keyCtx is the context a decorated call gives its KeyFunc, in which the
// key helpers say why they return the zero key (see zeroKey).
type keyCtx struct {
	context.Context
	why string
}

// whyKey is the context key under which a keyCtx finds itself.
type whyKey struct{}

// Value returns the keyCtx itself for whyKey, and ctx's values otherwise.
func (c *keyCtx) Value(k any) any {
	if k == (whyKey{}) {
		return c
	}
	return c.Context.Value(k)
}

// zeroKey returns the zero key, and tells the decorated call that asked
// for the key (if one did) why. The first reason given wins: a part of a
// Compose says more than Compose.
func zeroKey(ctx context.Context, why string) dblock.Key {
	if c, ok := ctx.Value(whyKey{}).(*keyCtx); ok && c.why == "" {
		c.why = why
	}
	return dblock.Key{}
}

// keyOf computes the key of a call of the decorator name, or the error
// that says why it cannot.
func keyOf[Req any](ctx context.Context, name string, key KeyFunc[Req], req Req) (dblock.Key, error) {
	kc := &keyCtx{Context: ctx}
	if k := key(kc, req); !k.IsZero() {
		return k, nil
	}
	why := kc.why
	if why == "" {
		why = "the KeyFunc returned the zero dblock.Key"
	}
	return dblock.Key{}, fmt.Errorf("decorator.%s: %w: %s", name, dblock.ErrInvalidKey, why)
}

// userKey is the context key of the caller's user id.
type userKey struct{}

// ContextWithUser returns a copy of ctx that carries the id of the user
// the call acts for, which UserFromContext (and the user=ctx directive of
// generated proxies) locks on. An authentication middleware typically
// calls it.
func ContextWithUser(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, userKey{}, id)
}

// UserFrom returns the user id ctx carries, if any (see ContextWithUser).
func UserFrom(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(userKey{}).(string)
	return id, ok && id != ""
}
