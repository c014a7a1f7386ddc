package dblock

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// MaxHold takes the lock away from a holder still holding it d after its
// grant, alive or not: Lost is closed, fn's context is cancelled with a
// cause wrapping ErrLockLost, Commit refuses, and the transaction is
// ended on the server (its writes roll back), even while the holder is
// stuck in a statement. Only for a transaction the Locker opens (Do,
// DoMulti, Lock, TryLock, and a Do joining one): refused in a caller's,
// which a default given through Defaults leaves unbounded. Off by
// default. See "A bound on holding: MaxHold" in the package
// documentation.
func MaxHold(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d <= 0 {
			return fmt.Errorf("dblock: MaxHold must be positive, got %v", d)
		}
		lc.maxHold, lc.maxHoldCall = d, true
		return nil
	}
}

// errMaxHoldCallerTx refuses MaxHold in a caller's transaction.
var errMaxHoldCallerTx = errors.New("dblock: MaxHold cannot bound a lock in a transaction of yours (LockTx, Do under WithTx): " +
	"the Locker would have to end a transaction it does not own behind your back; " +
	"bound it yourself (a context deadline on the transaction), or take the lock with Do or Lock")

// maxHold is the bound on a transaction the Locker opened. Its fields are
// guarded by the hold's mu.
type maxHold struct {
	d      time.Duration // the bound that runs out first
	until  time.Time
	connID int64 // CONNECTION_ID() of the lock's connection, killed when the bound runs out
	timer  *time.Timer
	fired  bool // the bound ran out while the lock was held
}

// boundHold bounds the hold's transaction to d from now, unless a bound
// that runs out sooner is already set (the shortest wins: a nested
// acquisition can only shorten it). The first bound asks the server for
// the connection's id (one round trip), for the KILL.
func (h *hold) boundHold(ctx context.Context, d time.Duration) error {
	h.mu.Lock()
	m := h.maxHold
	h.mu.Unlock()
	var id int64
	if m == nil {
		if err := (ownStmts{h.keeper}).QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
			if lerr := h.endedErr(); lerr != nil {
				return lerr
			}
			return fmt.Errorf("dblock: MaxHold of %s: reading the lock connection's id: %w", h.key, err)
		}
	}
	until := time.Now().Add(d)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != held {
		why := h.lostErr
		if why == nil {
			why = errReleased
		}
		return fmt.Errorf("dblock: MaxHold of %s: the lock ended before its bound was set: %w", h.key, why)
	}
	if h.maxHold == nil {
		h.maxHold = &maxHold{connID: id}
	}
	m = h.maxHold
	if m.timer != nil {
		if !until.Before(m.until) {
			return nil
		}
		m.timer.Stop()
	}
	m.d, m.until = d, until
	m.timer = time.AfterFunc(d, func() { h.expire(m, until) })
	return nil
}

// expire takes the lock away when the bound set for until runs out: the
// holder learns first (lose), then the connection is killed before it
// goes back to the pool (finish, endMaxHold).
func (h *hold) expire(m *maxHold, until time.Time) {
	h.mu.Lock()
	d, current := m.d, m.until.Equal(until)
	h.mu.Unlock()
	if !current {
		return // replaced by a shorter bound
	}
	held := time.Since(until.Add(-d)).Round(time.Millisecond)
	err := fmt.Errorf("%w: %s: MaxHold(%v) ran out (held %v): the lock was taken away, and its connection is killed so that the server rolls its transaction back", ErrLockLost, h.key, d, held)
	h.loseBy(err, func() { m.fired = true })
}

// endMaxHold stops the bound and, when it ran out, ends the transaction
// on the server: KILL of the lock's connection from the side pool, which
// also interrupts a statement the holder is stuck in, and the connection
// is discarded instead of going back to the pool. It runs in finish,
// while the connection is still the lock's, so the KILL cannot reach a
// session the pool has handed to someone else. It reports whether it
// discarded the connection.
func (h *hold) endMaxHold() bool {
	h.mu.Lock()
	m := h.maxHold
	var fired bool
	var id int64
	if m != nil {
		m.timer.Stop()
		fired, id = m.fired, m.connID
	}
	h.mu.Unlock()
	if !fired {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	if _, err := h.l.side.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10)); err != nil && mysqlErrorNumber(err) != erUnknownThread {
		h.l.log.Warn("dblock: MaxHold ran out but the lock's connection could not be killed: the transaction ends when its statement does",
			"granularity", h.key.granularity(), "connection", id, "error", err)
	}
	// Waits for the transaction's end (database/sql rolls it back once
	// the lock's context is cancelled), then discards the connection.
	_ = h.conn.Raw(func(any) error { return driver.ErrBadConn })
	return true
}
