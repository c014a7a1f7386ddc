package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
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

// TestReview23HierarchySwitchWindowOverlap: SetHierarchy changes the
// column's default (the setting Lockers read, and the flag of every row
// created from then on) before it updates the existing rows. In between,
// old rows say "off" and new rows say "on", and each Locker trusts the
// row it locks: a Locker that assumes off holds an old key's row with no
// container, while another that read the new default creates the Global
// row (flag 1) and holds Global exclusively, which under the hierarchy
// excludes every holder. The window is held open here by a permit holder,
// which the second ALTER (of the permit table) waits for; any holder that
// the update of the rows waits for opens it as well (rows created after
// its scan passed them are new rows).
func TestReview23HierarchySwitchWindowOverlap(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	r := dblock.Resource("r23:switch-r")
	pre := e.locker(t)
	defer pre.Close()
	// r's row exists before the switch (flag 0); Global's does not.
	if err := pre.Do(ctx, r, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	// A permit holder keeps the switch between its two ALTERs.
	p, err := pre.TryLock(ctx, dblock.Resource("r23:switch-p"), dblock.Permits(1))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Rollback()
	switched := make(chan error, 1)
	go func() {
		switched <- migrations.SetHierarchy(ctx, e.sqlDB, true, migrations.Table(e.table))
	}()
	waitingStatement(t, e.db, schema.PermitTable(e.table), "ALTER TABLE")

	off := e.locker(t) // assumes off, and r's row says off
	defer off.Close()
	holder, err := off.TryLock(ctx, r)
	if err != nil {
		t.Fatalf("TryLock(%s) during the switch: %v", r, err)
	}
	defer holder.Rollback()

	on := e.locker(t)
	defer on.Close()
	g, err := on.TryLock(ctx, dblock.Global())
	if err == nil {
		_ = g.Rollback()
		t.Errorf("Global taken exclusively (under the hierarchy) while %s is held (under the old setting): two holders overlap across the switch", r)
	} else {
		t.Logf("Global refused during the switch: %v", err)
	}
	_ = holder.Rollback()
	_ = p.Rollback()
	if err := <-switched; err != nil {
		t.Fatal(err)
	}
}
