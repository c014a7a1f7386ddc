package dblock

import (
	"context"
	"fmt"
	"time"
)

// Fencing makes the acquisition take a fencing token, read with
// Lock.Token or TokenFrom(ctx) in Do's fn. Tokens are strictly increasing
// per key, in the order the lock is granted (on a single server), and
// never reused: the
// counter is bumped in autocommit on the Locker's side pool while the lock
// is held, so a holder that rolls back or crashes after taking its token
// does not give it back. Pass the token to the store the lock protects and
// have it reject writes carrying a token lower than one it has seen: that
// stops a holder that lost its lock (a long pause, a partition) from
// overwriting its successor's work.
//
// On a Galera multi-writer cluster, where holders on two nodes can
// overlap until certification settles it, tokens are still unique and
// increasing, in the order they are taken: a holder that loses at commit
// may have taken a higher token than the winner. When the counter's row
// keeps being bumped by other holders (every bump refused as a deadlock),
// Do, Lock and TryLock roll the attempt back and return ErrDeadlock, which
// Retry runs again; in a transaction of yours (LockTx, WithTx) the row
// stays locked by it and the error is returned: roll it back.
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
// server's own wsrep_retry_autocommit), and the bump is sent again, up to
// fenceAttempts times. Each successful bump is certified cluster-wide, so
// tokens stay unique and increasing, in the order of the bumps (which is
// not always the order in which the holders' transactions commit).
func (l *Locker) nextToken(ctx context.Context, key Key) (int64, error) {
	const step = "taking the fencing token of"
	h := key.Hash()
	backoff := RetryPolicy{Base: time.Millisecond, Max: 20 * time.Millisecond}
	for n := 1; ; n++ {
		res, err := l.side.ExecContext(ctx, l.q.bumpFence, h[:])
		if err == nil {
			token, err := res.LastInsertId()
			if err != nil || token <= 0 {
				return 0, fmt.Errorf("dblock: %s %s: server returned %d: %v", step, key, token, err)
			}
			return token, nil
		}
		if e := l.notPrimary(step, key, err); e != nil {
			return 0, e
		}
		if mysqlErrorNumber(err) != erLockDeadlock {
			return 0, fmt.Errorf("dblock: %s %s: %w", step, key, withCause(ctx, err))
		}
		if n == fenceAttempts {
			return 0, fmt.Errorf("dblock: %s %s: %d bumps refused as deadlocks (another holder bumping it: Galera multi-writer?): %w", step, key, n, err)
		}
		l.log.DebugContext(ctx, "dblock: fencing token bump refused as a deadlock, retrying", "granularity", key.Granularity(), "attempt", n)
		if serr := sleepCtx(ctx, backoff.backoff(n)); serr != nil {
			return 0, fmt.Errorf("dblock: %s %s: %d bump(s) refused as deadlocks, retry abandoned: %w (%w)", step, key, n, serr, err)
		}
	}
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
