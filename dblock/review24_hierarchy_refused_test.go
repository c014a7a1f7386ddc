package dblock_test

import (
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestReview24HierarchyRefusedKeyRetakenWithoutContainers: under the
// hierarchy, a LockTx with NoWait in a caller's transaction takes its own
// key first and is then refused on Global, which another transaction
// holds exclusively. The fix of review 23 records the key as held (the
// transaction keeps its row). A second LockTx of the key in the same
// transaction then finds it "held" (reentrancy) and returns nil without
// taking the containers: the caller holds the key while Global is held
// exclusively by someone else, which the hierarchy promises never
// happens. The retry must wait for Global (here: run out of WaitTimeout).
func TestReview24HierarchyRefusedKeyRetakenWithoutContainers(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	k := dblock.Resource("r24:refused-k")
	g := holdKey(t, ctx, l, dblock.Global())
	defer g.Rollback()

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, k, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(NoWait) while Global is held exclusively = %v, want ErrNotAcquired", err)
	}
	t.Logf("refused: %v", err)
	err = l.LockTx(ctx, tx, k, dblock.WaitTimeout(200*time.Millisecond))
	if err == nil {
		t.Fatalf("LockTx(%s) again in the same transaction returned nil while Global is held exclusively by another transaction: "+
			"the key counts as held, so its containers were never taken", k)
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(%s) again = %v, want ErrNotAcquired (Global is held)", k, err)
	}
}

// TestReview24HierarchyGroupReadPartlyGranted: under the hierarchy, the
// containers of a composite key {r, u} are taken in one locking read, in
// id order (Global, r, u). With u held exclusively by another transaction,
// the read locks Global and r shared, then waits on u until WaitTimeout
// (or, with NoWait, skips u). InnoDB keeps the rows the failed statement
// locked, but lockPlan counts the whole group as not granted: the error
// does not list them and the transaction's record lacks Global and r, so
// a later exclusive LockTx of r in the same transaction is not refused as
// an upgrade (docs/MODES.md: "the transaction's record has them, so that
// a later exclusive acquisition of one is refused as an upgrade").
func TestReview24HierarchyGroupReadPartlyGranted(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	for _, c := range []struct {
		name string
		opt  dblock.LockOption
	}{{"WaitTimeout", dblock.WaitTimeout(300 * time.Millisecond)}, {"NoWait", dblock.NoWait()}} {
		t.Run(c.name, func(t *testing.T) {
			r, u := dblock.Resource("r24:group-r-"+c.name), dblock.User("r24:group-u-"+c.name)
			ru := dblock.Key{Resource: r.Resource, User: u.User}
			// Rows in id order: Global, r, u (u last, so the read waits
			// after locking the others).
			for _, k := range []dblock.Key{dblock.Global(), r, u} {
				assertFree(t, l, k)
			}
			other := holdKey(t, ctx, l, u)

			tx := e.db.WithContext(ctx).Begin()
			defer tx.Rollback()
			err := l.LockTx(ctx, tx, ru, c.opt)
			if !errors.Is(err, dblock.ErrNotAcquired) {
				t.Fatalf("LockTx(%s) with %s held = %v, want ErrNotAcquired", ru, u, err)
			}
			t.Logf("refused: %v", err)
			_ = other.Rollback()
			// The caller's transaction holds r shared: nobody can take it
			// exclusively.
			if err := heldByOther(l, r); err != nil {
				t.Fatalf("after the refused call: %v (the read did not keep r)", err)
			}
			err = l.LockTx(ctx, tx, r, dblock.NoWait())
			t.Logf("exclusive LockTx(%s) in the same transaction: %v", r, err)
			if !errors.Is(err, dblock.ErrUpgrade) {
				t.Fatalf("exclusive LockTx of %s, which the transaction holds shared since the refused call = %v, want ErrUpgrade", r, err)
			}
		})
	}
}
