package decorator_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
)

func TestKeyHelpers(t *testing.T) {
	t.Parallel()
	ctx := decorator.ContextWithUser(context.Background(), "u-7")
	r := req{ID: "42", User: "u-9"}
	id := func(r req) string { return r.ID }
	for _, c := range []struct {
		name string
		key  decorator.KeyFunc[req]
		want dblock.Key
	}{
		{"method", decorator.MethodKey[req]("Orders.Refund"), dblock.Method("Orders.Refund")},
		{"operation", decorator.OperationKey[req]("refund"), dblock.Operation("refund")},
		{"global", decorator.GlobalKey[req], dblock.Global()},
		{"fixed", decorator.Fixed[req](dblock.User("x")), dblock.User("x")},
		{"resource", decorator.ResourceKey("order:", id), dblock.Resource("order:42")},
		{"user from request", decorator.UserKey(func(r req) string { return r.User }), dblock.User("u-9")},
		{"user from ctx", decorator.UserFromContext[req], dblock.User("u-7")},
		{"user + resource", decorator.Compose(decorator.UserFromContext, decorator.ResourceKey("order:", id)),
			dblock.Key{User: "u-7", Resource: "order:42"}},
		{"same field twice, same value", decorator.Compose(decorator.MethodKey[req]("M"), decorator.MethodKey[req]("M")), dblock.Method("M")},
		{"same field twice, conflict", decorator.Compose(decorator.MethodKey[req]("M"), decorator.MethodKey[req]("N")), dblock.Key{}},
	} {
		if got := c.key(ctx, r); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
	if got := decorator.UserFromContext(context.Background(), r); !got.IsZero() {
		t.Errorf("UserFromContext without a user: %s", got)
	}
	if u, ok := decorator.UserFrom(decorator.ContextWithUser(context.Background(), "")); ok {
		t.Errorf("UserFrom of an empty id: %q, true", u)
	}
}

// Types of ids for the helpers, as a service declares them.
type (
	orderID int64 // an integer id type

	region uint8 // an enum: its key is its number, not its String

	code string // a string type: its key is its bytes, not its String

	warehouse struct{ Site string } // keyed by its String, through a pointer

	stamp struct{ time.Time } // time.Time's String would be promoted

	ownStamp struct{ *time.Time } // a String of its own, beside an embedded time
)

func (s ownStamp) String() string { return s.UTC().Format(time.RFC3339Nano) }

func (r region) String() string     { return "region-" + strconv.Itoa(int(r)) }
func (c code) String() string       { return "code " + string(c) }
func (w *warehouse) String() string { return w.Site }

// ResourceKey and UserKey take ids of any type that txlockgen takes in a
// placeholder, and turn them into text the same way (the comparison with
// generated code on the same values is in cmd/txlockgen/internal/sample).
func TestIDsOfAnyType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	at := time.Date(2024, 2, 29, 9, 30, 0, 5e8, time.FixedZone("CET", 3600))
	check := func(name string, got, want dblock.Key) {
		t.Helper()
		if got != want {
			t.Errorf("%s: %s, want %s", name, got, want)
		}
	}
	check("int64", decorator.ResourceKey("order:", func(n int64) int64 { return n })(ctx, 42), dblock.Resource("order:42"))
	check("negative int", decorator.ResourceKey("n:", func(n int) int { return n })(ctx, -7), dblock.Resource("n:-7"))
	check("zero int", decorator.ResourceKey("n:", func(n int) int { return n })(ctx, 0), dblock.Resource("n:0"))
	check("defined integer", decorator.ResourceKey("order:", func(n orderID) orderID { return n })(ctx, 7), dblock.Resource("order:7"))
	check("integer with a String method", decorator.ResourceKey("r:", func(r region) region { return r })(ctx, 2), dblock.Resource("r:2"))
	check("uint64 max", decorator.UserKey(func(n uint64) uint64 { return n })(ctx, 1<<64-1), dblock.User("18446744073709551615"))
	check("time.Duration", decorator.ResourceKey("d:", func(d time.Duration) time.Duration { return d })(ctx, 1500*time.Millisecond), dblock.Resource("d:1500000000"))
	check("string type with a String method", decorator.ResourceKey("c:", func(c code) code { return c })(ctx, "x1"), dblock.Resource("c:x1"))
	check("Stringer", decorator.ResourceKey("wh:", func(w *warehouse) *warehouse { return w })(ctx, &warehouse{Site: "lyon"}), dblock.Resource("wh:lyon"))
	check("time.Time", decorator.ResourceKey("slot:", func(tm time.Time) time.Time { return tm })(ctx, at), dblock.Resource("slot:2024-02-29T08:30:00.5Z"))
	check("*time.Time", decorator.ResourceKey("slot:", func(tm *time.Time) *time.Time { return tm })(ctx, &at), dblock.Resource("slot:2024-02-29T08:30:00.5Z"))

	// One instant, one key: whatever the zone and the monotonic reading.
	slot := decorator.ResourceKey("slot:", func(tm time.Time) time.Time { return tm })
	now := time.Now()
	want := slot(ctx, now.Round(0))
	for name, tm := range map[string]time.Time{"monotonic": now, "another zone": now.In(time.FixedZone("X", -7*3600)), "UTC": now.UTC().Round(0)} {
		check(name, slot(ctx, tm), want)
	}
	if slot(ctx, now.Add(time.Nanosecond)) == want {
		t.Error("instants 1ns apart give one key")
	}
}

