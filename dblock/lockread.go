package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// The locking read of one key: its wait bound, its interruption when the
// caller gives up, and the mapping of its outcome (docs/PROTOCOL.md, "Waits").

// waitBound is the bound on one locking read's wait, and what set it.
type waitBound struct {
	d       time.Duration
	why     string
	ctx     bool // the context's deadline: the failure also matches DeadlineExceeded
	server  bool // the server's innodb_lock_wait_timeout: the server ends the wait itself
	recheck bool // permitRecheck: running out is errRecheck, not a failure
}

// bound returns the wait bound of a locking read sent now: the least of
// WaitTimeout's remainder, the context's deadline, the lease of the
// transaction's other locks (leaseEnd, when not zero), the DSN's
// readTimeout and, unless WaitTimeout asks for longer, the server's
// innodb_lock_wait_timeout.
func (a *acquisition) bound(leaseEnd time.Time) *waitBound {
	var b waitBound
	consider := func(c waitBound) {
		if b.why == "" || c.d < b.d {
			b = c
		}
	}
	now := time.Now()
	if !a.waitUntil.IsZero() {
		consider(waitBound{d: a.waitUntil.Sub(now), why: "WaitTimeout(" + a.lc.wait.String() + ")"})
	} else if lw := a.l.srv.lockWait; lw > 0 {
		consider(waitBound{d: lw, why: "the server's innodb_lock_wait_timeout", server: true})
	}
	if dl, ok := a.ctx.Deadline(); ok {
		consider(waitBound{d: dl.Sub(now) - deadlineMargin, why: "the context's deadline", ctx: true})
	}
	if !leaseEnd.IsZero() {
		consider(waitBound{d: leaseEnd.Sub(now) - deadlineMargin, why: "the lease of the locks the transaction holds"})
	}
	if rt := a.l.readTimeout; rt > 0 {
		consider(waitBound{d: rt - readTimeoutMargin, why: "the DSN's readTimeout (" + rt.String() + ")"})
	}
	if b.why == "" {
		return nil
	}
	return &b
}

// lockTarget is what a locking read locks: the key's row (id), a permit
// of the key's semaphore (ids): any free one without waiting (any), or the
// one permit ids[0], waiting at most recheck; or, under the hierarchy, a
// group of containing keys' rows.
type lockTarget struct {
	id      int64
	ids     []int64
	permit  bool
	any     bool
	recheck time.Duration
	group   []node // the hierarchy: these containers, all of them, shared
}

// lockOutcome is what a locking read found.
type lockOutcome struct {
	id      int64            // the row granted (a permit's, of several)
	session [3]sql.NullInt64 // the session's idle bounds, when asked for (sessionVars)
	conn    int64            // CONNECTION_ID(), when asked for (acquisition.readConn)
}

