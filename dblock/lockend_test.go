package dblock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestDefaultTransactionTimeout: gorm's DefaultTransactionTimeout bounds the
// transactions the Locker opens, as gorm's Begin does, and a lock released
// normally is unaffected by it (a regression: its cancel function once
// called itself).
func TestDefaultTransactionTimeout(t *testing.T) {
	e := setup(t)
	e.db.Config.DefaultTransactionTimeout = 300 * time.Millisecond
	l := e.locker(t)
	defer l.Close()
	key := dblock.Resource("a")
	if err := l.Do(context.Background(), key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatalf("Do: %v", err)
	}
	err := l.Do(context.Background(), key, func(ctx context.Context, tx *gorm.DB) error {
		<-ctx.Done() // the transaction's bound runs out while fn works
		return ctx.Err()
	})
	if !errors.Is(err, dblock.ErrLockLost) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do past DefaultTransactionTimeout = %v, want the lock lost to the deadline", err)
	}
}

// TestContextAfterReleaseCannotJoin: a context kept after its lock ended
// (Lock.Context after Commit, context.WithoutCancel of fn's context) must
// not let a Do "join" the ended transaction and run fn without the lock.
func TestContextAfterReleaseCannotJoin(t *testing.T) {
	e := setup(t)
	l := e.locker(t)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("d")

	k, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	kept := k.Context(context.Background())
	if err := k.Commit(); err != nil {
		t.Fatal(err)
	}
	var leaked context.Context
	if err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
		leaked = context.WithoutCancel(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	other, err := l.TryLock(ctx, key) // someone else holds the key now
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	for name, c := range map[string]context.Context{"Lock.Context after Commit": kept, "WithoutCancel(fn's ctx)": leaked} {
		ran := false
		err := l.Do(c, key, func(context.Context, *gorm.DB) error { ran = true; return nil })
		if ran || !errors.Is(err, dblock.ErrNoTransaction) || !errors.Is(err, dblock.ErrNotHeld) {
			t.Errorf("%s: Do while another holder has the key: fn ran %v, err %v; want ErrNoTransaction (its transaction was released) and fn not run", name, ran, err)
		}
	}
}

// TestJoinedRowDeletedFailsFast: a key row deleted outside `txlock gc`
// (which keeps the newest row) leaves a gap lock of the caller's own
// transaction where the row was, above every other row; re-creating it would
// wait for that transaction. LockTx fails at once with ErrNotAcquired and a
// clear message instead of waiting out six lock-wait timeouts.
func TestJoinedRowDeletedFailsFast(t *testing.T) {
	e := setup(t)
	l := e.locker(t)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("b")
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Exec("DELETE FROM `" + e.table + "`").Error; err != nil {
		t.Fatal(err)
	}
	// Let purge remove the delete-marked record: then the gap reaches the
	// supremum. Both outcomes below are right; this makes the second
	// likely.
	waitPurged(t, e.sqlDB, 10*time.Second)
	ctx = ctxT(t) // the wait above may have used much of the first one
	tx := e.db.Begin()
	defer tx.Rollback()
	start := time.Now()
	err := l.LockTx(ctx, tx, key)
	took := time.Since(start)
	switch {
	case err == nil:
		// The deleted row was not purged yet, or its gap did not cover the
		// new id: the row was created again and locked.
		t.Logf("LockTx re-created the row in %v", took.Round(time.Millisecond))
	case errors.Is(err, dblock.ErrNotAcquired) && took < opTimeout: // six lock-wait timeouts would be 300 s
		t.Logf("LockTx failed fast in %v: %v", took.Round(time.Millisecond), err)
	default:
		t.Fatalf("LockTx after the row was deleted: %v after %v; want success or a fast ErrNotAcquired", err, took)
	}
	if err := tx.Rollback().Error; err != nil {
		t.Fatal(err)
	}
	// After the rollback the key works again.
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatalf("Do after the rollback: %v", err)
	}
}

// waitPurged waits until InnoDB's purge has passed every transaction
// committed before the call: SHOW ENGINE INNODB STATUS says "Purge done
// for trx's n:o < N" with N at least the "Trx id counter" read first. Old
// read views of other sessions can hold purge back, so it gives up after
// d, and logs what happened either way.
func waitPurged(t *testing.T, db *sql.DB, d time.Duration) {
	t.Helper()
	counterRe := regexp.MustCompile(`Trx id counter (\d+)`)
	purgedRe := regexp.MustCompile(`Purge done for trx's n:o < (\d+)`)
	read := func(re *regexp.Regexp) (int64, error) {
		var typ, name, status string
		if err := db.QueryRow("SHOW ENGINE INNODB STATUS").Scan(&typ, &name, &status); err != nil {
			return 0, err
		}
		m := re.FindStringSubmatch(status)
		if m == nil {
			return 0, fmt.Errorf("no %q in SHOW ENGINE INNODB STATUS", re)
		}
		return strconv.ParseInt(m[1], 10, 64)
	}
	start := time.Now()
	target, err := read(counterRe)
	for err == nil {
		var done int64
		if done, err = read(purgedRe); err == nil && done >= target {
			t.Logf("purge passed trx n:o %d after %v", target, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > d {
			t.Logf("purge at trx n:o %d, not %d, after %v", done, target, d)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("cannot tell when purge is done: %v", err)
}
