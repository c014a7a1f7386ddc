package dblock_test

import (
	"errors"
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestReview24HierarchyRefusedPermitTakesSecond: under the hierarchy, a
// LockTx(Permits(2), NoWait) in a caller's transaction takes a permit
// first, then is refused on Global (a writer waits for it). joinHierarchy
// records the permit as held but not which permit row (setPermit runs
// only on success), so the next LockTx of the key in that transaction
// re-checks "a held permit" by taking any free permit: the transaction
// then holds both permits of the semaphore, and nobody else gets one.
// (The first call gets the second permit row because another transaction
// holds the first; that one then leaves.)
func TestReview24HierarchyRefusedPermitTakesSecond(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	k := dblock.Resource("r24:permit-refused")
	first, err := l.TryLock(ctx, k, dblock.Permits(2)) // the first permit row, and Global shared
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback()
	// A writer of Global queues behind first: a shared request of Global
	// with SKIP LOCKED now gets nothing.
	writer := make(chan *dblock.Lock, 1)
	go func() {
		g, err := l.Lock(ctx, dblock.Global())
		if err != nil {
			t.Errorf("Lock(Global): %v", err)
		}
		writer <- g
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err = l.LockTx(ctx, tx, k, dblock.Permits(2), dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(Permits(2), NoWait) while a writer waits for Global = %v, want ErrNotAcquired", err)
	}
	t.Logf("refused: %v", err)
	_ = first.Rollback()
	if g := <-writer; g != nil {
		_ = g.Rollback()
	}
	err = l.LockTx(ctx, tx, k, dblock.Permits(2), dblock.NoWait())
	t.Logf("LockTx again: %v", err)
	// One transaction, one permit: the other is free.
	p, err := l.TryLock(ctx, k, dblock.Permits(2))
	if err != nil {
		t.Fatalf("TryLock(Permits(2)) beside one transaction that asked for one permit (twice) = %v, want the other permit", err)
	}
	_ = p.Rollback()
}
