package dblock

import (
	"context"
	"errors"
	"fmt"
)

// A Leadership is a won campaign: the caller leads its election until it
// resigns, the lease runs out without an answer from the server (a silent
// partition: Done is closed before another campaigner can win), or the
// server ends its session (KILL, a restart: Done is closed at the next
// keepalive, within a third of the lease, when a follower may lead
// already). Guard the leader's side effects with Token.
type Leadership struct {
	lk   *Lock
	key  Key
	stop context.CancelCauseFunc // ends the context of the leadership's transaction
}

// Done returns a channel that is closed when the leadership ends: Resign,
// or a loss (Err says why). A leader that sees it closed must stop acting
// as leader.
func (ld *Leadership) Done() <-chan struct{} {
	if ld == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return ld.lk.Lost()
}

// Err returns nil while the caller leads and after Resign, and an error
// wrapping ErrLockLost once the leadership was lost.
func (ld *Leadership) Err() error {
	if ld == nil {
		return errors.New("dblock: nil *Leadership")
	}
	return ld.lk.Err()
}

// Token returns the leadership's fencing token: greater than the token of
// every earlier leadership of the election. Pass it with the leader's side
// effects so that their targets can refuse a deposed leader's.
func (ld *Leadership) Token() int64 {
	if ld == nil {
		return 0
	}
	return ld.lk.Token()
}

// Resign ends the leadership: Done is closed at once, and the server hands
// the election to the next campaigner when the rollback of the
// leadership's transaction ends. ctx bounds the wait for that answer only:
// the rollback goes on without it. Resigning a leadership that ended
// already returns nil.
func (ld *Leadership) Resign(ctx context.Context) error {
	if ld == nil {
		return errors.New("dblock: Resign of a nil *Leadership")
	}
	done := make(chan error, 1)
	go func() {
		err := ld.lk.Rollback()
		ld.stop(nil)
		done <- err
	}()
	if ctx == nil {
		// Bad input must not keep the leadership: resign all the same.
		err := <-done
		return errors.Join(errors.New("dblock: Resign: nil context (the leadership was resigned all the same)"), err)
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("dblock: resigning %s: %w", ld.key, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dblock: resigning %s: the rollback goes on, the server hands the election on when it ends: %w", ld.key, context.Cause(ctx))
	}
}
