package dblock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"runtime"
	"strconv"
	"time"
)

// campaignSliceSecs bounds one GET_LOCK wait (whole seconds: the server's
// bound), after which the campaign waits again; ctx ending interrupts a
// wait on the server at once (KILL QUERY), the slice bounds what a wait
// the client no longer sees (a partition) keeps going on the server.
const campaignSliceSecs = 2

// Campaign waits until the caller leads the election, then returns its
// Leadership, led with value (at most 1024 characters of UTF-8). ctx
// bounds the wait only, as in etcd: the leadership lasts until Resign, a
// loss (Done), or until the Leadership is dropped unreachable (then it is
// resigned, with a warning logged).
func (e *Election) Campaign(ctx context.Context, value string) (*Leadership, error) {
	if err := e.check(ctx); err != nil {
		return nil, err
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	lc, err := e.l.lockConfig(nil)
	if err != nil {
		return nil, err
	}
	conn, err := e.l.sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("dblock: campaigning for %s: taking a connection from the pool: %w", e.key, withCause(ctx, err))
	}
	ls, err := e.campaign(ctx, conn, lc.lease, value)
	if err != nil {
		discard(conn) // releases the named lock if the wait got it
		return nil, err
	}
	ld := &Leadership{s: ls, key: e.key}
	runtime.AddCleanup(ld, func(s *leaderSession) { s.abandon() }, ls)
	return ld, nil
}

// discard closes conn and keeps it out of the pool: the session of a
// campaign has its own wait_timeout and, maybe, the named lock.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// campaign sets the lease on conn, waits for the named lock, takes the
// token, writes the leader's row and hands the leadership out.
func (e *Election) campaign(ctx context.Context, conn *sql.Conn, lease time.Duration, value string) (*leaderSession, error) {
	// No transaction runs on the session: wait_timeout is its only idle
	// bound, on MariaDB as on MySQL.
	if _, err := conn.ExecContext(ctx, "SET SESSION wait_timeout = "+strconv.Itoa(leaseSeconds(lease))); err != nil {
		return nil, fmt.Errorf("dblock: campaigning for %s: setting the lease on the connection: %w", e.key, withCause(ctx, err))
	}
	// A leader row of a past server run may carry this connection's id
	// (ids restart with the server), which IS_USED_LOCK would match once
	// the connection holds the named lock: unnamed before the wait, so
	// that it never names this connection (no leader row of this run does:
	// a connection leads once, then it is discarded).
	hash := e.key.hash()
	if _, err := conn.ExecContext(ctx, e.q.unname, hash[:]); err != nil {
		return nil, e.tableError("campaigning for", fmt.Errorf("unnaming a past leader row of the connection: %w", withCause(ctx, err)))
	}
	connID, sent, err := e.wait(ctx, conn)
	if err != nil {
		return nil, err
	}
	c := newConnKeeper(e.l, conn, lease)
	c.lastOK = sent
	// The wait may have been granted late in its slice, and the server
	// counts the idle lease from its answer: a ping starts the lease from
	// a send time after the grant.
	if err := c.ping(ctx); err != nil {
		return nil, fmt.Errorf("%w: campaigning for %s: the connection failed right after the grant: %w", ErrLockLost, e.key, withCause(ctx, err))
	}
	// The grant's own steps run until the lease (minus the margin) runs
	// out, whatever ctx does: ctx bounds the wait only, and a campaign
	// that won returns its leadership (the leader's row names it).
	gctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), c.deadlineLocked())
	defer cancel()
	token, err := e.l.bumpToken(gctx, e.key)
	if err != nil {
		why := e.grantErr(gctx, err)
		if mysqlErrorNumber(err) == erLockWaitTimeout || gctx.Err() != nil {
			why = fmt.Errorf("%w (is the fencing counter held by a transaction, a Lock of the election's key with Fencing? use a key of its own for the election)", why)
		}
		return nil, why
	}
	res, err := e.l.side.ExecContext(gctx, e.q.write, hash[:], value, token, connID, connID)
	if err != nil {
		return nil, e.tableError("campaigning for", e.grantErr(gctx, fmt.Errorf("writing the leader row: %w", err)))
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		// Not written: the session no longer holds the named lock.
		return nil, fmt.Errorf("%w: campaigning for %s: the connection lost the named lock before the leader row was written", ErrLockLost, e.key)
	}
	// The token is handed out only if the lock was still this session's
	// after the bump, with lease left (fence.go does the same for locks).
	if err := e.confirm(gctx, c); err != nil {
		return nil, err
	}
	s := &leaderSession{conn: conn, keeper: c, name: e.name, token: token, done: make(chan struct{}), released: make(chan struct{}), l: e.l, key: e.key}
	c.arm(s.lose)
	return s, nil
}

