package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// sameTx reports whether a and b run on the same connection pool or
// transaction.
func sameTx(a, b *gorm.DB) bool {
	return a != nil && b != nil && a.Statement.ConnPool == b.Statement.ConnPool
}

// heldElsewhere checks from another goroutine (another transaction) that
// key is held.
func heldElsewhere(t *testing.T, l *dblock.Locker, key dblock.Key) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		k, err := l.TryLock(context.Background(), key)
		if err == nil {
			_ = k.Rollback()
			err = errors.New("TryLock succeeded")
		} else if errors.Is(err, dblock.ErrNotAcquired) {
			err = nil
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("TryLock(%s) from another goroutine: %v, want ErrNotAcquired", key, err)
	}
}

// TestDoJoinsWithTx: Do under WithTx joins the caller's transaction: fn
// gets it, its writes commit only when the caller commits, and the key is
// held until then.
func TestDoJoinsWithTx(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	key := dblock.Resource("order:1")

	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "caller commits", false: "caller rolls back"}[commit]
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			tx := e.db.WithContext(ctx).Begin()
			if tx.Error != nil {
				t.Fatal(tx.Error)
			}
			defer tx.Rollback()
			ctx = dblock.WithTx(ctx, tx)
			if got, ok := dblock.TxFrom(ctx); !ok || got != tx {
				t.Fatalf("TxFrom(WithTx(tx)) = %v, %v; want tx, true", got, ok)
			}
			err := l.Do(ctx, key, func(ctx context.Context, got *gorm.DB) error {
				if !sameTx(got, tx) {
					t.Error("fn did not get the caller's transaction")
				}
				return put(got, kv, name, 1)
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			// Do returned: nothing is committed, and the key is still held.
			if v := get(t, e.db, kv, name); v != -1 {
				t.Fatalf("%s = %d before the caller ended its transaction, want no row", name, v)
			}
			heldElsewhere(t, l, key)
			if commit {
				if err := tx.Commit().Error; err != nil {
					t.Fatal(err)
				}
			} else if err := tx.Rollback().Error; err != nil {
				t.Fatal(err)
			}
			want := map[bool]int64{true: 1, false: -1}[commit]
			if v := get(t, e.db, kv, name); v != want {
				t.Fatalf("%s = %d after the caller ended its transaction, want %d", name, v, want)
			}
			assertFree(t, l, key)
		})
	}
}

// TestDoJoinedErrorLeavesTxToOwner: a joined Do returns fn's error without
// rolling back the caller's transaction: the owner decides.
func TestDoJoinedErrorLeavesTxToOwner(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := put(tx, kv, "before", 1); err != nil {
		t.Fatal(err)
	}
	err := l.Do(dblock.WithTx(ctx, tx), key, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "inside", 1); err != nil {
			return err
		}
		return errBusiness
	})
	if !errors.Is(err, errBusiness) {
		t.Fatalf("Do = %v, want errBusiness", err)
	}
	heldElsewhere(t, l, key)
	if err := tx.Commit().Error; err != nil {
		t.Fatalf("the owner's Commit after fn's error: %v", err)
	}
	for _, k := range []string{"before", "inside"} {
		if v := get(t, e.db, kv, k); v != 1 {
			t.Errorf("%s = %d, want 1 (the owner committed)", k, v)
		}
	}
	assertFree(t, l, key)
}

// TestLockTxInTransaction: LockTx inside db.Transaction holds the key until
// the callback returns; the writes commit (or roll back) with it.
func TestLockTxInTransaction(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.User("u-7")

	err := e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := l.LockTx(ctx, tx, key); err != nil {
			return err
		}
		heldElsewhere(t, l, key)
		return put(tx, kv, "committed", 1)
	})
	if err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	if v := get(t, e.db, kv, "committed"); v != 1 {
		t.Fatalf("committed = %d, want 1", v)
	}
	assertFree(t, l, key)

	err = e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := l.LockTx(ctx, tx, key, dblock.NoWait()); err != nil {
			return err
		}
		if err := put(tx, kv, "rolledback", 1); err != nil {
			return err
		}
		return errBusiness
	})
	if !errors.Is(err, errBusiness) {
		t.Fatalf("Transaction = %v, want errBusiness", err)
	}
	if v := get(t, e.db, kv, "rolledback"); v != -1 {
		t.Fatalf("rolledback = %d, want no row", v)
	}
	assertFree(t, l, key)
}

