package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"gorm.io/gorm"
)

// A Lock is a held lock with the transaction that holds it. The holder
// writes through Tx and ends the lock with Commit (keeping the writes) or
// Rollback (dropping them); call Rollback in a defer, it is a no-op after
// Commit. A Lock is not safe for concurrent use by several goroutines, as
// the transaction underneath is not.
type Lock struct {
	l       *Locker
	key     Key
	tx      *gorm.DB
	scope   *txScope
	owned   txScope // the scope of the transaction the Lock opened
	token   int64
	conn    *sql.Conn       // the pool connection the transaction runs on
	leased  *leasedTx       // the transaction's connection, as gorm sees it
	ctx     context.Context // the lock's context: cancelled with the loss as cause
	fnCtx   scopedCtx       // ctx carrying the transaction scope, for Do's fn
	cancel  context.CancelCauseFunc
	granted time.Time

	mu       sync.Mutex
	state    lockState
	lostErr  error         // why, in state lost
	lost     chan struct{} // made by the first Lost call; closed when the lock ends
	stopLost func() bool
	closing  sync.Once
}

// errReleased is why a released lock's transaction scope ended.
var errReleased = errors.New("the lock was released")

type lockState uint8

const (
	held lockState = iota
	released
	lost
)

// Lock takes key in a transaction of its own and returns it held. It waits
// while another holder has the key, bounded by WaitTimeout, the context's
// deadline, or the server's innodb_lock_wait_timeout; running out gives
// ErrNotAcquired.
//
// The transaction is bound to ctx: cancelling ctx rolls it back and
// releases the lock (Lost is then closed). Pass a context that lives as
// long as the lock should.
func (l *Locker) Lock(ctx context.Context, key Key, opts ...LockOption) (*Lock, error) {
	return l.lockOne(ctx, key, opts, false)
}

// TryLock is Lock without waiting: when another holder has the key it
// fails at once with ErrNotAcquired (SELECT ... FOR UPDATE NOWAIT).
func (l *Locker) TryLock(ctx context.Context, key Key, opts ...LockOption) (*Lock, error) {
	return l.lockOne(ctx, key, opts, true)
}

func (l *Locker) lockOne(ctx context.Context, key Key, opts []LockOption, noWait bool) (*Lock, error) {
	if err := l.check(ctx, key); err != nil {
		return nil, err
	}
	lc, err := l.lockConfig(opts)
	if err != nil {
		return nil, err
	}
	if noWait {
		lc.noWait, lc.wait = true, 0
	}
	keys := [1]Key{key}
	return l.begin(ctx, keys[:], lc, true)
}

// begin opens a transaction and takes keys (in canonical order) as its
// first statements.
//
// watch makes the Lock watch ctx, for handles (Lock, TryLock) whose holder
// learns of a loss through Lost.
func (l *Locker) begin(ctx context.Context, keys []Key, lc lockConfig, watch bool) (*Lock, error) {
	done := l.tel.startAcquire(ctx, keys[0], lc.noWait)
	k, err := l.beginAttempt(ctx, keys, lc, 1, watch)
	done(err)
	return k, err
}

