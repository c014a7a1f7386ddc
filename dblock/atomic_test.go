package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestDoCommits: fn's writes through tx commit with the release.
func TestDoCommits(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "a", 1); err != nil {
			return err
		}
		// Not visible outside the transaction before the release.
		if v := get(t, e.db, kv, "a"); v != -1 {
			t.Errorf("write visible outside the transaction before commit: %d", v)
		}
		// The key is held meanwhile.
		assertHeld(t, l, key)
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if v := get(t, e.db, kv, "a"); v != 1 {
		t.Fatalf("after Do: a = %d, want 1", v)
	}
	assertFree(t, l, key)
}

// errBusiness is a caller's own error.
var errBusiness = errors.New("business rule violated")

// TestDoErrorRollsBack: fn's error rolls its writes back, releases the key
// and is returned unchanged.
func TestDoErrorRollsBack(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "a", 1); err != nil {
			return err
		}
		return errBusiness
	})
	if err != errBusiness { //nolint:errorlint // unchanged means the same value
		t.Errorf("Do = %v (%T), want errBusiness itself", err, err)
	}
	if !errors.Is(err, errBusiness) {
		t.Fatalf("Do = %v, want errBusiness", err)
	}
	if v := get(t, e.db, kv, "a"); v != -1 {
		t.Fatalf("after fn's error: a = %d, want no row (rolled back)", v)
	}
	assertFree(t, l, key)

	// A wrapped error keeps its chain.
	err = l.Do(ctx, key, func(context.Context, *gorm.DB) error {
		return errors.Join(errors.New("step 2"), errBusiness)
	})
	if !errors.Is(err, errBusiness) {
		t.Fatalf("Do = %v, want errBusiness in the chain", err)
	}
}

// TestDoPanicRollsBack: a panic in fn rolls back, releases the key, and is
// re-raised with its value.
func TestDoPanicRollsBack(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	type boom struct{ n int }
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		_ = l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			if err := put(tx, kv, "a", 1); err != nil {
				t.Error(err)
			}
			panic(boom{42})
		})
		t.Error("Do returned after fn panicked")
	}()
	if b, ok := recovered.(boom); !ok || b.n != 42 {
		t.Fatalf("recovered %#v, want the panic value boom{42}", recovered)
	}
	if v := get(t, e.db, kv, "a"); v != -1 {
		t.Fatalf("after the panic: a = %d, want no row (rolled back)", v)
	}
	// Released right away: TryLock succeeds.
	assertFree(t, l, key)
}

// TestDoContextCancelledInFn: when the context ends while fn runs, the
// transaction is rolled back by database/sql: Do reports ErrLockLost and the
// writes are not committed.
func TestDoContextCancelledInFn(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	key := dblock.Resource("order:1")

	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "a", 1); err != nil {
			return err
		}
		cancel()
		return nil
	})
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Fatalf("Do = %v, want ErrLockLost", err)
	}
	if v := get(t, e.db, kv, "a"); v != -1 {
		t.Fatalf("a = %d, want no row: the writes of a lost lock must not commit", v)
	}
	assertFreeSoon(t, l, key)
}

// TestLockCommit: Lock.Commit keeps the writes made through Tx and releases
// the key; Lost is open while held and closed after.
func TestLockCommit(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	k, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Lost():
		t.Fatal("Lost closed while the lock is held")
	default:
	}
	if err := put(k.Tx(), kv, "a", 7); err != nil {
		t.Fatal(err)
	}
	assertHeld(t, l, key)
	if err := k.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	select {
	case <-k.Lost():
	default:
		t.Error("Lost still open after Commit")
	}
	if v := get(t, e.db, kv, "a"); v != 7 {
		t.Fatalf("a = %d, want 7", v)
	}
	assertFree(t, l, key)
	// Rollback after Commit: nil, nothing changes.
	if err := k.Rollback(); err != nil {
		t.Errorf("Rollback after Commit = %v, want nil", err)
	}
	if v := get(t, e.db, kv, "a"); v != 7 {
		t.Fatalf("a = %d after Rollback-after-Commit, want 7", v)
	}
	// Commit again: the lock was released, not lost.
	if err := k.Commit(); !errors.Is(err, dblock.ErrNotHeld) || errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("second Commit = %v, want ErrNotHeld (not ErrLockLost)", err)
	}
}

// TestLockRollback: Lock.Rollback drops the writes and releases the key;
// it is idempotent; Commit after it reports ErrNotHeld.
func TestLockRollback(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	k, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := put(k.Tx(), kv, "a", 7); err != nil {
		t.Fatal(err)
	}
	if err := k.Rollback(); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := k.Rollback(); err != nil {
		t.Fatalf("second Rollback = %v, want nil", err)
	}
	if v := get(t, e.db, kv, "a"); v != -1 {
		t.Fatalf("a = %d, want no row", v)
	}
	assertFree(t, l, key)
	if err := k.Commit(); !errors.Is(err, dblock.ErrNotHeld) || errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Commit after Rollback = %v, want ErrNotHeld (not ErrLockLost)", err)
	}
	select {
	case <-k.Lost():
	default:
		t.Error("Lost still open after Rollback")
	}
	var nilLock *dblock.Lock
	if err := nilLock.Rollback(); err != nil {
		t.Errorf("Rollback of a nil *Lock = %v, want nil", err)
	}
	if err := nilLock.Commit(); err == nil {
		t.Error("Commit of a nil *Lock = nil, want an error")
	}
}

// TestLockContextCancelled: cancelling the lock's context ends its
// transaction: Lost is closed, the key is free, the writes are dropped;
// Rollback then returns nil and Commit ErrLockLost.
func TestLockContextCancelled(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	key := dblock.Resource("order:1")

	t.Run("Rollback", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		k, err := l.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := put(k.Tx(), kv, "a", 1); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-k.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("Lost not closed 5s after the lock's context was cancelled")
		}
		if err := k.Rollback(); err != nil {
			t.Fatalf("Rollback after cancel = %v, want nil", err)
		}
		assertFreeSoon(t, l, key)
		if v := get(t, e.db, kv, "a"); v != -1 {
			t.Fatalf("a = %d, want no row", v)
		}
	})
	t.Run("Commit", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		k, err := l.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := put(k.Tx(), kv, "b", 1); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := k.Commit(); !errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("Commit after cancel = %v, want ErrLockLost", err)
		}
		select {
		case <-k.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("Lost not closed after the lock's context was cancelled")
		}
		if err := k.Rollback(); err != nil {
			t.Fatalf("Rollback after a failed Commit = %v, want nil", err)
		}
		assertFreeSoon(t, l, key)
		if v := get(t, e.db, kv, "b"); v != -1 {
			t.Fatalf("b = %d, want no row", v)
		}
	})
}
