package dblock

import (
	"context"
	"database/sql"
	"fmt"
	"time"
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

// fenceAttempts bounds the bumps nextToken tries when the server refuses
// one as a deadlock (1213).
const fenceAttempts = 8

// nextToken bumps and returns key's fencing counter. The caller holds the
// key's lock, so on a single server no other holder bumps it concurrently.
// On a Galera multi-writer cluster, holders on different nodes may (row
// locks are node-local; certification settles which of them commits):
// their autocommit bumps then conflict, the loser gets 1213 (after the
// server's own wsrep_retry_autocommit), and the bump is tried again. Each
// successful bump is certified cluster-wide, so tokens stay unique and
// increasing.
func (l *Locker) nextToken(ctx context.Context, key Key) (int64, error) {
	h := key.Hash()
	var (
		res     sql.Result
		err     error
		backoff = RetryPolicy{Base: time.Millisecond, Max: 20 * time.Millisecond}
	)
	for n := 1; ; n++ {
		res, err = l.side.ExecContext(ctx, l.q.bumpFence, h[:])
		if err == nil || mysqlErrorNumber(err) != erLockDeadlock || n == fenceAttempts {
			break
		}
		if serr := sleepCtx(ctx, backoff.backoff(n)); serr != nil {
			err = fmt.Errorf("%w (retry abandoned: %w)", err, serr)
			break
		}
	}
	if err != nil {
		if mysqlErrorNumber(err) == erLockDeadlock {
			return 0, fmt.Errorf("dblock: taking the fencing token of %s: %d bumps refused as deadlocks (another holder bumping it: Galera multi-writer?): %w", key, fenceAttempts, err)
		}
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
