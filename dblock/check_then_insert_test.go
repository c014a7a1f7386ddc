package dblock_test

// Check-then-insert: a transaction that decided from a read made before
// its lock. innodb_snapshot_isolation only makes updates of rows read
// fail (1020); an INSERT decided from a stale read goes through. Joining a
// transaction that already has a read view must fail instead
// (ErrStaleSnapshot), and Retry runs such work again.

import (
	"context"
	"errors"
	"sync"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// refundsTable creates the business table of the refund example: one row
// per refund of an order.
func (e env) refundsTable(t *testing.T) string {
	t.Helper()
	return e.businessTable(t, "refunds", "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL")
}

// refundsOf counts the refunds of order through db: a consistent read.
func refundsOf(db *gorm.DB, table string, order int) (int64, error) {
	var n int64
	err := db.Raw("SELECT COUNT(*) FROM `"+table+"` WHERE order_id = ?", order).Row().Scan(&n)
	return n, err
}

// TestLockTxAfterReadIsStale (issue 14 item 22): LockTx in a caller's
// transaction that has already made a consistent read returns
// ErrStaleSnapshot, and says that the transaction was rolled back.
func TestLockTxAfterReadIsStale(t *testing.T) {
	e, l := setupLocker(t)
	refunds := e.refundsTable(t)
	ctx := ctxT(t)
	tx := e.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		t.Fatal(tx.Error)
	}
	defer tx.Rollback()
	if _, err := refundsOf(tx, refunds, 42); err != nil {
		t.Fatal(err)
	}
	err := l.LockTx(ctx, tx, dblock.Resource("order:42"))
	t.Logf("LockTx after a read: %v", err)
	if !errors.Is(err, dblock.ErrStaleSnapshot) {
		t.Fatalf("LockTx after a consistent read = %v, want ErrStaleSnapshot", err)
	}
	mustContain(t, err, "rolled back")
}

// TestCheckThenInsertRefundRace (issue 14 item 22): the refund race of the
// README, written as check-then-insert: two transactions each count the
// order's refunds (both see none), then take the order's lock with LockTx,
// then insert a refund if they saw none. The second to get the lock must
// not insert from its stale count: at most one refund row.
func TestCheckThenInsertRefundRace(t *testing.T) {
	e, l := setupLocker(t)
	refunds := e.refundsTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:42")
	var read sync.WaitGroup
	read.Add(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				n, err := refundsOf(tx, refunds, 42)
				read.Done()
				if err != nil {
					return err
				}
				read.Wait() // both have read before either locks
				if err := l.LockTx(ctx, tx, key); err != nil {
					return err
				}
				if n > 0 {
					return nil // refunded already
				}
				return tx.Exec("INSERT INTO `" + refunds + "` (order_id) VALUES (42)").Error
			})
		}()
	}
	wg.Wait()
	n, err := refundsOf(e.db, refunds, 42)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("refund transactions: %v, %v; refunds written: %d", errs[0], errs[1], n)
	for i, err := range errs {
		if err != nil && !errors.Is(err, dblock.ErrStaleSnapshot) {
			t.Errorf("transaction %d: %v, want nil or ErrStaleSnapshot", i, err)
		}
	}
	if n > 1 {
		t.Errorf("%d refunds of order 42 written from stale counts, want at most 1", n)
	}
}

// previousHolderSetup gives a test a Locker, a business table with v = 0,
// and a holder of key "b" that will change v.
func previousHolderSetup(t *testing.T) (env, *dblock.Locker, string, *dblock.Lock) {
	t.Helper()
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "v", 0); err != nil {
		t.Fatal(err)
	}
	return e, l, kv, holdKey(t, ctxT(t), l, dblock.Resource("b"))
}