// lockKey runs the locking read of key's target t (its row, or a permit) in
// the transaction on tx: granted (nil), errRowGone when the row is not
// there, errPermitsBusy when t.any found every permit held, errRecheck
// when a permit's wait reached t.recheck, or the failure mapped to the
// library's errors. holdsOthers says the transaction holds locks already
// (or is a caller's), which a failure that ends the transaction loses.
func (a *acquisition) lockKey(tx stmtRunner, key Key, t lockTarget, session bool, leaseEnd time.Time, holdsOthers bool) (lockOutcome, error) {
	l := a.l
	// In a caller's transaction, the server may have rolled it back
	// behind the context's back (a deadlock fn did not report): the
	// locking read would then run in autocommit and hold nothing. MariaDB
	// says whether the session is still in a transaction.
	_, own := tx.(ownStmts)
	r := lockRead{lockTarget: t, hash: key.hash(), skip: a.lc.noWait || t.any,
		shared: t.group != nil || !t.permit && a.lc.shared(key), session: session, inTx: !own && l.srv.mariaDB, connID: a.readConn}
	var b *waitBound
	if !r.skip {
		b = a.bound(leaseEnd)
		if t.recheck > 0 && (b == nil || t.recheck < b.d) {
			b = &waitBound{d: t.recheck, why: "the permit's recheck", recheck: true}
		}
		if b != nil && b.d <= time.Millisecond {
			r.skip = true // no time left to wait: only a free row is granted
		}
	}
	if err := a.ctx.Err(); err != nil {
		return lockOutcome{}, a.ended(key, b, nil, holdsOthers)
	}
	var timer time.Duration
	if !r.skip {
		r.tag = l.seq.Add(1)
		switch {
		case b == nil:
		case b.server:
			timer = b.d + killGrace // a backstop: the server ends the wait itself
		case l.srv.mariaDB:
			// The server bounds the statement; the timer is a backstop
			// for an answer that does not come (a partition after the
			// grant).
			r.wait, timer = b.d, b.d+killGrace
		default:
			timer = b.d // MySQL has no per-statement sub-second bound: interrupt it
		}
	}
	var buf [320]byte
	q := string(l.appendLockRead(buf[:0], r))

	var out lockOutcome
	// What the read returns, in one allocation: the row's id (a group's
	// count), the rows' hierarchy setting (a group's least and greatest),
	// and whether the session is in a transaction.
	var v struct {
		got, inTx     int64
		flag, flagMax sql.NullInt64
	}
	var err error
	dest := make([]any, 2, 8)
	dest[0], dest[1] = &v.got, &v.flag
	if t.group != nil {
		dest = append(dest, &v.flagMax)
	}
	if session {
		for i := range l.q.sessionVars {
			dest = append(dest, &out.session[i])
		}
	}
	if r.inTx {
		dest = append(dest, &v.inTx)
	}
	if r.connID {
		dest = append(dest, &out.conn)
	}
	l.tel.waiting(a.ctx, key, a.lc.modeOf(key), 1)
	interrupted := l.runInterruptible(a.ctx, r.tag, timer, func(sctx context.Context) {
		err = tx.QueryRowContext(sctx, q).Scan(dest...)
	})
	l.tel.waiting(a.ctx, key, a.lc.modeOf(key), -1)
	noteErr(tx, err)
	if mysqlErrorNumber(err) == erTableDefChanged {
		// The table was recreated (TRUNCATE, a migration) after the
		// transaction's snapshot.
		if holdsOthers {
			return out, fmt.Errorf("%w: acquiring %s: the lock table was recreated after this transaction began: %w", ErrStaleSnapshot, key, err)
		}
		return out, errRowGone
	}
	if err == nil && r.inTx && v.inTx == 0 {
		return out, fmt.Errorf("%w: acquiring %s: the transaction had already ended on the server (rolled back: a deadlock or a timeout its statement reported?), so statements now run in autocommit and the lock would be released at once: roll it back and start again",
			ErrNoTransaction, key)
	}
	if err == nil && t.group != nil && int(v.got) < len(t.group) {
		// A row of the group was not locked: skipped (held), or gone.
		err = sql.ErrNoRows
	}
	atOnce := l.refuseAtOnce(r)
	if atOnce && mysqlErrorNumber(err) == erLockWaitTimeout {
		if holdsOthers || !own {
			return out, a.refusedInTx(tx, key, t, b, err, holdsOthers)
		}
		return out, a.heldNow(key, t, b)
	}
	switch {
	case err == nil:
		out.id = v.got
		if t.group != nil && v.flag != v.flagMax {
			// Rows of two settings: a switch in progress.
			a.l.refreshHierarchy(a.ctx)
			return out, errHierarchyChanged
		}
		if err := a.checkHierarchy(v.flag.Int64); err != nil {
			return out, err
		}
		if l.touch && !t.permit {
			return out, l.touchRow(a.ctx, tx, key, t.id, holdsOthers)
		}
		return out, nil
	case errors.Is(err, sql.ErrNoRows):
		if !r.skip || atOnce {
			return out, errRowGone // a held row would have been refused
		}
		var exists bool
		var xerr error
		switch {
		case t.permit:
			exists, xerr = l.permitsExist(a.ctx, t.ids, r.hash[:])
		case t.group != nil:
			exists, xerr = l.groupExists(a.ctx, t.group)
		default:
			exists, xerr = l.rowExists(a.ctx, t.id, r.hash[:])
		}
		switch {
		case xerr != nil:
			return out, fmt.Errorf("dblock: acquiring %s: telling a held row from a missing one: %w", key, withCause(a.ctx, xerr))
		case !exists:
			return out, errRowGone
		}
		return out, a.heldNow(key, t, b)
	}
	switch {
	case interrupted == cutOff:
		// The server did not answer the interruption: the driver closed
		// the connection, and the transaction is gone with it.
		err = fmt.Errorf("%w (%w)", err, gomysql.ErrInvalidConn)
	case interrupted == notInterrupted && r.tag != 0 && isBrokenConn(err):
		// The driver gave up on the connection (a DSN readTimeout, a
		// network fault): the server may still keep the statement queued
		// for the lock, and a grant to it would delay live waiters.
		l.killWaiting(a.ctx, r.tag)
	}
	if n := mysqlErrorNumber(err); a.ctx.Err() != nil && (interrupted != notInterrupted && (n == 0 || n == erQueryInterrupted) || isBrokenConn(err)) {
		// The statement ended because the context did (not, say, a
		// server error that ended the transaction and with it the
		// context): interrupted, or sent on a connection the driver
		// closed when the context ended during the statement before.
		return out, a.ended(key, b, err, holdsOthers)
	}
	return out, a.lockError(key, b, err, holdsOthers)
}

