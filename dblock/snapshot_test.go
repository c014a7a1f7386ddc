package dblock_test

import (
	"context"
	"errors"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// staleSnapshotCase is a way to take a lock in a transaction that has
// already read the data the lock protects: join runs, in the transaction
// of outer (or one it opens), a read of v (the stale snapshot), then
// acquires key (which waits for another holder), then calls rmw, which reads
// v again and writes v+1. It returns the error of the whole.
type staleSnapshotCase struct {
	name string
	run  func(ctx context.Context, e env, l *dblock.Locker, key dblock.Key, read func(*gorm.DB) error, rmw func(*gorm.DB) error) error
}

// isCheckRead reports whether err is MariaDB's 1020, "Record has changed
// since last read" (innodb_snapshot_isolation).
func isCheckRead(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) && me.Number == 1020
}

var staleSnapshotCases = []staleSnapshotCase{
	{"nested Do of another key", func(ctx context.Context, e env, l *dblock.Locker, key dblock.Key, read, rmw func(*gorm.DB) error) error {
		return l.Do(ctx, dblock.Resource("outer"), func(ctx context.Context, tx *gorm.DB) error {
			if err := read(tx); err != nil {
				return err
			}
			return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error { return rmw(tx) })
		})
	}},
	{"LockTx in the caller's transaction", func(ctx context.Context, e env, l *dblock.Locker, key dblock.Key, read, rmw func(*gorm.DB) error) error {
		return e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := read(tx); err != nil {
				return err
			}
			if err := l.LockTx(ctx, tx, key); err != nil {
				return err
			}
			return rmw(tx)
		})
	}},
	{"Do under WithTx", func(ctx context.Context, e env, l *dblock.Locker, key dblock.Key, read, rmw func(*gorm.DB) error) error {
		return e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := read(tx); err != nil {
				return err
			}
			return l.Do(dblock.WithTx(ctx, tx), key, func(ctx context.Context, tx *gorm.DB) error { return rmw(tx) })
		})
	}},
}

// TestJoinedStaleSnapshot: a lock joined into a transaction that has
// already read must not turn into a silent lost update (docs/PROTOCOL.md,
// step 6): after the lock, either the transaction's reads see the previous
// holder's commit, or its write based on the stale read fails with
// ErrStaleSnapshot (MariaDB with innodb_snapshot_isolation). The previous
// holder sets v from 0 to 10 while the transaction waits for the lock; the
// transaction then writes what it reads plus one: 1 is a lost update.
func TestJoinedStaleSnapshot(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	key := dblock.Resource("order:1")

	for _, c := range staleSnapshotCases {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxT(t)
			if err := put(e.db, kv, "v", 0); err != nil {
				t.Fatal(err)
			}
			holder := holdKey(t, ctx, l, key)

			var stale, seen int64 = -1, -1
			didRead := make(chan struct{})
			read := func(tx *gorm.DB) error {
				defer close(didRead)
				return tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'v'").Row().Scan(&stale)
			}
			rmw := func(tx *gorm.DB) error {
				if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'v'").Row().Scan(&seen); err != nil {
					return err
				}
				return tx.Exec("UPDATE `"+kv+"` SET v = ? WHERE k = 'v'", seen+1).Error
			}
			done := make(chan error, 1)
			go func() { done <- c.run(ctx, e, l, key, read, rmw) }()
			select {
			case <-didRead:
			case err := <-done:
				t.Fatalf("returned before reading: %v", err)
			}
			waitForLockWaits(t, e.sqlDB, e.table, 1) // the acquisition of key, after the read
			if err := put(holder.Tx(), kv, "v", 10); err != nil {
				t.Fatal(err)
			}
			if err := holder.Commit(); err != nil {
				t.Fatal(err)
			}
			err := <-done
			final := get(t, e.db, kv, "v")
			t.Logf("read %d before the lock, %d after; error %v; v = %d", stale, seen, err, final)
			if stale != 0 {
				t.Fatalf("the transaction read %d before the lock, want 0", stale)
			}
			switch {
			case err != nil && (errors.Is(err, dblock.ErrStaleSnapshot) || isCheckRead(err)) && final == 10:
				// The stale write failed, as it should on MariaDB with the
				// guard: ErrStaleSnapshot through Do, or the server's 1020
				// itself from a write the caller made with its own handle.
			case err == nil && seen == 10 && final == 11:
				// The read after the lock was fresh.
			case err == nil && final == 1:
				t.Fatalf("lost update: the transaction read the stale %d after the lock and overwrote the previous holder's 10", seen)
			default:
				t.Fatalf("unexpected outcome: error %v, read %d after the lock, v = %d", err, seen, final)
			}
		})
	}
}