// TestLockTxInBegin: LockTx inside db.Begin holds the key until the
// caller's Commit, which keeps the writes.
func TestLockTxInBegin(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Method("OrderService.Refund")

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, key); err != nil {
		t.Fatalf("LockTx: %v", err)
	}
	if err := put(tx, kv, "a", 3); err != nil {
		t.Fatal(err)
	}
	heldElsewhere(t, l, key)
	// A second LockTx of the same key in the same transaction is fine.
	if err := l.LockTx(ctx, tx, key, dblock.NoWait()); err != nil {
		t.Fatalf("second LockTx in the same transaction: %v", err)
	}
	if err := tx.Commit().Error; err != nil {
		t.Fatal(err)
	}
	if v := get(t, e.db, kv, "a"); v != 3 {
		t.Fatalf("a = %d, want 3", v)
	}
	assertFree(t, l, key)
}

// TestDBAndTxFrom: DB returns the transaction inside Do (writes through it
// commit or roll back with the lock) and the fallback outside; TxFrom says
// whether there is one.
func TestDBAndTxFrom(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	// Outside: the fallback, bound to ctx; no transaction.
	if tx, ok := dblock.TxFrom(ctx); ok || tx != nil {
		t.Fatalf("TxFrom outside Do = %v, %v; want nil, false", tx, ok)
	}
	out := dblock.DB(ctx, e.db)
	if out == nil || out.Statement.ConnPool != e.sqlDB {
		t.Fatal("DB outside Do is not the fallback's pool")
	}
	if out.Statement.Context != ctx {
		t.Error("DB outside Do is not bound to ctx")
	}
	if got := dblock.DB(ctx, nil); got != nil {
		t.Errorf("DB(ctx, nil) outside Do = %v, want nil", got)
	}
	if got := dblock.WithTx(ctx, nil); got != ctx {
		t.Error("WithTx(ctx, nil) did not return ctx unchanged")
	}

	// A repository that uses DB.
	save := func(ctx context.Context, k string) error { return put(dblock.DB(ctx, e.db), kv, k, 1) }

	for _, fail := range []bool{false, true} {
		k := map[bool]string{false: "ok", true: "failed"}[fail]
		err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			in, ok := dblock.TxFrom(ctx)
			if !ok || !sameTx(in, tx) {
				t.Errorf("TxFrom inside Do = %v, %v; want fn's tx", in, ok)
			}
			db := dblock.DB(ctx, e.db)
			if !sameTx(db, tx) {
				t.Error("DB inside Do is not fn's transaction")
			}
			if db.Statement.Context != ctx {
				t.Error("DB inside Do is not bound to ctx")
			}
			if err := save(ctx, k); err != nil {
				return err
			}
			if fail {
				return errBusiness
			}
			return nil
		})
		if fail != errors.Is(err, errBusiness) || (!fail && err != nil) {
			t.Fatalf("Do(fail=%v) = %v", fail, err)
		}
		want := map[bool]int64{false: 1, true: -1}[fail]
		if v := get(t, e.db, kv, k); v != want {
			t.Errorf("%s = %d after Do, want %d", k, v, want)
		}
	}

	// Lock.Context carries the lock's transaction too.
	lk, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	lctx := lk.Context(ctx)
	if in, ok := dblock.TxFrom(lctx); !ok || in != lk.Tx() {
		t.Errorf("TxFrom(Lock.Context) = %v, %v; want Lock.Tx()", in, ok)
	}
	if err := save(lctx, "lock"); err != nil {
		t.Fatal(err)
	}
	if err := lk.Commit(); err != nil {
		t.Fatal(err)
	}
	if v := get(t, e.db, kv, "lock"); v != 1 {
		t.Errorf("lock = %d, want 1", v)
	}
}