// heldNow is the error of a read that did not wait and found key's
// target t held: every permit busy, a wait with no time left (b), or a
// refusal under NoWait.
func (a *acquisition) heldNow(key Key, t lockTarget, b *waitBound) error {
	switch {
	case t.any && !a.lc.noWait:
		return errPermitsBusy
	case b != nil && !a.lc.noWait:
		return a.notAcquired(key, b, nil)
	case t.permit:
		return fmt.Errorf("%w: all %d permits of %s are held (NoWait)", ErrNotAcquired, len(t.ids), key)
	}
	return fmt.Errorf("%w: %s is held (NoWait)", ErrNotAcquired, key)
}

// refusedInTx is heldNow for a transaction with something to lose (locks,
// holdsOthers, or a caller's writes), whose read of key was refused with
// 1205 (err). The Locker chose that read because innodb_rollback_on_timeout
// was OFF when it was created; a server that has it ON since (a restart, a
// failover) rolls the whole transaction back. So it asks the server, under
// a context the caller's cancellation does not end (the answer must be
// true whatever the caller does meanwhile), whether the transaction is
// still open and what the setting is now. As for a wait ended by 1205 on
// such a server, the error matches ErrLockLost when the transaction held
// locks.
func (a *acquisition) refusedInTx(tx stmtRunner, key Key, t lockTarget, b *waitBound, err error, holdsOthers bool) error {
	refused := a.heldNow(key, t, b)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), killTimeout)
	defer cancel()
	var inTx, rollbackOnTimeout int64
	qerr := tx.QueryRowContext(ctx, "SELECT @@in_transaction, @@GLOBAL.innodb_rollback_on_timeout").Scan(&inTx, &rollbackOnTimeout)
	noteErr(tx, qerr)
	switch {
	case qerr != nil:
		return a.l.lostIf(holdsOthers, fmt.Errorf("%w; then asking whether the transaction is still open failed (%w): the server may have rolled it back (%w)", refused, qerr, err))
	case inTx != 0:
		return refused
	case rollbackOnTimeout == 0:
		// The transaction had ended before this read (a deadlock the
		// caller did not report), which then ran in autocommit.
		return fmt.Errorf("%w: acquiring %s: the transaction had already ended on the server (rolled back: a deadlock or a timeout its statement reported?), so statements now run in autocommit: roll it back and start again (%w)",
			ErrNoTransaction, key, refused)
	}
	lost := a.l.lostIf(holdsOthers, fmt.Errorf("%w; the server rolled the whole transaction back: its innodb_rollback_on_timeout is ON, though it was OFF when the Locker was created (%w)", refused, err))
	if o, ok := tx.(ownStmts); ok {
		o.c.loseWith(lost) // later statements would run in autocommit
	}
	return lost
}

