package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// A Leadership is a won campaign: the caller leads its election until it
// resigns, the lease runs out without an answer from the server (a silent
// partition: Done is closed before the server frees the named lock), or
// the server ends its session (KILL, a restart: Done is closed at the next
// keepalive, within a third of the lease, when a follower may lead
// already). Guard the leader's side effects with Token.
type Leadership struct {
	s   *leaderSession
	key Key
}

// leaderSession is what a Leadership holds: the pinned connection whose
// session holds the named lock, and its keepalive. It does not refer to
// the Leadership, so that a dropped Leadership can be resigned.
type leaderSession struct {
	l      *Locker
	key    Key
	conn   *sql.Conn
	keeper *keeper
	name   string
	token  int64

	once     sync.Once
	done     chan struct{} // closed when the leadership ends
	released chan struct{} // closed when the connection is gone
	mu       sync.Mutex
	err      error // why it was lost; nil after Resign
	relErr   error // RELEASE_LOCK's error, for Resign
}

// lose ends the leadership with err (the keeper's loss).
func (s *leaderSession) lose(err error) { s.end(err) }

// abandon resigns a Leadership that was dropped while it led.
func (s *leaderSession) abandon() {
	select {
	case <-s.done:
		return
	default:
	}
	s.l.log.Warn("dblock: a Leadership was dropped without Resign: resigning it", "granularity", s.key.granularity(), "token", s.token)
	s.end(nil)
}

// end closes Done once, recording err (nil: resigned), and releases the
// named lock and discards the connection in the background (the keeper
// may call it with op held).
func (s *leaderSession) end(err error) {
	s.once.Do(func() {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		s.keeper.stop()
		close(s.done)
		go s.release(err == nil)
	})
}

// release gives the named lock back (after Resign) and discards the
// connection, whose close frees the lock anyway.
func (s *leaderSession) release(resigned bool) {
	defer close(s.released)
	s.keeper.op.Lock()
	defer s.keeper.op.Unlock()
	if resigned {
		ctx, cancel := context.WithTimeout(context.Background(), s.keeper.lease)
		_, err := s.conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", s.name)
		cancel()
		if err != nil {
			s.mu.Lock()
			s.relErr = fmt.Errorf("releasing the named lock (closing the connection frees it): %w", err)
			s.mu.Unlock()
		}
	}
	discard(s.conn)
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
	return ld.s.done
}

// Err returns nil while the caller leads and after Resign, and an error
// wrapping ErrLockLost once the leadership was lost.
func (ld *Leadership) Err() error {
	if ld == nil {
		return errors.New("dblock: nil *Leadership")
	}
	ld.s.mu.Lock()
	defer ld.s.mu.Unlock()
	if ld.s.err != nil {
		return fmt.Errorf("dblock: the leadership of %s was lost: %w", ld.key, ld.s.err)
	}
	return nil
}

// Token returns the leadership's fencing token: greater than the token of
// every earlier leadership of the election (and of every Fencing lock of
// its key). Pass it with the leader's side effects so that their targets
// can refuse a deposed leader's.
func (ld *Leadership) Token() int64 {
	if ld == nil {
		return 0
	}
	return ld.s.token
}

// Resign ends the leadership: Done is closed at once, and the server hands
// the election to the next campaigner when it has released the named lock
// (RELEASE_LOCK, then the connection is closed). ctx bounds the wait for
// that only: the release goes on without it. Resigning a leadership that
// ended already returns nil.
func (ld *Leadership) Resign(ctx context.Context) error {
	if ld == nil {
		return errors.New("dblock: Resign of a nil *Leadership")
	}
	s := ld.s
	s.end(nil)
	if ctx == nil {
		// Bad input must not keep the leadership: resigned all the same.
		<-s.released
		return errors.New("dblock: Resign: nil context (the leadership was resigned all the same)")
	}
	select {
	case <-s.released:
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.relErr != nil {
			return fmt.Errorf("dblock: resigning %s: %w", ld.key, s.relErr)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dblock: resigning %s: the release goes on, the server hands the election on when it ends: %w", ld.key, context.Cause(ctx))
	}
}
