package decorator

import (
	"context"

	"github.com/txlock/txlock/dblock"
)

// A KeyFunc computes the lock key of one call from its context and
// request. A KeyFunc that cannot compute the key (an empty request field,
// no user in the context) returns the zero Key: the decorated call then
// fails with an error wrapping dblock.ErrInvalidKey instead of taking a
// broader or narrower lock than intended.
//
// Any function literal func(context.Context, Req) dblock.Key is a KeyFunc;
// the helpers below build the common ones, one per granularity.
type KeyFunc[Req any] func(ctx context.Context, req Req) dblock.Key

// Fixed returns a KeyFunc that always returns k, whatever the request.
func Fixed[Req any](k dblock.Key) KeyFunc[Req] {
	return func(context.Context, Req) dblock.Key { return k }
}

// MethodKey returns a KeyFunc for the method granularity: one lock per
// service method, such as "OrderService.Refund", whatever the request.
// Calls of the method are serialised across all processes.
func MethodKey[Req any](name string) KeyFunc[Req] { return Fixed[Req](dblock.Method(name)) }

// OperationKey returns a KeyFunc for the operation granularity: one lock
// per kind of action, such as "refund", shared by every method that
// performs it.
func OperationKey[Req any](name string) KeyFunc[Req] { return Fixed[Req](dblock.Operation(name)) }

// GlobalKey is the KeyFunc of the global granularity: the one
// system-wide key. Pass it uninstantiated, the request type is inferred:
//
//	job := decorator.WithLock0(locker, decorator.GlobalKey, runNightly, dblock.NoWait())
func GlobalKey[Req any](context.Context, Req) dblock.Key { return dblock.Global() }

// ResourceKey returns a KeyFunc for the resource granularity: one lock per
// business object, named prefix followed by the request field that id
// returns ("order:" + req.OrderID). An empty id gives the zero key (the
// call fails with dblock.ErrInvalidKey rather than lock "order:").
func ResourceKey[Req any](prefix string, id func(req Req) string) KeyFunc[Req] {
	if id == nil {
		panic("decorator.ResourceKey: nil id function")
	}
	return func(_ context.Context, req Req) dblock.Key {
		v := id(req)
		if v == "" {
			return dblock.Key{}
		}
		return dblock.Resource(prefix + v)
	}
}

// UserKey returns a KeyFunc for the user granularity taken from the
// request: one lock per user (or tenant), whose id the function id
// returns. An empty id gives the zero key.
func UserKey[Req any](id func(req Req) string) KeyFunc[Req] {
	if id == nil {
		panic("decorator.UserKey: nil id function")
	}
	return func(_ context.Context, req Req) dblock.Key {
		return dblock.User(id(req)) // User("") is the zero key
	}
}

// UserFromContext is the KeyFunc of the user granularity taken from the
// context: the user that ContextWithUser put there (typically an
// authentication middleware). Without one it returns the zero key, and the
// call fails with dblock.ErrInvalidKey. Pass it uninstantiated:
//
//	withdraw := decorator.WithLockErr(locker, decorator.UserFromContext, wallet.Withdraw)
func UserFromContext[Req any](ctx context.Context, _ Req) dblock.Key {
	id, _ := UserFrom(ctx)
	return dblock.User(id)
}

// Compose returns a KeyFunc whose key combines the fields of the keys of
// parts: Compose(UserFromContext, ResourceKey("order:", orderID)) locks
// "user u-7 on order 42", a lock of its own, distinct from either part.
//
// If a part returns the zero key, or two parts set the same field to
// different values, the composed key is the zero key: the call fails with
// dblock.ErrInvalidKey instead of silently locking with a field missing.
// Global cannot be combined with other fields (dblock.Key.Validate).
func Compose[Req any](parts ...KeyFunc[Req]) KeyFunc[Req] {
	if len(parts) == 0 {
		panic("decorator.Compose: no parts")
	}
	for _, p := range parts {
		if p == nil {
			panic("decorator.Compose: nil part")
		}
	}
	return func(ctx context.Context, req Req) dblock.Key {
		var k dblock.Key
		for _, p := range parts {
			pk := p(ctx, req)
			if pk.IsZero() {
				return dblock.Key{}
			}
			var ok bool
			if k, ok = merge(k, pk); !ok {
				return dblock.Key{}
			}
		}
		return k
	}
}

// merge sets the fields of b on a, and reports false when both set one
// field to different values.
func merge(a, b dblock.Key) (dblock.Key, bool) {
	ok := true
	set := func(dst *string, v string) {
		switch {
		case v == "":
		case *dst == "":
			*dst = v
		case *dst != v:
			ok = false
		}
	}
	set(&a.Resource, b.Resource)
	set(&a.Operation, b.Operation)
	set(&a.Method, b.Method)
	set(&a.User, b.User)
	a.Global = a.Global || b.Global
	return a, ok
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
