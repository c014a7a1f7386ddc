package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestSessionSettingsDoNotLeak shows that the session settings the Locker
// changes to guard a joined transaction (innodb_snapshot_isolation) are
// back to the server's default on the pooled connection once the
// transaction ends, for each way of joining, on commit and on rollback. The
// pool has one connection, so every transaction and check uses the same
// session.
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
			guarded := -1
			if err := c.run(func(tx *gorm.DB) { guarded = session(tx) }); err != nil {
				t.Fatal(err)
			}
			if guarded != 1 {
				t.Errorf("inside the joined transaction innodb_snapshot_isolation = %d, want 1 (the guard)", guarded)
			}
			if after := session(e.db); after != global {
				t.Errorf("after the transaction the session has innodb_snapshot_isolation = %d, want the global %d", after, global)
			}
		})
	}
}

// TestNoPriorReadsSkipsGuard: a caller that promises its transaction has
// not read before the lock gets no snapshot guard (no round trips for it),
// and a stale-read write is then on the caller, as promised.
func TestNoPriorReadsSkipsGuard(t *testing.T) {
	e, l, global := oneSession(t)
	ctx := ctxT(t)
	inside := -1
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := l.LockTx(ctx, tx, dblock.Resource("a"), dblock.NoPriorReads()); err != nil {
			return err
		}
		return tx.Raw("SELECT @@SESSION.innodb_snapshot_isolation").Row().Scan(&inside)
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside != global {
		t.Fatalf("with NoPriorReads the session's innodb_snapshot_isolation was %d inside the transaction, want the global %d", inside, global)
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