// grantErr maps an error of the grant's steps: the lease running out
// (gctx's deadline) before the leadership began is a loss.
func (e *Election) grantErr(gctx context.Context, err error) error {
	if gctx.Err() != nil {
		return fmt.Errorf("%w: campaigning for %s: the lease ran out before the leadership began: %w", ErrLockLost, e.key, err)
	}
	return fmt.Errorf("dblock: campaigning for %s: %w", e.key, err)
}

// wait waits for the election's named lock on conn, in slices, until it is
// granted (then it returns the session's connection id and when the
// granting statement was sent) or ctx ends.
func (e *Election) wait(ctx context.Context, conn *sql.Conn) (int64, time.Time, error) {
	l := e.l
	for {
		tag := l.seq.Add(1)
		// The name is literal (hex: nothing to quote), so that the process
		// list shows whose wait it is.
		q := "SELECT /*" + l.marker + strconv.FormatUint(tag, 10) + "*/ GET_LOCK('" + e.name + "', " + strconv.Itoa(campaignSliceSecs) + "), CONNECTION_ID()"
		var got sql.NullInt64
		var id int64
		var err error
		sent := time.Now()
		how := l.runInterruptible(ctx, tag, campaignSliceSecs*time.Second+killGrace, func(sctx context.Context) {
			err = conn.QueryRowContext(sctx, q).Scan(&got, &id)
		})
		switch {
		case ctx.Err() != nil:
			// Granted or not, the connection is discarded: nothing is held.
			return 0, sent, fmt.Errorf("dblock: campaigning for %s: %w", e.key, context.Cause(ctx))
		case how == cutOff:
			return 0, sent, fmt.Errorf("dblock: campaigning for %s: the server did not answer the wait for the named lock within %ds: %w", e.key, campaignSliceSecs, err)
		case err != nil:
			return 0, sent, fmt.Errorf("dblock: campaigning for %s: waiting for the named lock: %w", e.key, err)
		case got.Valid && got.Int64 == 1:
			return id, sent, nil
		}
		// 0: the slice ran out; NULL: the wait was interrupted (our own
		// timer): wait again.
	}
}

// confirm checks that the named lock is still the session's, through the
// keeper (the answer extends the lease), and that the lease has not run
// out since.
func (e *Election) confirm(ctx context.Context, c *keeper) error {
	conn := c.on.(*sql.Conn)
	c.op.Lock()
	sent := time.Now()
	var mine sql.NullInt64
	err := conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", e.name).Scan(&mine)
	c.answered(sent, err)
	c.op.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("%w: campaigning for %s: the connection failed before the leadership began: %w", ErrLockLost, e.key, withCause(ctx, err))
	case !mine.Valid || mine.Int64 != 1:
		return fmt.Errorf("%w: campaigning for %s: the named lock is no longer the connection's", ErrLockLost, e.key)
	}
	c.mu.Lock()
	left := time.Until(c.deadlineLocked())
	c.mu.Unlock()
	if left <= 0 {
		return fmt.Errorf("%w: campaigning for %s: the lease ran out before the leadership began", ErrLockLost, e.key)
	}
	return nil
}
