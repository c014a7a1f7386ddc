package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestSessionSettingsDoNotLeak shows that no way of joining a transaction
// changes its session's innodb_snapshot_isolation, inside the transaction
// or after it, on commit and on rollback: the check for a stale snapshot
// sets it for one statement only (SET STATEMENT). The pool has one
// connection, so every transaction and check uses the same session.
func TestSessionSettingsDoNotLeak(t *testing.T) {
	e, l, global := oneSession(t)
	ctx := ctxT(t)
	session := func(tx *gorm.DB) int {
		t.Helper()
		var v int
		if err := tx.Raw("SELECT @@SESSION.innodb_snapshot_isolation").Row().Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	fail := errors.New("rolled back")
	cases := []struct {
		name string
		run  func(check func(tx *gorm.DB)) error
	}{
		{"LockTx in db.Transaction, commit", func(check func(*gorm.DB)) error {
			return e.db.Transaction(func(tx *gorm.DB) error {
				if err := l.LockTx(ctx, tx, dblock.Resource("a")); err != nil {
					return err
				}
				check(tx)
				return nil
			})
		}},
		{"LockTx of a derived handle in db.Transaction, commit", func(check func(*gorm.DB)) error {
			return e.db.Transaction(func(tx *gorm.DB) error {
				if err := l.LockTx(ctx, tx.WithContext(ctx), dblock.Resource("a")); err != nil {
					return err
				}
				check(tx)
				return nil
			})
		}},
		{"LockTx in db.Begin, rollback", func(check func(*gorm.DB)) error {
			tx := e.db.Begin()
			if err := l.LockTx(ctx, tx, dblock.Resource("a")); err != nil {
				tx.Rollback()
				return err
			}
			check(tx)
			return tx.Rollback().Error
		}},
		{"Do under WithTx, error", func(check func(*gorm.DB)) error {
			err := e.db.Transaction(func(tx *gorm.DB) error {
				return l.Do(dblock.WithTx(ctx, tx), dblock.Resource("a"), func(ctx context.Context, tx *gorm.DB) error {
					check(tx)
					return fail
				})
			})
			if errors.Is(err, fail) {
				return nil
			}
			return err
		}},
		{"nested Do of another key, commit", func(check func(*gorm.DB)) error {
			return l.Do(ctx, dblock.Resource("a"), func(ctx context.Context, _ *gorm.DB) error {
				return l.Do(ctx, dblock.Resource("b"), func(ctx context.Context, tx *gorm.DB) error {
					check(tx)
					return nil
				})
			})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			inside := -1
			if err := c.run(func(tx *gorm.DB) { inside = session(tx) }); err != nil {
				t.Fatal(err)
			}
			if inside != global {
				t.Errorf("inside the joined transaction innodb_snapshot_isolation = %d, want the global %d", inside, global)
			}
			if after := session(e.db); after != global {
				t.Errorf("after the transaction the session has innodb_snapshot_isolation = %d, want the global %d", after, global)
			}
		})
	}
}

// TestNoPriorReadsSkipsCheck: a transaction that read before LockTx is
// refused with ErrStaleSnapshot, and rolled back; with NoPriorReads the
// check is skipped, as promised, and the lock is taken.
func TestNoPriorReadsSkipsCheck(t *testing.T) {
	e, l, _ := oneSession(t)
	ctx := ctxT(t)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "a", 1); err != nil {
		t.Fatal(err)
	}
	readThenLock := func(opts ...dblock.LockOption) error {
		return e.db.Transaction(func(tx *gorm.DB) error {
			var v int
			if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'a'").Row().Scan(&v); err != nil {
				return err
			}
			return l.LockTx(ctx, tx, dblock.Resource("a"), opts...)
		})
	}
	if err := readThenLock(); !errors.Is(err, dblock.ErrStaleSnapshot) {
		t.Fatalf("LockTx after a read = %v, want ErrStaleSnapshot", err)
	}
	if err := readThenLock(dblock.NoPriorReads()); err != nil {
		t.Fatalf("LockTx after a read with NoPriorReads = %v, want nil (the check skipped)", err)
	}
}

// oneSession sets up a test whose pool has one connection, so that every
// transaction and check uses the same session, with a Locker (closed at
// cleanup) and the server's global innodb_snapshot_isolation. It skips on
// servers without that variable.
func oneSession(t *testing.T) (env, *dblock.Locker, int) {
	t.Helper()
	e := setup(t)
	e.sqlDB.SetMaxOpenConns(1)
	l := e.locker(t)
	t.Cleanup(func() { _ = l.Close() })
	var global int
	if err := e.db.Raw("SELECT @@GLOBAL.innodb_snapshot_isolation").Row().Scan(&global); err != nil {
		t.Skipf("server without innodb_snapshot_isolation: %v", err)
	}
	return e, l, global
}
