package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview24StaleSnapshotSkippedAfterRefusedMulti: a caller's
// transaction reads, then a DoMulti joins it and takes a and b; a is
// granted, b is held by another transaction (NoWait: refused). Since
// review 23, join records a as held the moment it is granted, before the
// stale-snapshot check that runs after the last key, which the refusal
// skips. A later LockTx of a in the same transaction then counts as
// reentrant: no check, nil, although the transaction read before the
// lock (without the refused call it gets ErrStaleSnapshot).
func TestReview24StaleSnapshotSkippedAfterRefusedMulti(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r24:stale-a"), dblock.Resource("r24:stale-b")
	other := holdKey(t, ctx, l, b)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if got := get(t, tx, kv, "x"); got != -1 { // a consistent read: the snapshot
		t.Fatalf("x = %d", got)
	}
	err := l.DoMulti(dblock.WithTx(ctx, tx), []dblock.Key{a, b}, fnMustNotRun(t), dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("DoMulti(a, b) with b held = %v, want ErrNotAcquired", err)
	}
	t.Logf("refused: %v", err)
	_ = other.Rollback()
	err = l.LockTx(ctx, tx, a)
	t.Logf("LockTx(a) after the refused call: %v", err)
	if !errors.Is(err, dblock.ErrStaleSnapshot) {
		t.Fatalf("LockTx(%s) in a transaction that read before taking it = %v, want ErrStaleSnapshot", a, err)
	}
}

// TestReview24SharedStaleSnapshotRetry: a caller's transaction that read
// first gets ErrStaleSnapshot from LockTx(Shared()), and the transaction
// stays open (the shared check does not make the server roll it back). The
// key was recorded as held when granted, before the check, so the same
// LockTx again returns nil: the second call skips the check that the
// first failed. Same for a permit.
func TestReview24SharedStaleSnapshotRetry(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	for _, c := range []struct {
		name string
		key  dblock.Key
		opt  dblock.LockOption
	}{
		{"Shared", dblock.Resource("r24:stale-shared"), dblock.Shared()},
		{"Permits", dblock.Resource("r24:stale-permit"), dblock.Permits(2)},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The key's counters exist: the check's read sees them.
			if err := l.Do(ctx, c.key, func(context.Context, *gorm.DB) error { return nil }, c.opt); err != nil {
				t.Fatal(err)
			}
			tx := e.db.WithContext(ctx).Begin()
			defer tx.Rollback()
			get(t, tx, kv, "x")
			err := l.LockTx(ctx, tx, c.key, c.opt)
			if !errors.Is(err, dblock.ErrStaleSnapshot) {
				t.Fatalf("LockTx after a read = %v, want ErrStaleSnapshot", err)
			}
			// The check's 1020 rolled the transaction back (as for an
			// exclusive key): the same call again must not succeed; it
			// says the transaction has ended.
			err = l.LockTx(ctx, tx, c.key, c.opt)
			t.Logf("the same LockTx again: %v", err)
			if !errors.Is(err, dblock.ErrStaleSnapshot) && !errors.Is(err, dblock.ErrNoTransaction) {
				t.Fatalf("LockTx again in the transaction whose snapshot was found stale = %v, want ErrStaleSnapshot or ErrNoTransaction", err)
			}
		})
	}
}