// notAcquired is the error of a wait that ran out its bound b.
func (a *acquisition) notAcquired(key Key, b *waitBound, err error) error {
	msg := fmt.Sprintf("%s was not granted before the wait ran out (bounded by %s)", key, b.why)
	switch {
	case b.ctx && err != nil:
		return fmt.Errorf("%w: %s: %w (%w)", ErrNotAcquired, msg, context.DeadlineExceeded, err)
	case b.ctx:
		return fmt.Errorf("%w: %s: %w", ErrNotAcquired, msg, context.DeadlineExceeded)
	case err != nil:
		return fmt.Errorf("%w: %s (%w)", ErrNotAcquired, msg, err)
	}
	return fmt.Errorf("%w: %s", ErrNotAcquired, msg)
}

// ended is the error of an acquisition whose context ended while it
// waited: its deadline bounded the wait (not acquired), or it was
// cancelled.
func (a *acquisition) ended(key Key, b *waitBound, err error, holdsOthers bool) error {
	lost := holdsOthers && err != nil && a.l.endsTransaction(err)
	if errors.Is(a.ctx.Err(), context.DeadlineExceeded) {
		if b == nil || !b.ctx {
			b = &waitBound{why: "the context's deadline", ctx: true}
		}
		e := a.notAcquired(key, b, err)
		if lost {
			return fmt.Errorf("%w; the transaction's connection was closed, its other locks are gone (%w)", e, ErrLockLost)
		}
		return e
	}
	e := fmt.Errorf("dblock: acquiring %s: %w", key, context.Cause(a.ctx))
	if lost {
		return fmt.Errorf("%w; the transaction's connection was closed, its other locks are gone (%w)", e, ErrLockLost)
	}
	return e
}

// lockError maps an error of a locking read to the library's sentinels,
// keeping the original in the chain.
func (a *acquisition) lockError(key Key, b *waitBound, err error, holdsOthers bool) error {
	l := a.l
	if e := l.notPrimary("acquiring", key, err); e != nil {
		return l.lostIf(holdsOthers, e)
	}
	switch mysqlErrorNumber(err) {
	case erStatementTimeout, erQueryTimeout, erQueryInterrupted, erLockNowait:
		if b != nil && b.recheck {
			return errRecheck
		}
		if b == nil {
			b = &waitBound{why: "the server"}
		}
		return a.notAcquired(key, b, err)
	case erLockWaitTimeout:
		e := a.notAcquired(key, &waitBound{why: "the server's innodb_lock_wait_timeout"}, err)
		if l.srv.rollbackOnTimeout {
			e = fmt.Errorf("%w; the whole transaction was rolled back by the server (innodb_rollback_on_timeout is ON)", e)
			return l.lostIf(holdsOthers, e)
		}
		return e
	case erLockDeadlock:
		return l.lostIf(holdsOthers, fmt.Errorf("%w: acquiring %s: %w", ErrDeadlock, key, err))
	case erNoSuchTable:
		l.cache.clear()
		return fmt.Errorf("%w: %w", ErrTableMissing, err)
	case erBadField:
		return fmt.Errorf("%w: %s predates migration 4 (the hierarchy setting) that this txlock needs: %w", ErrTableMissing, l.cfg.table, err)
	case erOptionPreventsStmt:
		return l.lostIf(holdsOthers, fmt.Errorf("%w: acquiring %s: %w", ErrReadOnly, key, err))
	}
	if errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("%w: acquiring %s: %w", ErrNoTransaction, key, err)
	}
	if isConnectionLoss(err) {
		return l.lostIf(holdsOthers, fmt.Errorf("dblock: acquiring %s: the connection failed: %w", key, err))
	}
	return fmt.Errorf("dblock: acquiring %s: %w", key, err)
}

// interruption says whether and how a waiting statement was interrupted.
type interruption uint8

const (
	notInterrupted interruption = iota
	killed                      // interrupted on the server: the connection is intact
	cutOff                      // the server did not answer in time: the connection was closed
)

// noteErr tells the keeper of a transaction the Locker opened about an
// error that reached the library after the statement's call returned (at
// Scan or Next: the server sends a result's columns before it runs into a
// deadlock), so that a transaction the error ended is known lost.
func noteErr(tx stmtRunner, err error) {
	if o, ok := tx.(ownStmts); ok && err != nil {
		o.c.answered(time.Time{}, err)
	}
}

