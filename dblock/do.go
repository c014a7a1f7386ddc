package dblock

import (
	"context"
	"errors"
	"fmt"

	"gorm.io/gorm"
)

// Do holds key for the duration of fn. fn gets the transaction that holds
// the lock: business writes made through tx commit atomically with the
// release. fn's ctx carries the transaction, so that repositories reach it
// with DB and a nested Do joins it (a nested Do of a held key returns to
// its fn at once, without a round trip).
//
// If ctx already carries a transaction (an outer Do, WithTx or
// Lock.Context), Do joins it: the lock is released when that transaction
// ends, and fn's error is returned without rolling it back (the owner of
// the transaction decides).
//
// Otherwise Do opens a transaction, takes the lock as its first statement,
// runs fn, and commits when fn returns nil. fn's error rolls back and is
// returned as is (server outcomes such as a deadlock are wrapped so that
// errors.Is finds ErrDeadlock). A panic in fn rolls back and is re-raised.
// With the Retry option, a deadlock victim is run again from the start.
func (l *Locker) Do(ctx context.Context, key Key, fn func(ctx context.Context, tx *gorm.DB) error, opts ...LockOption) error {
	if fn == nil {
		return errors.New("dblock: Do: nil fn")
	}
	if err := l.check(ctx, key); err != nil {
		return err
	}
	keys := [1]Key{key}
	return l.do(ctx, keys[:], fn, opts)
}

// do is Do over one or more keys, already validated and in canonical
// order.
func (l *Locker) do(ctx context.Context, keys []Key, fn func(ctx context.Context, tx *gorm.DB) error, opts []LockOption) (err error) {
	ctx, end := l.tel.startDo(ctx, keys[0], len(keys))
	defer func() { end(err) }()
	lc, err := l.lockConfig(opts)
	if err != nil {
		return err
	}
	if scope := scopeFrom(ctx); scope != nil {
		for _, k := range keys {
			if err := l.joinLock(ctx, scope, k, lc); err != nil {
				return err
			}
		}
		return fnError(fn(ctx, scope.tx))
	}
	attempt := func() error {
		k, err := l.begin(ctx, keys, lc, false)
		if err != nil {
			return err
		}
		return k.run(fn)
	}
	if lc.retry.Attempts > 1 {
		return retrying(ctx, lc.retry, attempt)
	}
	return attempt()
}

// run runs fn under the lock and ends the transaction: commit on nil,
// rollback on an error, a panic or runtime.Goexit.
//
// fn's context is the lock's: it is cancelled, with cause ErrLockLost, when
// the lock is lost. fn's error after a loss is returned wrapped in the loss.
func (k *Lock) run(fn func(ctx context.Context, tx *gorm.DB) error) error {
	finished := false
	defer func() {
		if !finished {
			_ = k.Rollback() // the panic goes on unchanged
		}
	}()
	err := fn(&k.fnCtx, k.tx)
	finished = true
	if err != nil {
		_ = k.Rollback()
		if lostErr := k.Err(); lostErr != nil {
			return fmt.Errorf("%w (fn returned: %w)", lostErr, err)
		}
		return fnError(err)
	}
	return k.Commit()
}

// LockTx takes key inside tx, a transaction the caller opened with gorm
// (db.Begin, db.Transaction). The caller's Commit or Rollback releases it.
// When ctx carries tx (WithTx), the key is remembered there, so that a
// later acquisition of it through ctx needs no round trip.
//
// Take locks before reading the data they protect: under REPEATABLE READ a
// transaction's reads come from a snapshot taken at its first read, which
// may predate the previous holder's commit. On MariaDB with
// innodb_snapshot_isolation (10.6.18, 10.11.8 and later), LockTx turns it
// on for the transaction, so that a write based on a stale read fails with
// error 1020 (ErrStaleSnapshot through Do) instead of silently overwriting
// the previous holder's update; tx's Commit and Rollback turn it back to the
// server's default. That costs two round trips, once per transaction
// (NoPriorReads skips it when the lock comes before any read). On
// other servers, read what the lock protects with locking reads (FOR
// UPDATE) or use READ COMMITTED in transactions that read before locking.
func (l *Locker) LockTx(ctx context.Context, tx *gorm.DB, key Key, opts ...LockOption) error {
	if err := l.check(ctx, key); err != nil {
		return err
	}
	if _, err := txPool(tx); err != nil {
		return err
	}
	lc, err := l.lockConfig(opts)
	if err != nil {
		return err
	}
	scope := scopeFrom(ctx)
	if scope == nil || !sameTx(scope.tx, tx) {
		scope = &txScope{tx: tx}
	}
	return l.joinLock(ctx, scope, key, lc)
}
