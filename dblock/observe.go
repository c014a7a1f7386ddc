package dblock

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"time"
)

// Observing an election: while someone leads, an observer waits on the
// leader's row with a locking read, which the server answers when the
// leader's transaction ends (the row disappears with it); while nobody
// leads, it polls. docs/ELECTION.md, "Observe".
//
// The wait is exclusive (see electionQueries.wait), so the observer's
// transaction is a read-write one while it waits: it holds purge back for
// at most observeWaitSecs at a time.

// observeWaitSecs bounds one wait on the leader's row (whole seconds: the
// server's lock-wait bound), after which the observer reads the row again.
// It also bounds how late a change can be seen when the wait began on a
// successor's row (a leader that ended between the read and the wait).
const observeWaitSecs = 2

// The poll while nobody leads: from observePollMin, doubling up to
// observePollMax. Just after a leader ends, the next one is usually
// between its grant and its write: it is seen within milliseconds.
const (
	observePollMin = 2 * time.Millisecond
	observePollMax = 100 * time.Millisecond
)

// observeErrorPause is the pause after a failed read before the next one.
const observeErrorPause = time.Second

// Observe returns a channel that delivers the value of each new leader of
// the election, in the order they led, once each: the current leader
// first, if any. A leader that led and ended between two reads may be
// missed, the latest one never is (etcd's Observe semantics). The channel
// is unbuffered and closed when ctx ends (or at once, for invalid input or
// a closed Locker). While someone leads it waits on the server, on one
// connection of the Locker's pool; while nobody leads it polls (at most
// every 100 ms).
func (e *Election) Observe(ctx context.Context) <-chan string {
	ch := make(chan string)
	if err := e.check(ctx); err != nil {
		if e != nil && e.l != nil {
			e.l.log.Warn("dblock: Observe refused", "error", err)
		}
		close(ch)
		return ch
	}
	go e.observe(ctx, ch)
	return ch
}

// observe is the observer's loop.
func (e *Election) observe(ctx context.Context, ch chan<- string) {
	defer close(ch)
	var last int64 // the token of the last leader delivered
	poll := observePollMin
	for ctx.Err() == nil && !e.l.closed.Load() {
		r, err := e.observeOnce(ctx, last)
		var pause time.Duration
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			e.l.log.Warn("dblock: observing an election failed, reading again", "granularity", e.key.granularity(), "error", err)
			pause = observeErrorPause
		case r.ok && r.token != last:
			select {
			case ch <- r.value:
				last = r.token
			case <-ctx.Done():
				return
			}
			poll = observePollMin
		case !r.ok:
			pause, poll = poll, min(2*poll, observePollMax)
		default:
			poll = observePollMin // the wait ended: the leader is gone, or the bound ran out
		}
		if pause > 0 && sleepCtx(ctx, pause) != nil {
			return
		}
	}
}

// observeOnce reads the leader's row and, when it is the leader last
// delivered, waits until its transaction ends (or observeWaitSecs).
func (e *Election) observeOnce(ctx context.Context, last int64) (leaderRow, error) {
	// The transaction ends with our own rollback, not with ctx: the wait
	// is interrupted on the server instead (runInterruptible), which keeps
	// the connection.
	tx, err := uncommitted(ctx, e.l.sqlDB, false)
	if err != nil {
		return leaderRow{}, err
	}
	defer tx.Rollback()
	r, err := e.readLeader(ctx, tx)
	if err != nil || !r.ok || r.token != last {
		return r, err
	}
	l := e.l
	tag := l.seq.Add(1)
	q := e.q.waitHead + "/*" + l.marker + strconv.FormatUint(tag, 10) + "*/ " + e.q.wait
	hash := e.key.hash()
	var token int64
	l.runInterruptible(ctx, tag, observeWaitSecs*time.Second+killGrace, func(sctx context.Context) {
		err = tx.QueryRowContext(sctx, q, hash[:]).Scan(&token)
	})
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return r, nil // the leader's transaction ended: its row went with it
	case err == nil:
		// Granted with the row still there: it was committed, a defect
		// Campaign repairs. Not a leader: poll.
		return leaderRow{}, nil
	}
	switch mysqlErrorNumber(err) {
	case erLockWaitTimeout, erStatementTimeout, erQueryInterrupted:
		return r, nil // the bound ran out (or ctx ended): read again
	}
	return r, e.readError(err)
}
