package decorator

import (
	"context"

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
// dblock.Retry, ...). Errors of the lock are dblock's: errors.Is(err,
// dblock.ErrNotAcquired) and the like tell them apart. fn's own errors
// are returned unchanged (a deadlock fn ran into comes wrapped so that
// errors.Is finds dblock.ErrDeadlock), with the Resp fn returned
// alongside. On an error
// of the lock or of the commit, Resp is the zero value, also when a Retry
// ran fn in an attempt that was rolled back before the failing one: the
// Resp returned comes from the run that committed, or from the run whose
// error is returned.
//
// WithLock panics if l, key or fn is nil: decoration happens once, at
// wiring time, where a nil is a programming error.
func WithLock[Req, Resp any](l *dblock.Locker, key KeyFunc[Req], fn func(ctx context.Context, req Req) (Resp, error), opts ...dblock.LockOption) func(ctx context.Context, req Req) (Resp, error) {
	mustDecorate("WithLock", l, key == nil, fn == nil)
	return func(ctx context.Context, req Req) (Resp, error) {
		return run(ctx, l, "", key(ctx, req), func(ctx context.Context) (Resp, error) { return fn(ctx, req) }, opts)
	}
}

// WithLockErr is WithLock for functions that return only an error:
// func(ctx, Req) error.
func WithLockErr[Req any](l *dblock.Locker, key KeyFunc[Req], fn func(ctx context.Context, req Req) error, opts ...dblock.LockOption) func(ctx context.Context, req Req) error {
	mustDecorate("WithLockErr", l, key == nil, fn == nil)
	return func(ctx context.Context, req Req) error {
		return runErr(ctx, l, "", key(ctx, req), func(ctx context.Context) error { return fn(ctx, req) }, opts)
	}
}

// WithLock0 is WithLock for functions without a request: func(ctx) error,
// such as jobs. Its key function gets the zero struct{} as request: use a
// fixed key (GlobalKey, MethodKey[struct{}], ...) or one from the context
// (UserFromContext).
func WithLock0(l *dblock.Locker, key KeyFunc[struct{}], fn func(ctx context.Context) error, opts ...dblock.LockOption) func(ctx context.Context) error {
	mustDecorate("WithLock0", l, key == nil, fn == nil)
	return func(ctx context.Context) error {
		return runErr(ctx, l, "", key(ctx, struct{}{}), fn, opts)
	}
}

// mustDecorate panics with a message naming the decorator when one of its
// arguments is nil.
func mustDecorate(name string, l *dblock.Locker, nilKey, nilFn bool) {
	switch {
	case l == nil:
		panic("decorator." + name + ": nil *dblock.Locker")
	case nilKey:
		panic("decorator." + name + ": nil key function")
	case nilFn:
		panic("decorator." + name + ": nil fn")
	}
}
