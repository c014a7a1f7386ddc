package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview25NoWaitRefusalBlocksNewKeys: a caller's transaction tries a
// key held by another transaction without waiting (LockTx with NoWait) and
// is refused; it goes on, as a refused caller may. The refused read was
// FOR UPDATE SKIP LOCKED on the key's id, which under REPEATABLE READ
// leaves a gap lock after the skipped row: for the newest key, the end of
// the table. Until the caller's transaction ended, no new key could be
// created in the table by anyone (the row's INSERT failed with 1205, and
// Do of any new key after ~6 s). The read now waits zero seconds instead
// (innodb_lock_wait_timeout = 0): a held row is answered with 1205, which
// rolls back the statement only and leaves no lock.
func TestReview25NoWaitRefusalBlocksNewKeys(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	held := dblock.Resource("r25:nowait-held")
	other := holdKey(t, ctx, l, held)
	assertNewest(t, e, held)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, held, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(held, NoWait) = %v, want ErrNotAcquired", err)
	}
	_ = other.Rollback()

	// Another process takes a key that has no row yet.
	start := time.Now()
	err = l.Do(ctx, dblock.Resource("r25:nowait-new"), func(context.Context, *gorm.DB) error { return nil })
	t.Logf("Do(new key) while the refused caller's transaction is open: %v after %v", err, time.Since(start))
	if err != nil {
		t.Fatalf("Do of a new key while a caller's transaction that was refused with NoWait stays open = %v, want nil", err)
	}
}

// TestNoWaitRefusalLeavesNoGapLock: every way a caller's transaction can be
// refused without waiting on the table's newest row (an exclusive key, a
// shared key, a DoMulti, a container under the hierarchy) leaves no lock
// that keeps another process from creating a new key, and the refused
// transaction goes on: its writes before and after the refusal commit.
func TestNoWaitRefusalLeavesNoGapLock(t *testing.T) {
	for _, c := range []struct {
		name   string
		hier   bool
		held   dblock.Key   // held by another transaction, the table's newest row
		before []dblock.Key // rows created before it
		refuse func(ctx context.Context, l *dblock.Locker, tx *gorm.DB) error
	}{
		{name: "LockTx", held: dblock.Resource("gap:x"),
			refuse: func(ctx context.Context, l *dblock.Locker, tx *gorm.DB) error {
				return l.LockTx(ctx, tx, dblock.Resource("gap:x"), dblock.NoWait())
			}},
		{name: "Shared", held: dblock.Resource("gap:s"),
			refuse: func(ctx context.Context, l *dblock.Locker, tx *gorm.DB) error {
				return l.LockTx(ctx, tx, dblock.Resource("gap:s"), dblock.Shared(), dblock.NoWait())
			}},
		{name: "DoMulti", held: dblock.Resource("gap:m2"), before: []dblock.Key{dblock.Resource("gap:m1")},
			refuse: func(ctx context.Context, l *dblock.Locker, tx *gorm.DB) error {
				keys := []dblock.Key{dblock.Resource("gap:m1"), dblock.Resource("gap:m2")}
				return l.DoMulti(dblock.WithTx(ctx, tx), keys, func(context.Context, *gorm.DB) error {
					return errors.New("fn ran without the lock")
				}, dblock.NoWait())
			}},
		{name: "HierarchyContainer", hier: true, held: dblock.User("gap:u"),
			before: []dblock.Key{{Resource: "gap:r", User: "gap:u"}},
			refuse: func(ctx context.Context, l *dblock.Locker, tx *gorm.DB) error {
				return l.LockTx(ctx, tx, dblock.Key{Resource: "gap:r", User: "gap:u"}, dblock.NoWait())
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, l := setupLocker(t)
			if c.hier {
				e.setHierarchy(t, true)
			}
			ctx := ctxT(t)
			kv := e.kvTable(t)
			for _, k := range append(c.before, c.held) {
				if err := l.Do(ctx, k, func(context.Context, *gorm.DB) error { return nil }); err != nil {
					t.Fatal(err)
				}
			}
			// The held key's row last: deleted, and created again by the
			// holder's acquisition (a collected row is, too).
			if err := e.db.Exec("DELETE FROM `"+e.table+"` WHERE id = ?", keyRowIDs(t, e)[c.held]).Error; err != nil {
				t.Fatal(err)
			}
			other := holdKey(t, ctx, l, c.held)
			assertNewest(t, e, c.held)

			tx := e.db.WithContext(ctx).Begin()
			defer tx.Rollback()
			if err := put(tx, kv, "before", 1); err != nil {
				t.Fatal(err)
			}
			err := c.refuse(ctx, l, tx)
			t.Logf("refused: %v", err)
			if !errors.Is(err, dblock.ErrNotAcquired) {
				t.Fatalf("refusal = %v, want ErrNotAcquired", err)
			}
			_ = other.Rollback()
			start := time.Now()
			err = l.Do(ctx, dblock.Resource("gap:new-"+c.name), func(context.Context, *gorm.DB) error { return nil })
			t.Logf("Do(new key) while the refused transaction is open: %v after %v", err, time.Since(start))
			if err != nil {
				t.Fatalf("Do of a new key while the refused transaction is open = %v, want nil", err)
			}
			if err := put(tx, kv, "after", 1); err != nil {
				t.Fatalf("a write after the refusal: %v", err)
			}
			if err := tx.Commit().Error; err != nil {
				t.Fatalf("Commit after the refusal: %v", err)
			}
			if b, a := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); b != 1 || a != 1 {
				t.Errorf("writes before=%d after=%d, want both committed", b, a)
			}
		})
	}
}

// assertNewest fails t unless key's row is the newest of the table: the
// one after which SKIP LOCKED's gap lock reaches the table's end.
func assertNewest(t *testing.T, e env, key dblock.Key) {
	t.Helper()
	ids := keyRowIDs(t, e)
	for k, id := range ids {
		if id > ids[key] {
			t.Fatalf("%s (row %d) is newer than %s (row %d): the test needs the held key's row last", k, id, key, ids[key])
		}
	}
}
