package dblock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
	"time"
)

// hold is the state of a transaction the Locker opened and the locks it
// holds: everything the keepalive and the context watch reach. It refers
// to nothing the caller holds (the Lock, its *gorm.DB, its contexts), so
// that a Lock dropped without Commit or Rollback can be collected, and
// its transaction rolled back (abandon).
type hold struct {
	l       *Locker
	key     Key      // the first key, for messages and metrics
	mode    lockMode // the first key's mode, for metrics
	conn    *sql.Conn
	keeper  *keeper
	ctx     context.Context // the lock's context: cancelled with the loss as cause
	cancel  context.CancelCauseFunc
	granted time.Time

	mu        sync.Mutex
	state     lockState
	lostErr   error         // why, in state lost
	lost      chan struct{} // made by the first Lost call; closed when the lock ends
	stopWatch func() bool
	closing   sync.Once

	maxHold *maxHold // MaxHold's bound, nil without (maxhold.go)
}

type lockState uint8

const (
	held lockState = iota
	released
	lost
)

// errReleased is why a released lock's transaction can no longer be
// joined.
var errReleased = fmt.Errorf("%w: it was released", ErrNotHeld)

// endedErr returns nil while the lock is held, and why it is not after.
func (h *hold) endedErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.state {
	case lost:
		return h.lostErr
	case released:
		return errReleased
	}
	return nil
}

// lose marks the lock lost: Lost is closed, statements are refused, the
// lock's context (Do's fn context) is cancelled with cause err, which makes
// database/sql roll the transaction back, and the connection goes back to
// the pool.
func (h *hold) lose(err error) { h.loseBy(err, nil) }

// loseBy is lose; mark, when not nil, runs under mu if this call is the
// one that loses the lock.
func (h *hold) loseBy(err error, mark func()) {
	h.mu.Lock()
	if h.state != held {
		h.mu.Unlock()
		return
	}
	h.state, h.lostErr = lost, err
	if mark != nil {
		mark()
	}
	// Statements are refused before Lost is closed: a holder that sees it
	// closed gets the loss from its next statement, not whatever the
	// transaction, rolled back meanwhile by database/sql, answers.
	h.keeper.refuse(err)
	h.closeLostLocked()
	h.mu.Unlock()
	h.l.log.Warn("dblock: lock lost", "granularity", h.key.granularity(), "error", err)
	h.l.tel.lost(h.ctx, h.key, h.mode, err)
	h.l.tel.held(h.ctx, h.key, h.mode, time.Since(h.granted))
	h.cancel(err)
	go h.finish() // the rollback may wait for a statement the holder has in flight
}

// end moves a held lock to released and reports whether it was held; a
// lock that was not returns why.
func (h *hold) end() (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.state {
	case held:
		h.state = released
		h.closeLostLocked()
		h.l.tel.held(h.ctx, h.key, h.mode, time.Since(h.granted))
		return true, nil
	case lost:
		return false, h.lostErr
	}
	return false, fmt.Errorf("%w: %s was already released", ErrNotHeld, h.key)
}

// closeLostLocked closes Lost's channel if someone asked for it; a later
// Lost call returns a closed one. The caller holds mu and has just moved
// the lock out of the held state.
func (h *hold) closeLostLocked() {
	if h.lost != nil {
		close(h.lost)
	}
}

// abort ends a transaction whose acquisition failed (it holds only locks).
func (h *hold) abort() {
	h.mu.Lock()
	h.state = released
	h.mu.Unlock()
	if h.keeper != nil {
		_ = h.keeper.rollback()
	}
	h.finish()
}

// finish gives the connection back to the pool and ends the lock's
// context. The transaction has ended or is ending.
func (h *hold) finish() {
	h.closing.Do(func() {
		h.mu.Lock()
		stop := h.stopWatch
		h.mu.Unlock()
		if stop != nil {
			stop()
		}
		if h.conn != nil {
			switch {
			case h.endMaxHold():
				// MaxHold ran out: the connection was killed and discarded.
			case h.keeper != nil && h.keeper.wasStalled():
				// The connection waits for an answer that may never come:
				// it goes back to the pool (which discards it) when the
				// network gives up, not now.
				go h.conn.Close()
			default:
				if h.keeper != nil && h.keeper.autocommitWasOff() {
					h.restoreAutocommit()
				}
				_ = h.conn.Close() // waits for the transaction to end
			}
		}
		h.cancel(nil)
	})
}

// restoreAutocommit turns autocommit back on for the connection of a
// guarded transaction once it has ended, before the connection goes back
// to the pool; a connection where that fails is closed instead. The value
// is the session's own from before (saveAutocommit): a DSN may have
// autocommit=0.
func (h *hold) restoreAutocommit() {
	// The transaction must be over first: turning autocommit on commits
	// an open one. A no-op when it has ended (ErrTxDone).
	_ = h.keeper.tx.Rollback()
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	if _, err := h.conn.ExecContext(ctx, restoreAutocommitStmt); err != nil {
		h.l.log.Warn("dblock: closing a lock connection whose autocommit could not be restored", "error", err)
		_ = h.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// abandon releases the lock of a Lock that became unreachable without
// Commit or Rollback: nothing can commit its transaction any more.
func (h *hold) abandon() {
	h.mu.Lock()
	wasHeld := h.state == held
	h.mu.Unlock()
	if wasHeld {
		h.l.log.Warn("dblock: a Lock was dropped without Commit or Rollback: rolling its transaction back",
			"granularity", h.key.granularity(), "held", time.Since(h.granted).Round(time.Millisecond))
	}
	if ok, _ := h.end(); ok {
		_ = h.keeper.rollback()
	}
	h.finish()
}

// restoreAutocommitStmt gives the session its autocommit from before the
// Locker turned it off.
const restoreAutocommitStmt = "SET SESSION autocommit = COALESCE(@txlock_autocommit, 1)"
