package decorator

import (
	"context"
	"fmt"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// Call runs fn holding key: the runtime part of the proxies that
// cmd/txlockgen generates, usable by hand-written proxies too. method
// names the call in errors ("OrderService.Refund"). fn's ctx carries the
// lock's transaction; see WithLock for the transaction, reentrancy and
// error semantics, which are the same.
//
// A zero key, which the generated key code returns when a request field
// it is computed from is empty or behind a nil pointer, or when ctx
// carries no user, fails with an error wrapping dblock.ErrInvalidKey, and
// fn is not called.
func Call(ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) error, opts ...dblock.LockOption) error {
	if l == nil {
		return fmt.Errorf("decorator: %s: nil *dblock.Locker", method)
	}
	if fn == nil {
		return fmt.Errorf("decorator: %s: nil fn", method)
	}
	return run(ctx, l, method, key, fn, opts)
}

// run is the one code path of every decorator and proxy: check the key,
// then Locker.Do.
func run(ctx context.Context, l *dblock.Locker, method string, key dblock.Key, fn func(ctx context.Context) error, opts []dblock.LockOption) error {
	if key.IsZero() {
		return emptyKeyError(method)
	}
	return l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error { return fn(ctx) }, opts...)
}

// emptyKeyError says why a computed key can be empty.
func emptyKeyError(method string) error {
	prefix := "decorator: "
	if method != "" {
		prefix += method + ": "
	}
	return fmt.Errorf("%s%w: the key computed for the call is empty "+
		"(a request field it comes from is empty or behind a nil pointer, "+
		"or the context carries no user, or composed parts conflict)", prefix, dblock.ErrInvalidKey)
}
