package dblock

import (
	"context"
	"fmt"
)

// Fencing makes the acquisition take a fencing token, read with
// Lock.Token or TokenFrom(ctx) in Do's fn. Tokens are strictly increasing
// per key, in the order the lock is granted, and never reused: the
// counter is bumped in autocommit on the Locker's side pool while the lock
// is held, so a holder that rolls back or crashes after taking its token
// does not give it back. Pass the token to the store the lock protects and
// have it reject writes carrying a token lower than one it has seen: that
// stops a holder that lost its lock (a long pause, a partition) from
// overwriting its successor's work.
//
// It costs one autocommit write (one fsync) per acquisition.
func Fencing() LockOption {
	return func(lc *lockConfig) error {
		lc.fencing = true
		return nil
	}
}

// nextToken bumps and returns key's fencing counter. The caller holds the
// key's lock, so no other holder can bump it concurrently.
func (l *Locker) nextToken(ctx context.Context, key Key) (int64, error) {
	h := key.Hash()
	res, err := l.side.ExecContext(ctx, l.q.bumpFence, h[:])
	if err != nil {
		return 0, fmt.Errorf("dblock: taking the fencing token of %s: %w", key, withCause(ctx, err))
	}
	token, err := res.LastInsertId()
	if err != nil || token <= 0 {
		return 0, fmt.Errorf("dblock: taking the fencing token of %s: server returned %d: %v", key, token, err)
	}
	return token, nil
}

// tokenKey is the context key of the fencing tokens a Do holds.
type tokenKey struct{ key Key }

// TokenFrom returns the fencing token of key held by the transaction ctx
// carries (Do's fn context, taken with the Fencing option), and whether
// there is one.
func TokenFrom(ctx context.Context, key Key) (int64, bool) {
	s := scopeFrom(ctx)
	if s == nil {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[key]
	return t, ok
}
