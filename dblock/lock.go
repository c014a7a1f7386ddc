package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"gorm.io/gorm"
)

// A Lock is a held lock with the transaction that holds it. The holder
// writes through Tx and ends the lock with Commit (keeping the writes) or
// Rollback (dropping them); call Rollback in a defer, it is a no-op after
// Commit. A Lock dropped without either is rolled back once it becomes
// unreachable (and a warning is logged). A Lock is not safe for concurrent
// use by several goroutines, as the transaction underneath is not.
type Lock struct {
	h     *hold
	tx    *gorm.DB
	scope *txScope
	token int64
	fnCtx scopedCtx // the lock's context carrying its transaction: Do's fn context
}

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
// fails at once with ErrNotAcquired.
func (l *Locker) TryLock(ctx context.Context, key Key, opts ...LockOption) (*Lock, error) {
	return l.lockOne(ctx, key, opts, true)
}

func (l *Locker) lockOne(ctx context.Context, key Key, opts []LockOption, noWait bool) (*Lock, error) {
	if err := l.check(ctx, key); err != nil {
		return nil, err
	}
	keys := [1]Key{key}
	lc, err := l.callConfig(opts, keys[:])
	if err != nil {
		return nil, err
	}
	if noWait {
		lc.noWait, lc.wait = true, 0
	}
	lk, err := l.begin(ctx, keys[:], lc, true)
	if err != nil {
		return nil, err
	}
	return lk, nil
}

// Tx returns the transaction that holds the lock. Writes made through it
// commit with Commit and are dropped by Rollback; its Commit and Rollback
// are the Lock's.
func (lk *Lock) Tx() *gorm.DB { return lk.tx }

// Context returns a copy of parent that carries the lock's transaction, so
// that Do joins it (a nested Do of the same key returns at once) and DB
// returns it.
func (lk *Lock) Context(parent context.Context) context.Context {
	return withScope(parent, lk.scope)
}

// scopedCtx is the lock's own context carrying its transaction: fn's
// context in Do, stored in the Lock so that it costs no allocation.
type scopedCtx struct {
	context.Context
	link scopeLink
}

// Value implements context.Context.
func (c *scopedCtx) Value(key any) any {
	if key == (ctxKey{}) {
		return &c.link
	}
	return c.Context.Value(key)
}

// Token returns the lock's fencing token, or 0 when fencing was not asked
// for.
func (lk *Lock) Token() int64 { return lk.token }

// Lost returns a channel that is closed when the lock can no longer be
// vouched for, and when it is released. After a loss, Err says why: the
// lease ran out without an answer from the server, a statement on the
// lock's connection ended the transaction, or the lock's context ended. A
// holder that sees Lost closed must stop acting on the lock: the server
// may hand it to someone else, and the transaction will not commit.
func (lk *Lock) Lost() <-chan struct{} {
	h := lk.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil {
		h.lost = make(chan struct{})
		if h.state != held {
			close(h.lost)
		}
	}
	return h.lost
}

// Err returns nil while the lock is held or after it was released, and an
// error wrapping ErrLockLost once it was lost.
func (lk *Lock) Err() error {
	lk.h.mu.Lock()
	defer lk.h.mu.Unlock()
	return lk.h.lostErr
}

// KeepAlive sends a keepalive on the lock's connection now and reports
// whether the server answered. The lease keeps itself alive while the
// holder is connected; call KeepAlive to check the lock before an action
// that must not run without it. Call it between statements, never while a
// result set of the transaction is open.
func (lk *Lock) KeepAlive(ctx context.Context) error {
	if err := lk.Err(); err != nil {
		return err
	}
	if err := lk.h.keeper.ping(ctx); err != nil {
		if lerr := lk.Err(); lerr != nil {
			return lerr
		}
		return fmt.Errorf("dblock: keepalive of %s: %w", lk.h.key, err)
	}
	return nil
}

// Commit commits the transaction, keeping its writes, and so releases the
// lock. A lock that was lost returns its loss (wrapping ErrLockLost) and
// commits nothing; a lock released already returns ErrNotHeld. A failed
// commit returns ErrLockLost: with ErrCommitUnknown when the connection
// failed after COMMIT was sent, else the writes were not committed.
func (lk *Lock) Commit() error {
	if lk == nil {
		return errors.New("dblock: Commit of a nil *Lock")
	}
	h := lk.h
	ok, err := h.end()
	if !ok {
		h.finish()
		switch {
		case errors.Is(err, ErrCommitUnknown):
			// What ended the transaction may have committed writes.
			return fmt.Errorf("%w; commit of %s not sent", err, h.key)
		case errors.Is(err, ErrLockLost):
			return fmt.Errorf("%w; commit of %s not sent, writes not committed", err, h.key)
		}
		return err
	}
	// The outcome is judged from the error itself: the context ending
	// while COMMIT was on its way says nothing about whether it committed.
	err = commitError(h.key, h.keeper.commit())
	if err != nil {
		err = withCause(h.ctx, err) // before finish, which ends h.ctx itself
	}
	h.finish()
	return err
}

// Rollback rolls the transaction back, dropping its writes, and so releases
// the lock. It is idempotent, safe after Commit, and works after the
// lock's context was cancelled or the lock was lost.
func (lk *Lock) Rollback() error {
	if lk == nil {
		return nil
	}
	h := lk.h
	ok, _ := h.end()
	if !ok {
		h.finish()
		return nil
	}
	err := h.keeper.rollback()
	h.finish()
	switch {
	case errors.Is(err, errEndedUnseen):
		return fmt.Errorf("%w: %w: rollback of %s: %w; writes sent before the transaction ended may have been committed by what ended it",
			ErrCommitUnknown, ErrLockLost, h.key, err)
	case errors.Is(err, errStalled):
		return fmt.Errorf("%w: rollback of %s: %w; the server ends the transaction when the lease runs out", ErrLockLost, h.key, err)
	case err != nil && !errors.Is(err, sql.ErrTxDone) && !isConnectionLoss(err):
		// The server ends the transaction with the connection anyway.
		return fmt.Errorf("dblock: rollback of %s: %w", h.key, err)
	}
	return nil
}

// run runs fn under the lock and ends the transaction: commit on nil,
// rollback on an error, a panic or runtime.Goexit.
//
// fn's context is the lock's: it is cancelled, with cause ErrLockLost, when
// the lock is lost. fn's error after a loss is returned wrapped in the loss.
func (lk *Lock) run(fn func(ctx context.Context, tx *gorm.DB) error) error {
	finished := false
	defer func() {
		if !finished {
			_ = lk.Rollback() // the panic goes on unchanged
		}
	}()
	err := fn(&lk.fnCtx, lk.tx)
	finished = true
	if err != nil {
		if rerr := lk.Rollback(); errors.Is(rerr, ErrCommitUnknown) {
			return fmt.Errorf("%w (fn returned: %w)", rerr, err)
		}
		if lostErr := lk.Err(); lostErr != nil && !errors.Is(err, lostErr) {
			return fmt.Errorf("%w (fn returned: %w)", lostErr, err)
		}
		return fnError(err)
	}
	return lk.Commit()
}
