package dblock

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"time"
)

// leaseSeconds is d rounded up to the whole seconds the server counts.
func leaseSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// leaseMargin is how much before the server's bound the holder gives up.
func leaseMargin(d time.Duration) time.Duration {
	return max(d/5, 200*time.Millisecond)
}

// presetLease sets the lease on a connection this Locker has not used
// with it yet, before BEGIN: a grant whose answer is lost (a partition)
// must not leave the key held for the session's old bound (wait_timeout
// is 8 h by default). Connections it has seen are checked by their first
// locking read instead (setLease), at no cost. A connection new to the
// Locker also tells its id, for its label.
func (l *Locker) presetLease(ctx context.Context, conn *sql.Conn, lease time.Duration) error {
	var dc any
	if err := conn.Raw(func(driverConn any) error { dc = driverConn; return nil }); err != nil {
		return err
	}
	secs := leaseSeconds(lease)
	got, ok := l.leased.get(dc)
	if ok && got == secs {
		l.labelOwed(dc)
		return nil
	}
	if _, err := conn.ExecContext(ctx, l.q.leaseStatement(secs)); err != nil {
		return fmt.Errorf("dblock: setting the lease on the lock's connection: %w", withCause(ctx, err))
	}
	if !ok && !l.sessions.off.Load() {
		// A connection the Locker has not used yet: its label is written
		// from the side pool (labelConn), never on the way to the lock.
		var id int64
		if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
			// A deadline that cut the statement before can leave the
			// driver's "bad connection" here: the cause says why.
			return fmt.Errorf("dblock: reading the lock connection's id: %w", withCause(ctx, err))
		}
		l.labelConn(id, dc)
	}
	l.leased.put(dc, secs)
	return nil
}

// setLease makes the session's idle bound the lease, unless the locking
// read showed it is already (it belongs to the connection, not to a
// Locker: another Locker on the pool, or the caller, may have changed it),
// and otherwise pings when the wait was long, so that the lease starts
// from an answer after the grant.
func (a *acquisition) setLease(lk *Lock, session [3]sql.NullInt64) error {
	c := lk.h.keeper
	secs := int64(leaseSeconds(a.lc.lease))
	var set []string
	same := true
	for i := range a.l.q.sessionVars {
		same = same && session[i].Valid && session[i].Int64 == secs
	}
	if !same {
		set = append(set, a.l.q.leaseAssignments(int(secs)))
	}
	if a.l.touch {
		// Galera multi-writer: a transaction the cluster aborts is not
		// always told to the client (see guardAborts); with autocommit
		// off, what the holder sends after such an abort stays in a new
		// transaction that the check before COMMIT rolls back.
		set = append(set, "autocommit = 0")
	}
	if len(set) > 0 {
		stmt := "SET SESSION " + strings.Join(set, ", ")
		if a.l.touch {
			stmt = "SET " + saveAutocommit + ", SESSION " + strings.Join(set, ", ")
			// Restored even if the answer is lost: the statement may have run.
			c.mu.Lock()
			c.autocommitOff = true
			c.mu.Unlock()
		}
		if _, err := c.exec(lk.h.ctx, stmt); err != nil {
			return fmt.Errorf("%w: %s: setting the session of the lock's connection: %w", ErrLockLost, lk.h.key, err)
		}
		if a.l.touch {
			c.op.Lock()
			err := c.guardLocked(lk.h.ctx, true)
			c.op.Unlock()
			if err != nil {
				return fmt.Errorf("%w: %s: marking the lock's transaction: %w", ErrLockLost, lk.h.key, err)
			}
		}
		return nil
	}
	c.mu.Lock()
	stale := time.Since(c.lastOK) > c.margin
	c.mu.Unlock()
	if stale {
		if err := c.ping(lk.h.ctx); err != nil {
			return fmt.Errorf("%w: %s: the connection failed right after the grant: %w", ErrLockLost, lk.h.key, err)
		}
	}
	return nil
}