func (l *Locker) beginAttempt(ctx context.Context, keys []Key, lc lockConfig, attempt int, watch bool) (*Lock, error) {
	// The row step runs before BEGIN: a caller must never hold one pool
	// connection while waiting for a second (DESIGN.md protocol step 9).
	var idBuf [1]int64
	ids := idBuf[:0]
	for _, key := range keys {
		id, err := l.rowID(ctx, key)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	lctx, cancel := context.WithCancelCause(ctx)
	if t := l.db.Config.DefaultTransactionTimeout; t > 0 {
		// gorm's bound on a transaction without a deadline, as its Begin
		// applies it.
		if _, ok := ctx.Deadline(); !ok {
			var stop context.CancelFunc
			tctx, stop := context.WithTimeout(lctx, t)
			parent := cancel
			lctx, cancel = tctx, func(cause error) { stop(); parent(cause) }
		}
	}
	k := &Lock{l: l, key: keys[0], ctx: lctx, cancel: cancel}
	if err := k.open(lctx, lc.lease); err != nil {
		k.finish()
		if e := l.notPrimary("beginning the lock transaction for", keys[0], err); e != nil {
			return nil, e
		}
		return nil, fmt.Errorf("dblock: beginning the lock transaction for %s: %w", keys[0], err)
	}
	sent := time.Now()
	for i, key := range keys {
		if err := l.lockRowOnce(lctx, k.leased.tx, key, ids[i], lc); err != nil {
			k.abort()
			if errors.Is(err, errRowGone) && attempt < rowAttempts {
				// The row was collected. Create it again outside this
				// transaction, whose locking read of the missing row holds a
				// gap lock that could block the insert, and start over.
				l.cache.forget(key, ids[i])
				return l.beginAttempt(ctx, keys, lc, attempt+1, watch)
			}
			if errors.Is(err, errRowGone) {
				err = fmt.Errorf("dblock: the row of %s in %s disappeared %d times while locking it: is a gc deleting live rows?", key, l.cfg.table, attempt)
			}
			return nil, err
		}
	}
	if time.Since(sent) > leaseMargin(lc.lease)/2 {
		// A long wait: the server's idle clock started when it granted the
		// lock, some time after sent. Take a fresh answer as the lease's start.
		sent = time.Now()
		if _, err := k.leased.tx.ExecContext(lctx, k.leased.pingStmt); err != nil {
			k.abort()
			return nil, fmt.Errorf("%w: %s: the connection failed right after the grant: %w", ErrLockLost, keys[0], err)
		}
	}
	for _, key := range keys {
		var token int64
		if lc.fencing {
			var err error
			if token, err = l.nextToken(lctx, key); err != nil {
				if mysqlErrorNumber(err) == erLockDeadlock && lctx.Err() == nil {
					// Every bump was refused (another holder bumping the
					// counter: Galera multi-writer). The attempt is rolled
					// back whole, so running it again is safe: Retry does.
					err = fmt.Errorf("%w: %w", ErrDeadlock, err)
				}
				k.abort()
				return nil, err
			}
			if key == k.key {
				k.token = token
			}
		}
		k.scope.add(l, key, token)
	}
	k.granted = time.Now()
	k.fnCtx = scopedCtx{Context: lctx, scope: k.scope}
	if watch {
		// database/sql rolls the transaction back when ctx ends: the lock
		// is gone then, and Lost says so. (Do needs no watch: fn's context
		// ends with ctx, and its commit then fails with ErrLockLost.)
		stop := context.AfterFunc(lctx, func() {
			k.lose(fmt.Errorf("%w: %s: the lock's context ended: %w", ErrLockLost, k.key, context.Cause(lctx)))
		})
		k.mu.Lock()
		k.stopLost = stop
		k.mu.Unlock()
	}
	k.leased.start(sent, k.lose)
	return k, nil
}

// open pins a pool connection, sets its session's lease and begins the
// lock transaction on it.
func (k *Lock) open(ctx context.Context, lease time.Duration) error {
	l := k.l
	conn, err := l.sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	k.conn = conn
	if err := l.configureSession(ctx, conn, lease); err != nil {
		return err
	}
	sqlTx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	k.leased = newLeasedTx(sqlTx, lease)
	// One new session on the caller's gorm configuration (logger, hooks,
	// naming), with a Statement of its own: safe to point at the lock's
	// transaction. This is what gorm's Begin does, in one clone instead of
	// two.
	tx := l.db.Session(&gorm.Session{Context: ctx, NewDB: true})
	tx.Statement.ConnPool = k.leased
	k.tx = tx
	k.owned.tx, k.owned.fresh = tx, true
	k.scope = &k.owned
	return nil
}

// abort ends a transaction whose acquisition failed (it holds only locks).
func (k *Lock) abort() {
	k.mu.Lock()
	k.state = released
	k.mu.Unlock()
	k.leased.stop()
	_ = k.leased.tx.Rollback()
	k.finish()
}

// finish gives the connection back to the pool and ends the lock's
// context. The transaction has ended or is ending.
func (k *Lock) finish() {
	k.closing.Do(func() {
		k.mu.Lock()
		stop := k.stopLost
		k.mu.Unlock()
		if stop != nil {
			stop()
		}
		if k.conn != nil {
			_ = k.conn.Close() // waits for the transaction to end
		}
		k.cancel(nil)
	})
}

// lose marks the lock lost: Lost is closed, the lock's context (Do's fn
// context) is cancelled with cause err, which makes database/sql roll the
// transaction back, and the connection goes back to the pool.
func (k *Lock) lose(err error) {
	k.mu.Lock()
	if k.state != held {
		k.mu.Unlock()
		return
	}
	k.state, k.lostErr = lost, err
	k.closeLostLocked()
	k.scope.end(err)
	k.mu.Unlock()
	k.l.log.Warn("dblock: lock lost", "granularity", k.key.Granularity(), "error", err)
	k.leased.stop()
	k.l.tel.lost(k.ctx, k.key, err)
	k.l.tel.held(k.ctx, k.key, time.Since(k.granted))
	k.cancel(err)
	go k.finish() // the rollback may wait for a statement the holder has in flight
}

// Key returns the key the lock holds.
func (k *Lock) Key() Key { return k.key }

// Tx returns the transaction that holds the lock. Writes made through it
// commit with Commit and are dropped by Rollback.
func (k *Lock) Tx() *gorm.DB { return k.tx }

// Context returns a copy of parent that carries the lock's transaction, so
// that Do joins it (a nested Do of the same key returns at once) and DB
// returns it.
func (k *Lock) Context(parent context.Context) context.Context {
	return context.WithValue(parent, ctxKey{}, k.scope)
}

// scopedCtx is the lock's own context carrying its transaction scope: fn's
// context in Do, stored in the Lock so that it costs no allocation.
type scopedCtx struct {
	context.Context
	scope *txScope
}

// Value implements context.Context.
func (c *scopedCtx) Value(key any) any {
	if key == (ctxKey{}) {
		return c.scope
	}
	return c.Context.Value(key)
}

// Token returns the lock's fencing token, or 0 when fencing was not asked
// for.
func (k *Lock) Token() int64 { return k.token }

// Lost returns a channel that is closed when the lock can no longer be
// vouched for, and when it is released. After a loss, Err says why: the
// lease ran out without an answer from the server, a statement on the
// lock's connection failed, or the lock's context ended. A holder that sees
// Lost closed must stop acting on the lock: the server may hand it to
// someone else, and the transaction will not commit.
func (k *Lock) Lost() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lost == nil {
		k.lost = make(chan struct{})
		if k.state != held {
			close(k.lost)
		}
	}
	return k.lost
}

