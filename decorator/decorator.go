package decorator

import (
	"context"
	"errors"

	"github.com/txlock/txlock/dblock"
)

// WithLock returns a function of the same signature as fn that holds the
// key computed by key from each call's context and request for the
// duration of the call, and runs fn inside the lock's transaction: fn's
// ctx carries it, so repositories reach it with dblock.DB(ctx, db), and
// their writes commit with the release when fn returns a nil error, or
// roll back when it returns an error or panics.
//
// A call whose ctx already carries a transaction (an outer decorated call,
// dblock.WithTx) joins it: decorated functions calling each other with the
// same ctx share one transaction, and a key already held is reentrant.
//
// opts are passed to every acquisition (dblock.WaitTimeout, dblock.NoWait,
// dblock.Retry, dblock.Shared() to hold the key together with the other
// shared calls, ...). Errors of the lock are dblock's: errors.Is(err,
// dblock.ErrNotAcquired) and the like tell them apart. fn's own errors
// are returned unchanged (a deadlock fn ran into comes wrapped so that
// errors.Is finds dblock.ErrDeadlock), with the Resp fn returned
// alongside. On an error of the lock or of the commit, Resp is the zero
// value, also when a Retry ran fn in an attempt that was rolled back
// before the failing one: the Resp returned comes from the run that
// committed, or from the run whose error is returned.
//
// A key that cannot be computed fails the call with an error wrapping
// dblock.ErrInvalidKey that says which key helper and why
// ("decorator.WithLock: dblock: invalid key: ResourceKey("order:"): the
// id is empty"), and fn is not called. A nil l, key or fn does not panic:
// every call of the returned function reports it.
func WithLock[Req, Resp any](l *dblock.Locker, key KeyFunc[Req], fn func(ctx context.Context, req Req) (Resp, error), opts ...dblock.LockOption) func(ctx context.Context, req Req) (Resp, error) {
	return decorate("WithLock", l, key, fn, opts)
}

// WithLockErr is WithLock for functions that return only an error:
// func(ctx, Req) error.
func WithLockErr[Req any](l *dblock.Locker, key KeyFunc[Req], fn func(ctx context.Context, req Req) error, opts ...dblock.LockOption) func(ctx context.Context, req Req) error {
	var f func(context.Context, Req) (struct{}, error)
	if fn != nil {
		f = func(ctx context.Context, req Req) (struct{}, error) { return struct{}{}, fn(ctx, req) }
	}
	d := decorate("WithLockErr", l, key, f, opts)
	return func(ctx context.Context, req Req) error {
		_, err := d(ctx, req)
		return err
	}
}

// WithLock0 is WithLock for functions without a request: func(ctx) error,
// such as jobs. Its key function gets the zero struct{} as request: use a
// fixed key (GlobalKey, MethodKey[struct{}], ...) or one from the context
// (UserFromContext).
func WithLock0(l *dblock.Locker, key KeyFunc[struct{}], fn func(ctx context.Context) error, opts ...dblock.LockOption) func(ctx context.Context) error {
	var f func(context.Context, struct{}) (struct{}, error)
	if fn != nil {
		f = func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, fn(ctx) }
	}
	d := decorate("WithLock0", l, key, f, opts)
	return func(ctx context.Context) error {
		_, err := d(ctx, struct{}{})
		return err
	}
}

// decorate is the decorators' one implementation; name is the exported
// decorator's, for errors.
func decorate[Req, Resp any](name string, l *dblock.Locker, key KeyFunc[Req], fn func(context.Context, Req) (Resp, error), opts []dblock.LockOption) func(context.Context, Req) (Resp, error) {
	var bad error
	switch {
	case l == nil:
		bad = errNilLocker
	case key == nil:
		bad = errors.New("nil KeyFunc: pass a key helper (ResourceKey, UserKey, MethodKey, ...) or a func(context.Context, Req) dblock.Key")
	case fn == nil:
		bad = errors.New("nil fn: pass the function to run under the lock")
	}
	if bad != nil {
		bad = named("decorator."+name, bad)
		return func(context.Context, Req) (Resp, error) {
			var zero Resp
			return zero, bad
		}
	}
	return func(ctx context.Context, req Req) (Resp, error) {
		k, err := keyOf(ctx, name, key, req)
		if err != nil {
			var zero Resp
			return zero, err
		}
		return run(ctx, l, "", k, func(ctx context.Context) (Resp, error) { return fn(ctx, req) }, opts)
	}
}

// errNilLocker is the error of a decorator, Call or CallResult given no
// Locker, after the name of the function or method.
var errNilLocker = errors.New("nil *dblock.Locker: pass the Locker that dblock.New returns")