// A key that cannot be computed fails the decorated call with an error
// that wraps ErrInvalidKey and says which helper and why; the function is
// not called and nothing is locked.
func TestKeyErrorsSayWhy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	called := false
	body := func(context.Context, req) error { called = true; return nil }
	none := decorator.ResourceKey("order:", func(r req) string { return r.ID }) // r.ID empty
	const prefix = "decorator.WithLockErr: dblock: invalid key: "
	for _, c := range []struct {
		name string
		key  decorator.KeyFunc[req]
		ctx  context.Context
		want string
	}{
		{"empty string id", none, nil, `ResourceKey("order:"): the id is empty`},
		{"nil id function", decorator.ResourceKey[req, string]("order:", nil), nil,
			`ResourceKey("order:"): nil id function: pass a func(Req) ID that returns the request's id`},
		{"zero time", decorator.ResourceKey("slot:", func(req) time.Time { return time.Time{} }), nil, `ResourceKey("slot:"): the id is the zero time.Time`},
		{"nil *time.Time", decorator.ResourceKey("slot:", func(req) *time.Time { return nil }), nil, `ResourceKey("slot:"): the id is nil`},
		{"nil Stringer", decorator.ResourceKey("wh:", func(req) *warehouse { return nil }), nil, `ResourceKey("wh:"): the id is nil`},
		{"empty String()", decorator.ResourceKey("wh:", func(req) *warehouse { return &warehouse{} }), nil, `ResourceKey("wh:"): the id has an empty String()`},
		{"unsupported type", decorator.ResourceKey("price:", func(req) float64 { return 1.5 }), nil,
			`ResourceKey("price:"): the id is float64; want a string, an integer, a time.Time, or a type with a String() string method`},
		{"promoted time String", decorator.ResourceKey("at:", func(req) stamp { return stamp{time.Now()} }), nil,
			`ResourceKey("at:"): the id is decorator_test.stamp, which embeds time.Time: its String() may be time.Time's, which includes the monotonic clock reading and the zone, so one instant would give several keys; return the time.Time field instead`},
		{"time embedded, String of its own", decorator.ResourceKey("at:", func(req) *ownStamp { return &ownStamp{} }), nil,
			`ResourceKey("at:"): the id is *decorator_test.ownStamp, which embeds time.Time: its String() may be time.Time's, which includes the monotonic clock reading and the zone, so one instant would give several keys; return the time.Time field instead`},
		{"empty user id", decorator.UserKey(func(r req) string { return r.User }), nil, "UserKey: the id is empty"},
		{"nil user id function", decorator.UserKey[req, int64](nil), nil, "UserKey: nil id function: pass a func(Req) ID that returns the request's id"},
		{"no user in ctx", decorator.UserFromContext[req], nil, "UserFromContext: ctx carries no user: put it there with decorator.ContextWithUser"},
		{"empty method name", decorator.MethodKey[req](""), nil, "MethodKey: the name is empty"},
		{"empty operation name", decorator.OperationKey[req](""), nil, "OperationKey: the name is empty"},
		{"fixed zero key", decorator.Fixed[req](dblock.Key{}), nil, "Fixed: the key given is the zero dblock.Key"},
		{"compose, no parts", decorator.Compose[req](), nil, "Compose: no parts: pass the KeyFuncs to combine"},
		{"compose, nil part", decorator.Compose(decorator.MethodKey[req]("M"), nil), nil, "Compose: part 2 of 2 is nil"},
		{"compose, a part without user", decorator.Compose(decorator.ResourceKey("order:", func(req) int { return 1 }), decorator.UserFromContext[req]), nil,
			"UserFromContext: ctx carries no user: put it there with decorator.ContextWithUser"},
		{"compose, an empty id", decorator.Compose(decorator.UserFromContext[req], none), decorator.ContextWithUser(context.Background(), "u-7"),
			`ResourceKey("order:"): the id is empty`},
		{"compose, a KeyFunc of one's own", decorator.Compose(func(context.Context, req) dblock.Key { return dblock.Key{} }, decorator.GlobalKey[req]), nil,
			"Compose: part 1 of 2 returned the zero key"},
		{"compose, conflict", decorator.Compose(decorator.MethodKey[req]("M"), decorator.OperationKey[req]("o"), decorator.MethodKey[req]("N")), nil,
			`Compose: part 3 of 3 sets Method to "N", an earlier part to "M"`},
		{"a KeyFunc of one's own", func(context.Context, req) dblock.Key { return dblock.Key{} }, nil, "the KeyFunc returned the zero dblock.Key"},
	} {
		ctx := c.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		err := decorator.WithLockErr(e.locker, c.key, body)(ctx, req{})
		if !errors.Is(err, dblock.ErrInvalidKey) {
			t.Errorf("%s: %v, want ErrInvalidKey", c.name, err)
		} else if err.Error() != prefix+c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, err, prefix+c.want)
		}
	}
	if called {
		t.Error("fn ran with a key that could not be computed")
	}

	// Call and CallResult take the key as given: dblock refuses the zero
	// key, after the method's name.
	err := decorator.Call(context.Background(), e.locker, "Svc.M", dblock.Key{}, func(context.Context) error { called = true; return nil })
	if !errors.Is(err, dblock.ErrInvalidKey) || !strings.HasPrefix(err.Error(), "Svc.M: dblock: invalid key: empty key") || called {
		t.Errorf("Call with the zero key: %v (fn called: %v)", err, called)
	}
}

// A decorated call on an integer id holds the key of its decimal text.
func TestIntegerIDHoldsItsKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	type refund struct{ OrderID int64 }
	held := false
	fn := decorator.WithLock(e.locker, decorator.ResourceKey("order:", func(r refund) int64 { return r.OrderID }),
		func(ctx context.Context, r refund) (int64, error) {
			held = e.heldElsewhere(t, dblock.Resource("order:42"))
			return r.OrderID, nil
		})
	if n, err := fn(context.Background(), refund{OrderID: 42}); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
	if !held {
		t.Error(`"order:42" was not held during the call`)
	}
}