// TestLockTxBeforeReadsSeesPreviousHolder (issue 14 item 22): a caller's
// transaction that has read nothing takes two locks with LockTx (the
// second waits for a holder, which commits a change meanwhile): both
// succeed without NoPriorReads, and its reads after the locks see the
// previous holder's commit.
func TestLockTxBeforeReadsSeesPreviousHolder(t *testing.T) {
	e, l, kv, holder := previousHolderSetup(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("a"), dblock.Resource("b") // b: the holder's key
	var seen int64 = -1
	done := make(chan error, 1)
	go func() {
		done <- e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := l.LockTx(ctx, tx, a); err != nil {
				return err
			}
			if err := l.LockTx(ctx, tx, b); err != nil {
				return err
			}
			return tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'v'").Row().Scan(&seen)
		})
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1) // LockTx(b) waits
	if err := put(holder.Tx(), kv, "v", 10); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	t.Logf("LockTx(a), LockTx(b), then read: %v; read %d", err, seen)
	if err != nil {
		t.Fatalf("a transaction that read nothing before its locks: %v", err)
	}
	if seen != 10 {
		t.Errorf("read %d after the locks, want the previous holder's 10", seen)
	}
}

// TestNestedDoAfterReadIsStale (issue 14 item 22): inside Do, after fn has
// read, a nested Do of a new key returns ErrStaleSnapshot (fn's snapshot
// predates that lock); with NoPriorReads the check is skipped.
func TestNestedDoAfterReadIsStale(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	noop := func(context.Context, *gorm.DB) error { return nil }
	for _, c := range []struct {
		name string
		opts []dblock.LockOption
		want error
	}{
		{"without options", nil, dblock.ErrStaleSnapshot},
		{"NoPriorReads", []dblock.LockOption{dblock.NoPriorReads()}, nil},
	} {
		var nested error
		err := l.Do(ctx, dblock.Resource("a"), func(ctx context.Context, tx *gorm.DB) error {
			if v := get(t, tx, kv, "v"); v != -1 {
				t.Fatalf("read %d, want no row", v)
			}
			nested = l.Do(ctx, dblock.Resource("b-"+c.name), noop, c.opts...)
			return nil
		})
		t.Logf("%s: nested Do after a read = %v; outer Do = %v", c.name, nested, err)
		if c.want == nil && nested != nil || c.want != nil && !errors.Is(nested, c.want) {
			t.Errorf("%s: nested Do of a new key after fn read = %v, want %v", c.name, nested, c.want)
		}
	}
}

// TestRetryRerunsOnStaleSnapshot (issue 14, Retry): Retry runs fn again
// when it failed with ErrStaleSnapshot, as for ErrDeadlock. The first run
// reads v, then takes a second key whose holder changes v meanwhile, then
// writes from its stale read (ErrStaleSnapshot, at the nested Do or at the
// write); the second run takes both keys before reading and succeeds.
func TestRetryRerunsOnStaleSnapshot(t *testing.T) {
	e, l, kv, holder := previousHolderSetup(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("a"), dblock.Resource("b") // b: the holder's key
	read := make(chan struct{})
	runs := 0
	done := make(chan error, 1)
	go func() {
		done <- l.Do(ctx, a, func(ctx context.Context, tx *gorm.DB) error {
			runs++
			var v int64
			if runs > 1 {
				if err := l.Do(ctx, b, func(context.Context, *gorm.DB) error { return nil }); err != nil {
					return err
				}
			}
			if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'v'").Row().Scan(&v); err != nil {
				return err
			}
			if runs == 1 {
				close(read)
				if err := l.Do(ctx, b, func(context.Context, *gorm.DB) error { return nil }); err != nil {
					return err
				}
			}
			return tx.Exec("UPDATE `"+kv+"` SET v = ? WHERE k = 'v'", v+1).Error
		}, dblock.Retry(3))
	}()
	<-read
	if err := put(holder.Tx(), kv, "v", 10); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	v := get(t, e.db, kv, "v")
	t.Logf("Do with Retry: %v after %d run(s); v = %d", err, runs, v)
	if err != nil || runs != 2 || v != 11 {
		t.Errorf("Do with Retry = %v after %d run(s), v = %d; want nil after 2 runs and v = 11 (the stale first run retried)", err, runs, v)
	}
}
