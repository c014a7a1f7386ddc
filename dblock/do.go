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
// If ctx already carries a transaction of the Locker's database (an outer
// Do, WithTx or Lock.Context), Do joins it: the lock is released when that
// transaction ends, and fn's error is returned without rolling it back
// (the owner of the transaction decides). A transaction of another
// database does not count: Do then opens its own.
//
// Otherwise Do opens a transaction, takes the lock as its first statement,
// runs fn, and commits when fn returns nil. fn's error rolls back and is
// returned as is (server outcomes such as a deadlock are wrapped so that
// errors.Is finds ErrDeadlock). A panic in fn rolls back and is re-raised.
// With the Retry option, a deadlock victim or a stale snapshot is run
// again from the start.
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
	lc, err := l.callConfig(opts, keys)
	if err != nil {
		return err
	}
	ctx, end := l.tel.startDo(ctx, keys[0], len(keys), lc.modeOf(keys[0]), lc.noWait)
	defer func() { end(err) }()
	s, err := l.scopeFor(ctx)
	if err != nil {
		return err
	}
	if s != nil {
		if err := l.join(ctx, s, keys, lc); err != nil {
			return err
		}
		if linkFrom(ctx).s != s {
			ctx = withScope(ctx, s) // the innermost transaction is another database's
		}
		return fnError(fn(ctx, s.tx))
	}
	attempt := func() error {
		lk, err := l.begin(ctx, keys, lc, false)
		if err != nil {
			return err
		}
		return lk.run(fn)
	}
	if lc.attempts > 1 {
		return retrying(ctx, lc.attempts, attempt)
	}
	return attempt()
}

// LockTx takes key inside tx, a transaction the caller opened with gorm
// (db.Begin, db.Transaction) on the Locker's database. The caller's Commit
// or Rollback releases it. When ctx carries tx (WithTx), the key is
// remembered there, so that a later acquisition of it through ctx joins.
//
// Take locks before reading the data they protect: under REPEATABLE READ
// a transaction's reads come from a snapshot taken at its first read,
// which may predate the previous holder's commit. On MariaDB (10.6.18,
// 10.11.8 and later) LockTx detects a transaction that read before it and
// returns ErrStaleSnapshot (the server rolls the transaction back); the
// check costs an autocommit write and a read, which NoPriorReads skips.
// See "Transactions that read before they lock" in the package
// documentation.
func (l *Locker) LockTx(ctx context.Context, tx *gorm.DB, key Key, opts ...LockOption) error {
	if err := l.check(ctx, key); err != nil {
		return err
	}
	if _, err := txPool(tx); err != nil {
		return err
	}
	keys := [1]Key{key}
	lc, err := l.callConfig(opts, keys[:])
	if err != nil {
		return err
	}
	s := scopeOf(ctx, tx)
	if s.pool != l.sqlDB {
		same, err := l.sameDatabase(ctx, s)
		if err != nil {
			return err
		}
		if !same {
			return fmt.Errorf("%w: LockTx: the transaction runs on another database than the Locker's lock table (%s)", ErrNoTransaction, l.cfg.table)
		}
	}
	return l.join(ctx, s, keys[:], lc)
}

// scopeOf returns the scope of tx: the one ctx carries for it, the Lock's
// own, or a new one.
func scopeOf(ctx context.Context, tx *gorm.DB) *txScope {
	pool, _ := txPool(tx)
	for link := linkFrom(ctx); link != nil; link = link.next {
		if p, _ := txPool(link.s.tx); p == pool {
			return link.s
		}
	}
	if c := lockConnOf(tx); c != nil {
		return c.lock.scope
	}
	return callerScope(tx)
}
