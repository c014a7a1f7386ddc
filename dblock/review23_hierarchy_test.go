package dblock_test

import (
	"errors"
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestReview23HierarchyRefusedLockTxTakesNothing: under the hierarchy, a
// LockTx with NoWait of a composite key in a caller's transaction first
// takes the keys containing it (Global and its single-field keys) shared,
// in one locking read, then finds the composite key held and fails with
// ErrNotAcquired. The containers stay locked in the caller's transaction,
// unknown to the library: the caller was told it got nothing, yet nobody
// can take the resource (or Global) exclusively until its transaction
// ends, and a later exclusive LockTx of the resource in that transaction
// is not refused with ErrUpgrade (the library does not know the row is
// held shared). A refused call should take nothing (as
// TestSharedUpgradeInDoMultiTakesNothing says for ErrUpgrade).
func TestReview23HierarchyRefusedLockTxTakesNothing(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	r, u := dblock.Resource("r23:h-r"), dblock.User("r23:h-u")
	ru := dblock.Key{Resource: "r23:h-r", User: "r23:h-u"}
	// Another transaction holds the composite key (and its containers
	// shared). It also teaches l the setting (its own transaction).
	other := holdKey(t, ctx, l, ru)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, ru, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(NoWait) of a held composite key = %v, want ErrNotAcquired", err)
	}
	t.Logf("refused: %v", err)
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	// The caller's transaction got nothing: r, u and Global are free.
	for _, k := range []dblock.Key{r, u, dblock.Global()} {
		if err := freeForOther(l, k); err != nil {
			t.Errorf("after a refused LockTx, while its transaction is open: %v", err)
		}
	}
}

// TestReview23HierarchyFreshLockerLockTx: the hierarchy was switched on
// before the Locker was made, and nothing switches it afterwards; the
// Locker's first lock in a caller's transaction still fails with
// ErrHierarchyChanged, whose message says the setting "changed ... while
// this transaction took its lock", which is untrue: New does not read the
// setting, every Locker assumes it off, and the first locking read of each
// new process (WithTx, LockTx) is refused under a steady hierarchy. New
// should read the setting (it already reads the server's).
func TestReview23HierarchyFreshLockerLockTx(t *testing.T) {
	e := setup(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	l := e.locker(t) // made after the switch
	defer l.Close()
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, dblock.Resource("r23:fresh")); err != nil {
		t.Fatalf("the first LockTx of a Locker made after the switch, with no switch since = %v, want the lock", err)
	}
}