// closeLostLocked closes Lost's channel if someone asked for it; a later
// Lost call returns a closed one. The caller holds k.mu and has just moved
// the lock out of the held state.
func (k *Lock) closeLostLocked() {
	if k.lost != nil {
		close(k.lost)
	}
}

// Err returns nil while the lock is held or after it was released, and an
// error wrapping ErrLockLost once it was lost.
func (k *Lock) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lostErr
}

// KeepAlive sends a keepalive on the lock's connection now and reports
// whether the server answered. The lease keeps itself alive while the
// holder is connected; call KeepAlive to check the lock before an action
// that must not run without it.
func (k *Lock) KeepAlive(ctx context.Context) error {
	if err := k.Err(); err != nil {
		return err
	}
	if err := k.leased.ping(ctx); err != nil {
		if lerr := k.Err(); lerr != nil {
			return lerr
		}
		return fmt.Errorf("dblock: keepalive of %s: %w", k.key, err)
	}
	return nil
}

// end moves a held lock to released and reports whether it was held; a
// lost lock reports its loss.
func (k *Lock) end() (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch k.state {
	case held:
		k.state = released
		k.closeLostLocked()
		k.scope.end(errReleased)
		k.l.tel.held(k.ctx, k.key, time.Since(k.granted))
		return true, nil
	case lost:
		return false, k.lostErr
	}
	return false, nil
}

// Commit commits the transaction, keeping its writes, and so releases the
// lock. A lock that was lost returns its loss (wrapping ErrLockLost) and
// commits nothing; a failed commit returns ErrLockLost (or ErrDeadlock):
// the writes were not committed. Commit of a released lock returns
// ErrLockLost.
func (k *Lock) Commit() error {
	if k == nil {
		return errors.New("dblock: Commit of a nil *Lock")
	}
	ok, lostErr := k.end()
	if !ok {
		k.finish()
		if lostErr != nil {
			return lostErr
		}
		return fmt.Errorf("%w: %s was already released", ErrLockLost, k.key)
	}
	err := k.resetGuard()
	if err == nil {
		err = k.tx.Commit().Error
	} else {
		k.tx.Rollback()
	}
	if err != nil {
		err = withCause(k.ctx, err) // before finish, which ends k.ctx itself
	}
	k.finish()
	return releaseError(k.key, err)
}

// Rollback rolls the transaction back, dropping its writes, and so
// releases the lock. It is idempotent, safe after Commit, and works after
// the lock's context was cancelled or the lock was lost.
func (k *Lock) Rollback() error {
	if k == nil {
		return nil
	}
	ok, _ := k.end()
	if !ok {
		k.finish()
		return nil
	}
	_ = k.resetGuard()
	err := k.tx.Rollback().Error
	k.finish()
	if err != nil && !errors.Is(err, sql.ErrTxDone) && !isConnectionLoss(err) {
		// The server ends the transaction with the connection anyway.
		return fmt.Errorf("dblock: rollback of %s: %w", k.key, err)
	}
	return nil
}

// resetGuard turns innodb_snapshot_isolation back off on the session if a
// joined acquisition turned it on, so that it does not leak into the
// pool's later transactions.
func (k *Lock) resetGuard() error {
	if !k.scope.isGuarded() {
		return nil
	}
	if _, err := k.leased.ExecContext(context.WithoutCancel(k.tx.Statement.Context), k.l.q.snapshotOff); err != nil {
		return fmt.Errorf("dblock: resetting innodb_snapshot_isolation: %w", err)
	}
	return nil
}
