package dblock_test

import (
	"errors"
	"testing"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// TestStaleRowIDAfterTruncate (issue 14 item 6): a warm Locker caches the
// row ids of keys A and B; the lock table is truncated (a restore, an
// operator's cleanup) and another process creates B first, then A, so that
// the ids swap. While the other process holds A, the warm Locker's
// TryLock(A) must fail with ErrNotAcquired: locking by the cached id alone
// would lock B's row and grant A a second time.
func TestStaleRowIDAfterTruncate(t *testing.T) {
	e := setup(t)
	p1, p2 := e.locker(t), e.locker(t)
	defer p1.Close()
	defer p2.Close()
	a, b := dblock.Resource("A"), dblock.Resource("B")
	assertFree(t, p1, a)
	assertFree(t, p1, b)
	idA, idB := rowIDOf(t, e.db, e.table, "A"), rowIDOf(t, e.db, e.table, "B")
	if err := e.db.Exec("TRUNCATE TABLE `" + e.table + "`").Error; err != nil {
		t.Fatal(err)
	}
	assertFree(t, p2, b)
	holdKey(t, ctxT(t), p2, a)
	t.Logf("ids before TRUNCATE: A=%d B=%d; after: A=%d B=%d",
		idA, idB, rowIDOf(t, e.db, e.table, "A"), rowIDOf(t, e.db, e.table, "B"))
	k, err := p1.TryLock(ctxT(t), a)
	if err == nil {
		_ = k.Rollback()
		t.Fatal("the warm Locker's TryLock(A) succeeded while another Locker holds A: it locked the row its stale cache named")
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("the warm Locker's TryLock(A) = %v, want ErrNotAcquired", err)
	}
}

// TestRowCacheForgottenAfterTableRecreated (issue 14 item 6, "Also"):
// after the lock table is dropped (ErrTableMissing meanwhile) and created
// again, a warm Locker's first acquisition works and holds the key's real
// row: another Locker cannot take the key while it holds it.
func TestRowCacheForgottenAfterTableRecreated(t *testing.T) {
	e := setup(t)
	p1, p2 := e.locker(t), e.locker(t)
	defer p1.Close()
	defer p2.Close()
	ctx := ctxT(t)
	a, b := dblock.Resource("A"), dblock.Resource("B")
	assertFree(t, p1, a)
	assertFree(t, p1, b)
	if _, err := migrations.Down(ctx, e.sqlDB, migrations.Table(e.table)); err != nil {
		t.Fatal(err)
	}
	_, err := p1.TryLock(ctx, a)
	if !errors.Is(err, dblock.ErrTableMissing) {
		t.Errorf("TryLock with the table dropped = %v, want ErrTableMissing", err)
	}
	if _, err := migrations.Up(ctx, e.sqlDB, migrations.Table(e.table)); err != nil {
		t.Fatal(err)
	}
	assertFree(t, p2, b) // B takes the id A had
	k, err := p1.TryLock(ctx, a)
	if err != nil {
		t.Fatalf("the warm Locker's first TryLock(A) after the table was created again: %v", err)
	}
	defer k.Rollback()
	if err := heldByOther(p2, a); err != nil {
		t.Errorf("while the warm Locker holds A: %v", err)
	}
	if err := freeForOther(p2, b); err != nil {
		t.Errorf("while the warm Locker holds A: %v", err)
	}
	if err := k.Commit(); err != nil {
		t.Fatal(err)
	}
}
