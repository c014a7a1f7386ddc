package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"
)

// The acquisition pipeline. Every way to take a lock goes through it: Do,
// DoMulti, Lock and TryLock open a transaction of the Locker's own
// (begin); a Do under a context that carries a transaction of the
// Locker's database, and LockTx, take the keys in that transaction
// (join). Both run the same steps: the row step (find or create each key's
// row, before any transaction is held), the locking read of each row
// under the acquisition's wait bound, the vanished-row recovery, the
// fencing token and snapshot check, and the record of the keys in the
// transaction's scope. docs/PROTOCOL.md describes them.

// deadlineMargin is how much earlier than a deadline the server is asked
// to give up waiting, so that the server (not the client closing its
// socket) ends the wait and the connection stays usable.
const deadlineMargin = 10 * time.Millisecond

// readTimeoutMargin keeps a wait this much below the DSN's readTimeout,
// after which the driver would close the connection.
const readTimeoutMargin = 100 * time.Millisecond

// killTimeout bounds the interruption of an abandoned waiting statement;
// killGrace is how long the statement then has to return before its
// connection is closed instead.
const (
	killTimeout = 2 * time.Second
	killGrace   = time.Second
)

// errRowGone reports that the locking read found no row: it was collected
// (or the table recreated) after the id was cached.
var errRowGone = errors.New("dblock: key row gone")

// stmtRunner runs statements in a transaction: the keeper of one the
// Locker opened, or the connection of a caller's.
type stmtRunner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// acquisition is one call's attempt to take keys, and the bounds it runs
// under: WaitTimeout covers the whole call (pool, row step, server wait).
type acquisition struct {
	l         *Locker
	ctx       context.Context
	lc        lockConfig
	waitUntil time.Time // WaitTimeout's end; zero: none
}

func (l *Locker) newAcquisition(ctx context.Context, lc lockConfig) *acquisition {
	a := &acquisition{l: l, ctx: ctx, lc: lc}
	if lc.wait > 0 {
		a.waitUntil = time.Now().Add(lc.wait)
	}
	return a
}

// errWaitRanOut is the cause of an acquisition context whose WaitTimeout
// ran out before the locking read.
var errWaitRanOut = errors.New("WaitTimeout ran out")

// prepCtx returns the context of the steps before the locking read (the
// pool connection, the row step), bounded by WaitTimeout.
func (a *acquisition) prepCtx() (context.Context, context.CancelFunc) {
	if a.waitUntil.IsZero() {
		return a.ctx, func() {}
	}
	return context.WithDeadlineCause(a.ctx, a.waitUntil, errWaitRanOut)
}

// prepError maps an error of the steps before the locking read: running
// out of WaitTimeout there is not acquiring.
func (a *acquisition) prepError(what string, key Key, err error) error {
	if errors.Is(err, errWaitRanOut) || (!a.waitUntil.IsZero() && !time.Now().Before(a.waitUntil) && a.ctx.Err() == nil) {
		return fmt.Errorf("%w: %s: WaitTimeout(%v) ran out %s", ErrNotAcquired, key, a.lc.wait, what)
	}
	return err
}

