package decorator

import (
	"context"
	"errors"
	"fmt"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// Call runs fn holding key: the runtime part of the proxies that
// cmd/txlockgen generates, and the way to lock a function or method of
// any shape by hand (several parameters, no request): fn is a closure over
// the call's arguments. method names the call ("OrderService.Refund"):
// errors of the lock and of the commit start with it
// ("OrderService.Refund: dblock: lock not acquired: ..."), and still match
// dblock's sentinels with errors.Is. fn's own errors are returned
// unchanged, except a server outcome that dblock classifies (a deadlock fn
// ran into: dblock.ErrDeadlock), which comes wrapped, after the method's
// name. fn's ctx carries the lock's transaction; see WithLock for the
// transaction and reentrancy semantics.
//
// key is used as given. The zero key fails with an error wrapping
// dblock.ErrInvalidKey, and fn is not called (so does a nil l or fn, with
// its own error); but a key built from an empty id, such as
// dblock.Resource("order:"+""), is the valid key "order:": rule empty ids
// out before the call, as the key helpers and generated proxies do.
func Call(ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) error, opts ...dblock.LockOption) error {
	if err := checkCall(method, l, fn == nil); err != nil {
		return err
	}
	return runErr(ctx, l, method, key, fn, opts)
}

// CallResult is Call for a function with results: fn returns them beside
// its error (several results in a struct). It returns fn's result when
// the call committed, or beside fn's own error. On an error of the lock
// or of the commit it returns the zero R, also when an earlier run of fn
// was rolled back and run again (dblock.Retry): a result never comes from
// a run whose writes were rolled back, unless that run's own error is the
// one returned.
func CallResult[R any](ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) (R, error), opts ...dblock.LockOption) (R, error) {
	if err := checkCall(method, l, fn == nil); err != nil {
		var zero R
		return zero, err
	}
	return run(ctx, l, method, key, fn, opts)
}

// checkCall reports a nil Locker or fn given to Call or CallResult.
func checkCall(method string, l *dblock.Locker, nilFn bool) error {
	switch {
	case l == nil:
		return named(method, errNilLocker)
	case nilFn:
		return named(method, errors.New("nil fn: pass the function to run under the lock"))
	}
	return nil
}

// fnFailure marks the error of one run of fn, so that run can tell fn's
// error of the last run from an error of the lock: dblock returns fn's
// error as is, or wraps it (ErrDeadlock, ErrLockLost), but never returns
// an earlier run's error after a retry. It is transparent: its message and
// its chain are fn's error's.
type fnFailure struct{ err error }

func (f *fnFailure) Error() string { return f.err.Error() }
func (f *fnFailure) Unwrap() error { return f.err }

// run is the one code path of every decorator and proxy: run fn under
// Locker.Do (which refuses an invalid key before anything else), and keep
// fn's result only if the run it comes from is the one that committed or
// whose own error is returned. method, when not empty, prefixes the errors
// that are not fn's own.
func run[R any](ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) (R, error), opts []dblock.LockOption) (R, error) {
	var zero R
	var (
		res  R
		last *fnFailure // the error of fn's latest run, nil if it succeeded
	)
	err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
		var fnErr error
		res, fnErr = fn(ctx)
		last = nil
		if fnErr != nil {
			last = &fnFailure{err: fnErr}
			return last
		}
		return nil
	}, opts...)
	switch {
	case err == nil:
		return res, nil
	case last != nil && err == error(last):
		return res, last.err // fn's own error, unchanged
	case last != nil && errors.Is(err, last):
		return res, named(method, err) // fn's error, classified by dblock
	}
	return zero, named(method, err) // the lock or the commit failed
}

// runErr is run for a fn without results.
func runErr(ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) error, opts []dblock.LockOption) error {
	_, err := run(ctx, l, method, key, func(ctx context.Context) (struct{}, error) { return struct{}{}, fn(ctx) }, opts)
	return err
}

// named prefixes err with the method (or decorator) it concerns, if any.
func named(method string, err error) error {
	if method == "" {
		return err
	}
	return fmt.Errorf("%s: %w", method, err)
}
