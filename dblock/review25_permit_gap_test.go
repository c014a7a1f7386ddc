package dblock_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestReview25PermitWaitBlocksNewSemaphores: a Lock of a semaphore whose
// permits are all held first reads them FOR UPDATE SKIP LOCKED: every row
// skipped, the read locks the gap after them, the end of the permit table
// when the semaphore is the newest. It then waits for a permit, gets one,
// and holds it: the gap lock stays with its transaction. While it holds
// the permit, a semaphore that has no rows yet cannot be created by
// anyone: its rows' INSERT waits for that gap and fails (after 50 s,
// innodb_lock_wait_timeout: the permit rows' INSERT has no 1 s bound).
func TestReview25PermitWaitBlocksNewSemaphores(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r25:sem-a"), dblock.Resource("r25:sem-b")
	other, err := l.Lock(ctx, a, dblock.Permits(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Rollback() })

	got := make(chan error, 1)
	var lk *dblock.Lock
	go func() {
		var err error
		lk, err = l.Lock(ctx, a, dblock.Permits(1))
		got <- err
	}()
	waitForLockWaits(t, e.sqlDB, schema.PermitTable(e.table), 1)
	_ = other.Rollback()
	if err := <-got; err != nil {
		t.Fatalf("Lock(a, Permits(1)) after the holder left = %v", err)
	}
	defer lk.Rollback()

	start := time.Now()
	// Bounded: the rows' INSERT waits the server's innodb_lock_wait_timeout
	// (50 s by default), not the 1 s the key row's INSERT is given.
	err = l.Do(ctxWithin(t, 3*time.Second), b, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(1))
	t.Logf("Do(b, Permits(1)), a new semaphore, while a's permit is held: %v after %v", err, time.Since(start))
	if err != nil {
		t.Fatalf("Do of a new semaphore while another's waiter holds its permit = %v, want nil", err)
	}
}