// waitBound is the bound on one locking read's wait, and what set it.
type waitBound struct {
	d      time.Duration
	why    string
	ctx    bool // the context's deadline: the failure also matches DeadlineExceeded
	server bool // the server's innodb_lock_wait_timeout: the server ends the wait itself
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

// lockOutcome is what a locking read found.
type lockOutcome struct {
	session [3]sql.NullInt64 // the session's idle bounds, when asked for (sessionVars)
}

// lockKey runs the locking read of key (row id) in the transaction on tx:
// granted (nil), errRowGone when the row is not there, or the failure
// mapped to the library's errors. holdsOthers says the transaction holds
// locks already (or is a caller's), which a failure that ends the
// transaction loses.
func (a *acquisition) lockKey(tx stmtRunner, key Key, id int64, session bool, leaseEnd time.Time, holdsOthers bool) (lockOutcome, error) {
	l := a.l
	// In a caller's transaction, the server may have rolled it back
	// behind the context's back (a deadlock fn did not report): the
	// locking read would then run in autocommit and hold nothing. MariaDB
	// says whether the session is still in a transaction.
	_, caller := tx.(*keeper)
	r := lockRead{id: id, hash: key.hash(), skip: a.lc.noWait, session: session, inTx: !caller && l.srv.mariaDB}
	var b *waitBound
	if !r.skip {
		if b = a.bound(leaseEnd); b != nil && b.d <= time.Millisecond {
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
	var got, inTx int64
	var err error
	dest := make([]any, 1, 5)
	dest[0] = &got
	if session {
		for i := range l.q.sessionVars {
			dest = append(dest, &out.session[i])
		}
	}
	if r.inTx {
		dest = append(dest, &inTx)
	}
	l.tel.waiting(a.ctx, key, 1)
	interrupted := l.runInterruptible(a.ctx, r.tag, timer, func(sctx context.Context) {
		err = tx.QueryRowContext(sctx, q).Scan(dest...)
	})
	l.tel.waiting(a.ctx, key, -1)
	noteErr(tx, err)
	if mysqlErrorNumber(err) == erTableDefChanged {
		// The table was recreated (TRUNCATE, a migration) after the
		// transaction's snapshot.
		if holdsOthers {
			return out, fmt.Errorf("%w: acquiring %s: the lock table was recreated after this transaction began: %w", ErrStaleSnapshot, key, err)
		}
		return out, errRowGone
	}
	if err == nil && r.inTx && inTx == 0 {
		return out, fmt.Errorf("%w: acquiring %s: the transaction had already ended on the server (rolled back: a deadlock or a timeout its statement reported?), so statements now run in autocommit and the lock would be released at once: roll it back and start again",
			ErrNoTransaction, key)
	}
	switch {
	case err == nil:
		if l.touch {
			return out, l.touchRow(a.ctx, tx, key, id, holdsOthers)
		}
		return out, nil
	case errors.Is(err, sql.ErrNoRows):
		if !r.skip {
			return out, errRowGone
		}
		exists, xerr := l.rowExists(a.ctx, id, r.hash[:])
		switch {
		case xerr != nil:
			return out, fmt.Errorf("dblock: acquiring %s: telling a held row from a missing one: %w", key, withCause(a.ctx, xerr))
		case !exists:
			return out, errRowGone
		case b != nil && !a.lc.noWait:
			return out, a.notAcquired(key, b, nil)
		}
		return out, fmt.Errorf("%w: %s is held (NoWait)", ErrNotAcquired, key)
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
	if n := mysqlErrorNumber(err); interrupted != notInterrupted && a.ctx.Err() != nil && (n == 0 || n == erQueryInterrupted) {
		// The statement ended because the context did (not, say, a
		// server error that ended the transaction and with it the
		// context).
		return out, a.ended(key, b, err, holdsOthers)
	}
	return out, a.lockError(key, b, err, holdsOthers)
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
	if c, ok := tx.(*keeper); ok && err != nil {
		c.answered(time.Time{}, err)
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

// begin opens a transaction and takes keys (in canonical order) as its
// first statements. handle says the Lock goes to the caller (Lock,
// TryLock): it then watches its context and is rolled back if dropped.
func (l *Locker) begin(ctx context.Context, keys []Key, lc lockConfig, handle bool) (*Lock, error) {
	done := l.tel.startAcquire(ctx, keys[0], lc.noWait)
	lk, err := l.beginAttempts(ctx, keys, lc, handle)
	done(err)
	return lk, err
}

func (l *Locker) beginAttempts(ctx context.Context, keys []Key, lc lockConfig, handle bool) (*Lock, error) {
	a := l.newAcquisition(ctx, lc)
	pctx, cancel := a.prepCtx()
	defer cancel()
	// The row step runs before BEGIN: a caller must never hold one pool
	// connection while waiting for a second.
	var idBuf [1]int64
	ids, err := l.rowIDs(pctx, keys, idBuf[:0])
	if err != nil {
		return nil, a.prepError("finding the key's row", keys[0], err)
	}
	reconnected := false
	for attempt := 1; ; attempt++ {
		lk, gone, err := a.open(pctx, keys, ids)
		if err == nil {
			if err := a.granted(lk, keys, handle); err != nil {
				return nil, err
			}
			return lk, nil
		}
		switch {
		case gone >= 0 && attempt < rowAttempts:
			// The row was collected. Create it again outside the
			// transaction (rolled back by now), whose locking read of the
			// missing row held a gap lock that could block the insert.
			l.cache.forget(keys[gone], ids[gone])
			if ids[gone], err = l.findRow(pctx, keys[gone], false); err != nil {
				return nil, a.prepError("finding the key's row", keys[gone], err)
			}
		case gone >= 0:
			return nil, fmt.Errorf("dblock: the row of %s in %s disappeared %d times while locking it: is a gc deleting live rows?", keys[gone], l.cfg.table, attempt)
		case isBrokenConn(err) && !reconnected && a.ctx.Err() == nil:
			// A pooled connection that died while idle: nothing was held
			// on it. Try once more on a fresh one.
			reconnected = true
			l.log.DebugContext(ctx, "dblock: lock connection failed before the grant, retrying on another", "error", err)
		default:
			return nil, err
		}
	}
}

// open pins a pool connection, begins a transaction on it and takes keys
// with their locking reads. On failure the transaction is rolled back and
// gone is the index of a key whose row was missing (else -1).
func (a *acquisition) open(pctx context.Context, keys []Key, ids []int64) (lk *Lock, gone int, err error) {
	l := a.l
	lctx, cancel := l.lockContext(a.ctx)
	h := &hold{l: l, key: keys[0], ctx: lctx, cancel: cancel}
	if h.conn, err = l.sqlDB.Conn(pctx); err != nil {
		cancel(nil)
		return nil, -1, a.prepError("waiting for a pool connection", keys[0], fmt.Errorf("dblock: acquiring %s: a pool connection: %w", keys[0], withCause(pctx, err)))
	}
	if err := l.presetLease(lctx, h.conn, a.lc.lease); err != nil {
		h.finish()
		if e := l.notPrimary("setting the lease for", keys[0], err); e != nil {
			return nil, -1, e
		}
		return nil, -1, err
	}
	sqlTx, err := h.conn.BeginTx(lctx, nil)
	if err != nil {
		h.finish()
		if e := l.notPrimary("beginning the lock transaction for", keys[0], err); e != nil {
			return nil, -1, e
		}
		return nil, -1, fmt.Errorf("dblock: beginning the lock transaction for %s: %w", keys[0], withCause(lctx, err))
	}
	h.keeper = newKeeper(l, sqlTx, a.lc.lease)
	lk = &Lock{h: h}
	// One new session on the caller's gorm configuration (logger, hooks,
	// naming), with a Statement of its own pointed at the lock's
	// transaction: what gorm's Begin does, in one clone instead of two.
	tx := l.db.Session(&gorm.Session{Context: lctx, NewDB: true})
	tx.Statement.ConnPool = &lockConn{keeper: h.keeper, lock: lk}
	lk.tx = tx
	lk.scope = newScope(tx, h, l.sqlDB)

	sent := time.Now()
	var session [3]sql.NullInt64
	for i, key := range keys {
		out, err := a.lockKey(h.keeper, key, ids[i], i == 0, time.Time{}, false)
		if err != nil {
			h.abort()
			if errors.Is(err, errRowGone) {
				return nil, i, err
			}
			return nil, -1, err
		}
		if i == 0 {
			session = out.session
		}
	}
	if err := lctx.Err(); err != nil {
		h.abort()
		return nil, -1, a.ended(keys[0], nil, nil, false)
	}
	h.keeper.mu.Lock()
	h.keeper.lastOK = sent
	h.keeper.mu.Unlock()
	if err := a.setLease(lk, session); err != nil {
		h.abort()
		return nil, -1, err
	}
	return lk, -1, nil
}

// presetLease sets the lease on a connection this Locker has not used
// with it yet, before BEGIN: a grant whose answer is lost (a partition)
// must not leave the key held for the session's old bound (wait_timeout
// is 8 h by default). Connections it has seen are checked by their first
// locking read instead (setLease), at no cost.
func (l *Locker) presetLease(ctx context.Context, conn *sql.Conn, lease time.Duration) error {
	var dc any
	if err := conn.Raw(func(driverConn any) error { dc = driverConn; return nil }); err != nil {
		return err
	}
	secs := leaseSeconds(lease)
	if got, ok := l.leased.get(dc); ok && got == secs {
		return nil
	}
	if _, err := conn.ExecContext(ctx, l.q.leaseStatement(secs)); err != nil {
		return fmt.Errorf("dblock: setting the lease on the lock's connection: %w", err)
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

// granted finishes a transaction whose keys are granted: fencing tokens,
// the lease's keepalive, and for a handle the watch of its context and its
// cleanup.
func (a *acquisition) granted(lk *Lock, keys []Key, handle bool) error {
	h, l := lk.h, a.l
	if a.lc.fencing {
		tokens, err := l.takeTokens(h.ctx, h.keeper, keys, false, false)
		if err != nil {
			h.abort()
			return err
		}
		lk.token = tokens[0]
		for i, k := range keys {
			lk.scope.setToken(l, k, tokens[i])
		}
	}
	for _, k := range keys {
		lk.scope.add(l, k)
	}
	h.granted = time.Now()
	lk.fnCtx = scopedCtx{Context: h.ctx, link: scopeLink{s: lk.scope, next: linkFrom(a.ctx)}}
	if handle {
		// database/sql rolls the transaction back when its context ends:
		// the lock is gone then, and Lost says so. (Do needs no watch: fn's
		// context ends with it, and its commit then fails.)
		stop := context.AfterFunc(h.ctx, func() {
			h.lose(fmt.Errorf("%w: %s: the lock's context ended: %w", ErrLockLost, h.key, context.Cause(h.ctx)))
		})
		h.mu.Lock()
		h.stopWatch = stop
		h.mu.Unlock()
		runtime.AddCleanup(lk, func(h *hold) { go h.abandon() }, h)
	}
	h.keeper.arm(h.lose)
	return nil
}

// lockContext returns the context of a lock transaction: ctx, cancelled
// with the loss as cause, and bounded by gorm's DefaultTransactionTimeout
// when ctx has no deadline (as gorm's Begin does).
func (l *Locker) lockContext(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	lctx, cancel := context.WithCancelCause(ctx)
	t := l.db.Config.DefaultTransactionTimeout
	if _, ok := ctx.Deadline(); ok || t <= 0 {
		return lctx, cancel
	}
	tctx, stop := context.WithTimeoutCause(lctx, t,
		fmt.Errorf("%w: gorm's DefaultTransactionTimeout (%v) ended the lock's transaction: %w", ErrLockLost, t, context.DeadlineExceeded))
	// The outer context first, so that the inner one ends with its cause.
	return tctx, func(cause error) { cancel(cause); stop() }
}

// join takes keys in the transaction of s (a caller's, or one the Locker
// opened for an outer call), unless it holds them already (reentrancy).
func (l *Locker) join(ctx context.Context, s *txScope, keys []Key, lc lockConfig) error {
	if err := s.endedErr(); err != nil {
		// A context kept past its lock (Lock.Context after Commit, or
		// context.WithoutCancel of fn's context): joining would run fn
		// without the lock.
		return fmt.Errorf("%w: %s: the transaction this context carries has ended: %w", ErrNoTransaction, keys[0], err)
	}
	if l.touch && s.owner == nil {
		return errMultiWriterJoin
	}
	tx, err := s.runner()
	if err != nil {
		return err
	}
	l.adopt(s)
	a := l.newAcquisition(ctx, lc)
	var newKeys, heldKeys []Key // locked now; held before and without a token yet
	for _, key := range keys {
		if s.holds(l, key) {
			if s.owner == nil {
				// A caller's transaction may have ended behind the
				// context's back: one locking read (granted at once) tells.
				if err := l.joinKey(a, s, tx, key); err != nil {
					return err
				}
			}
			if _, ok := s.token(l.cfg.table, key); lc.fencing && !ok {
				heldKeys = append(heldKeys, key)
			}
			continue
		}
		done := l.tel.startAcquire(ctx, key, lc.noWait)
		err := l.joinKey(a, s, tx, key)
		done(err)
		if err != nil {
			return err
		}
		newKeys = append(newKeys, key)
	}
	// A transaction that may have read before these locks is checked
	// (the token read fails if its snapshot predates them), unless the
	// caller promised it has not; fencing takes the tokens either way.
	check := len(newKeys) > 0 && !lc.fresh && l.srv.snapshotIsolation
	for _, t := range [...]struct {
		keys  []Key
		check bool
	}{{heldKeys, false}, {newKeys, check}} {
		if len(t.keys) == 0 || !(lc.fencing || t.check) {
			continue
		}
		tokens, err := l.takeTokens(ctx, tx, t.keys, s.owner != nil || s.holdsAny(), t.check)
		if err != nil {
			return err
		}
		for i, k := range t.keys {
			s.setToken(l, k, tokens[i])
		}
	}
	for _, k := range newKeys {
		s.add(l, k)
	}
	return nil
}

// errMultiWriterJoin refuses a lock in a caller's transaction on Galera in
// multi-writer mode.
var errMultiWriterJoin = errors.New("dblock: GaleraMultiWriter: a lock in a transaction of yours (LockTx, Do under WithTx) cannot be made safe across Galera nodes: " +
	"when another node's holder commits first, the cluster aborts your transaction, and the abort is not always reported to your statements, " +
	"which then run in autocommit outside any lock; take the lock with Do or Lock, whose transaction the Locker checks before COMMIT")

// joinKey takes key in the transaction of s, recreating a row that was
// collected since its id was cached.
func (l *Locker) joinKey(a *acquisition, s *txScope, tx stmtRunner, key Key) error {
	pctx, cancel := a.prepCtx()
	defer cancel()
	holdsOthers := s.owner != nil || s.holdsAny()
	for attempt := 1; ; attempt++ {
		id, err := l.findRow(pctx, key, attempt > 1)
		if err != nil {
			return a.prepError("finding the key's row", key, err)
		}
		var leaseEnd time.Time
		if s.owner != nil {
			if leaseEnd, err = s.owner.keeper.fresh(a.ctx); err != nil {
				return err
			}
		}
		_, err = a.lockKey(tx, key, id, false, leaseEnd, holdsOthers)
		if !errors.Is(err, errRowGone) {
			return err
		}
		// The locking read of the missing row took a gap lock; `txlock gc`
		// never deletes the newest row, so that gap lies below the highest
		// id and the new row, with an id above it, does not wait for this
		// transaction. A row deleted otherwise fails fast (see findRow).
		l.cache.forget(key, id)
		if attempt == 3 {
			return fmt.Errorf("dblock: the row of %s in %s disappeared %d times while locking it: is a gc deleting live rows?", key, l.cfg.table, attempt)
		}
	}
}

// runner returns where the library's statements run in s's transaction:
// the keeper of a transaction the Locker opened, or the caller's own
// transaction, unwrapped from gorm's prepared-statement layer (the
// library's statements are never prepared).
func (s *txScope) runner() (stmtRunner, error) {
	if s.owner != nil {
		return s.owner.keeper, nil
	}
	return txPool(s.tx)
}

// txPool returns the connection of the transaction tx, below gorm's
// prepared-statement layer.
func txPool(tx *gorm.DB) (gorm.ConnPool, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: nil *gorm.DB", ErrNoTransaction)
	}
	if tx.Statement == nil || tx.Statement.ConnPool == nil {
		return nil, fmt.Errorf("%w: the *gorm.DB has no connection", ErrNoTransaction)
	}
	pool := tx.Statement.ConnPool
	if p, ok := pool.(*gorm.PreparedStmtTX); ok {
		pool = p.Tx
	}
	if f, ok := pool.(failedPool); ok {
		return nil, f.err
	}
	if _, ok := pool.(gorm.TxCommitter); !ok {
		return nil, fmt.Errorf("%w: the *gorm.DB is not inside a transaction (start one with db.Begin or db.Transaction)", ErrNoTransaction)
	}
	if c, ok := pool.(*lockConn); ok {
		return c.keeper, nil
	}
	return pool, nil
}

// lockConfig merges the Locker's defaults and opts.
func (l *Locker) lockConfig(opts []LockOption) (lockConfig, error) {
	if len(opts) == 0 && len(l.cfg.defaults) == 0 {
		return lockConfig{lease: defaultLease}, nil
	}
	var lc lockConfig
	if len(l.cfg.defaults) > 0 {
		if err := lc.apply(l.cfg.defaults); err != nil {
			return lc, err
		}
	}
	return lc, lc.apply(opts)
}
