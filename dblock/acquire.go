package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"time"

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
	// readConn: the next locking read also reads CONNECTION_ID(), the
	// first in a caller's transaction, whose connection may be new to the
	// Locker (its label is then written: label.go); conn is what it read.
	readConn bool
	conn     int64
	slots    []int64 // Permits: the key's permit rows
	hier     bool    // the hierarchy setting the acquisition assumes (hierarchy.go)
	permitID int64   // Permits: the permit row granted
	plan     []node  // under the hierarchy: the rows to lock, in order
}

func (l *Locker) newAcquisition(ctx context.Context, lc lockConfig) *acquisition {
	a := &acquisition{l: l, ctx: ctx, lc: lc, hier: l.hier.Load()}
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

// begin opens a transaction and takes keys (in canonical order) as its
// first statements. handle says the Lock goes to the caller (Lock,
// TryLock): it then watches its context and is rolled back if dropped.
func (l *Locker) begin(ctx context.Context, keys []Key, lc lockConfig, handle bool) (*Lock, error) {
	done := l.tel.startAcquire(ctx, keys[0], lc.modeOf(keys[0]), lc.noWait)
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
	if lc.permits > 0 {
		if a.slots, err = l.permitSlots(pctx, keys[0], lc.permits); err != nil {
			return nil, a.prepError("finding the key's permits", keys[0], err)
		}
	}
	reconnected := false
	switches := 0 // attempts started over because the hierarchy setting changed
	for attempt := 1; ; attempt++ {
		if a.plan = nil; a.hier {
			if a.plan, err = l.plan(pctx, keys, func(Key, bool) bool { return false }); err != nil {
				return nil, a.prepError("finding the rows of the keys containing it", keys[0], err)
			}
		}
		lk, gone, err := a.open(pctx, keys, ids)
		if err == nil {
			if err := a.granted(lk, keys, handle); err != nil {
				return nil, err
			}
			return lk, nil
		}
		switch {
		case errors.Is(err, errHierarchyChanged) && switches < hierarchyAttempts:
			// A switch of the table's setting: start over under the one
			// the table has now, once the switch has had time to finish.
			switches++
			a.hier = l.hier.Load()
			if serr := sleepCtx(pctx, time.Duration(min(switches, 10))*10*time.Millisecond); serr != nil {
				return nil, a.prepError("waiting for a switch of the hierarchy setting", keys[0], fmt.Errorf("%w: %s: %w", ErrHierarchyChanged, keys[0], serr))
			}
		case errors.Is(err, errHierarchyChanged):
			return nil, fmt.Errorf("%w: %s: the setting changed under %d attempts: is a switch stuck?", ErrHierarchyChanged, keys[0], switches)
		case gone == len(keys) && attempt < rowAttempts:
			// A row of the plan was collected: find them all again.
			for _, n := range a.plan {
				l.cache.forget(n.key, n.id)
			}
			if ids, err = l.rowIDs(pctx, keys, idBuf[:0]); err != nil {
				return nil, a.prepError("finding the key's row", keys[0], err)
			}
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
	h := &hold{l: l, key: keys[0], mode: a.lc.modeOf(keys[0]), ctx: lctx, cancel: cancel}
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
	session, gone, err := a.lockAll(ownStmts{h.keeper}, keys, ids)
	if err != nil {
		h.abort()
		return nil, gone, err
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

// lockAll takes keys (rows ids) with the first statements of a
// transaction the Locker opened, and returns the session's idle bounds
// that the first read returned. On failure gone is the index of a key
// whose row was missing, len(keys) for a row of the hierarchy's plan, else
// -1.
func (a *acquisition) lockAll(tx ownStmts, keys []Key, ids []int64) (session [3]sql.NullInt64, gone int, err error) {
	if a.plan != nil {
		out, _, _, err := a.lockPlan(tx, keys[0], a.plan, true, time.Time{}, false)
		if errors.Is(err, errRowGone) {
			return session, len(keys), err
		}
		return out.session, -1, err
	}
	for i, key := range keys {
		var out lockOutcome
		if a.lc.permits > 0 {
			out, err = a.lockPermit(tx, key, a.slots, i == 0, time.Time{}, false)
		} else {
			out, err = a.lockKey(tx, key, lockTarget{id: ids[i]}, i == 0, time.Time{}, false)
		}
		if errors.Is(err, errRowGone) {
			return session, i, err
		}
		if err != nil {
			return session, -1, err
		}
		if i == 0 {
			session = out.session
		}
	}
	return session, -1, nil
}

// granted finishes a transaction whose keys are granted: MaxHold's bound
// first, so that it also bounds the grant's own statements (a fencing
// token or a MinInterval run stuck behind a metadata lock), then those
// statements, the lease's keepalive, and for a handle the watch of its
// context and its cleanup.
func (a *acquisition) granted(lk *Lock, keys []Key, handle bool) error {
	h, l := lk.h, a.l
	h.granted = time.Now()
	if a.lc.maxHold > 0 {
		if err := h.boundHold(h.ctx, a.lc.maxHold); err != nil {
			h.abort()
			return err
		}
	}
	if a.lc.fencing {
		tokens, err := l.takeTokens(h.ctx, ownStmts{h.keeper}, keys, false, false)
		if err != nil {
			return h.abortWith(err)
		}
		lk.token = tokens[0]
		for i, k := range keys {
			lk.scope.setToken(l, k, tokens[i])
		}
	}
	if a.lc.minInterval > 0 {
		n, err := l.recordRun(h.ctx, ownStmts{h.keeper}, keys[0], a.lc.minInterval)
		if err != nil {
			return h.abortWith(err)
		}
		lk.scope.setRun(l, keys[0], n)
	}
	for _, k := range keys {
		lk.scope.add(l.heldKey(k, &a.lc), a.lc.shared(k))
	}
	for _, n := range a.plan {
		if n.container {
			lk.scope.add(heldKey{l.cfg.table, n.key}, true)
		}
	}
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

// abortWith rolls back a transaction whose grant failed with err, and
// returns err, or the loss that made it fail (the lease or MaxHold ran
// out during the grant's statements).
func (h *hold) abortWith(err error) error {
	lerr := h.endedErr()
	h.abort()
	if lerr != nil {
		return fmt.Errorf("%w (the grant's statement then failed: %v)", lerr, err)
	}
	return err
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
		lc.maxHoldCall = false
	}
	return lc, lc.apply(opts)
}