// runInterruptible runs a tagged statement (run) so that its end is the
// server's: run gets a context that the caller's ctx does not end. When
// ctx ends (or, with timer > 0, when the timer fires) the statement is
// interrupted on the server (KILL QUERY from the side pool), which leaves
// the connection and the transaction usable; only when the statement has
// not returned killGrace after that is the connection closed.
func (l *Locker) runInterruptible(ctx context.Context, tag uint64, timer time.Duration, run func(sctx context.Context)) interruption {
	if tag == 0 || (ctx.Done() == nil && timer == 0) {
		run(ctx) // nothing can end it but the server
		return notInterrupted
	}
	sctx, cutoff := context.WithCancel(context.WithoutCancel(ctx))
	defer cutoff()
	returned := make(chan struct{})
	done := make(chan struct{})
	var once sync.Once
	var cut atomic.Bool
	interrupt := func() {
		once.Do(func() {
			defer close(done)
			l.killWaiting(ctx, tag)
			t := time.NewTimer(killGrace)
			defer t.Stop()
			select {
			case <-returned:
			case <-t.C:
				cut.Store(true)
				cutoff() // the driver closes the connection
			}
		})
	}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, interrupt)
	}
	var t *time.Timer
	if timer > 0 {
		t = time.AfterFunc(timer, interrupt)
	}
	run(sctx)
	close(returned)
	fired := !stop()
	if t != nil && !t.Stop() {
		fired = true
	}
	if !fired {
		return notInterrupted
	}
	// On MySQL KILL QUERY names the connection, not the statement: it must
	// not reach the next one.
	<-done
	if cut.Load() {
		return cutOff
	}
	return killed
}

// killWaiting interrupts this Locker's statement tagged tag, if the server
// still runs it, from the side pool (never the caller's pool). MariaDB
// interrupts it by query id, so a statement that has just ended is never
// mistaken for the next one on its connection.
func (l *Locker) killWaiting(ctx context.Context, tag uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
	defer cancel()
	pattern := "%/*" + l.marker + strconv.FormatUint(tag, 10) + "*/%"
	// The statement may still be on its way to the server: look again a
	// few times before concluding that it is gone.
	for i, pause := range [...]time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond} {
		time.Sleep(pause)
		var conn, query int64
		err := l.side.QueryRowContext(ctx, l.q.processes, pattern).Scan(&conn, &query)
		if errors.Is(err, sql.ErrNoRows) {
			if i == 0 {
				continue
			}
			return
		}
		if err != nil {
			l.log.WarnContext(ctx, "dblock: cannot look for an abandoned lock wait", "error", err)
			return
		}
		kill := "KILL QUERY " + strconv.FormatInt(conn, 10)
		if l.srv.mariaDB {
			kill = "KILL QUERY ID " + strconv.FormatInt(query, 10)
		}
		if _, err := l.side.ExecContext(ctx, kill); err != nil {
			if n := mysqlErrorNumber(err); n != erUnknownThread && n != erNoSuchQuery {
				l.log.WarnContext(ctx, "dblock: cannot interrupt an abandoned lock wait", "connection", conn, "error", err)
			}
			return
		}
		l.log.DebugContext(ctx, "dblock: interrupted an abandoned lock wait", "connection", conn)
		return
	}
}

// touchRow writes the locked row id in the holding transaction (Galera
// multi-writer): the row is then in the transaction's write set, so that
// certification lets at most one of two overlapping holders on different
// nodes commit. The value always changes (an update that changes nothing
// writes nothing), and it does not wait: the transaction holds the row.
func (l *Locker) touchRow(ctx context.Context, tx stmtRunner, key Key, id int64, holdsOthers bool) error {
	var buf [160]byte
	q := strconv.AppendInt(append(buf[:0], l.q.touchFrom...), id, 10)
	if _, err := tx.ExecContext(ctx, string(q)); err != nil {
		a := acquisition{l: l, ctx: ctx}
		return a.lockError(key, nil, withCause(ctx, err), holdsOthers)
	}
	return nil
}
