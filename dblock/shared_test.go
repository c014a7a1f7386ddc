package dblock_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestSharedHoldersTogether: shared holders of a key hold it at once; an
// exclusive acquisition fails while any holds it, and a shared one fails
// while an exclusive holder has it.
func TestSharedHoldersTogether(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:together")
	var readers []*dblock.Lock
	for range 3 {
		r, err := l.TryLock(ctx, key, dblock.Shared())
		if err != nil {
			t.Fatalf("shared TryLock beside %d shared holders: %v", len(readers), err)
		}
		readers = append(readers, r)
	}
	if _, err := l.TryLock(ctx, key); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("exclusive TryLock beside shared holders = %v, want ErrNotAcquired", err)
	}
	for _, r := range readers {
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	w, err := l.TryLock(ctx, key)
	if err != nil {
		t.Fatalf("exclusive TryLock once the shared holders left: %v", err)
	}
	defer w.Rollback()
	if _, err := l.TryLock(ctx, key, dblock.Shared()); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("shared TryLock beside an exclusive holder = %v, want ErrNotAcquired", err)
	}
	err = l.Do(ctx, key, fnMustNotRun(t), dblock.Shared(), dblock.WaitTimeout(50*time.Millisecond))
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("shared Do beside an exclusive holder = %v, want ErrNotAcquired", err)
	}
}

// waitingStatement waits until the server runs, for at least 100 ms, a
// statement of another connection on table (named `table`) that contains
// marker (PROCESSLIST is live): a locking read of a held key that has run
// that long is queued for it. The table keeps other tests' statements
// (other processes of make test) from counting.
func waitingStatement(t *testing.T, db *gorm.DB, table, marker string) {
	t.Helper()
	waitFor(t, "a statement on "+table+" with "+marker+" waiting", func() bool {
		var n int
		err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND TIME_MS >= 100 AND INFO LIKE ? AND INFO LIKE ?",
			"%`"+table+"`%", "%"+marker+"%").Row().Scan(&n)
		return err == nil && n > 0
	})
}

// TestSharedWriterNotStarved: once an exclusive acquisition waits behind
// shared holders, a new shared request queues behind it (InnoDB grants a
// lock only when no earlier request it conflicts with is queued): TryLock
// fails, and a waiting shared request is granted after the writer.
func TestSharedWriterNotStarved(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:starve")
	first, err := l.TryLock(ctx, key, dblock.Shared())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback()

	var mu sync.Mutex
	var order []string
	record := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	writer := make(chan error, 1)
	go func() {
		writer <- l.Do(ctx, key, func(context.Context, *gorm.DB) error {
			record("writer")
			return nil
		})
	}()
	waitingStatement(t, e.db, e.table, "FOR UPDATE")

	if r, err := l.TryLock(ctx, key, dblock.Shared()); !errors.Is(err, dblock.ErrNotAcquired) {
		if err == nil {
			_ = r.Rollback()
		}
		t.Fatalf("shared TryLock while a writer waits = %v, want ErrNotAcquired (the writer would starve)", err)
	}
	reader := make(chan error, 1)
	go func() {
		reader <- l.Do(ctx, key, func(context.Context, *gorm.DB) error {
			record("reader")
			return nil
		}, dblock.Shared())
	}()
	waitingStatement(t, e.db, e.table, "LOCK IN SHARE MODE")
	// Both wait; the first shared holder leaves.
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-writer; err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := <-reader; err != nil {
		t.Fatalf("reader: %v", err)
	}
	t.Logf("grant order: %v", order)
	if len(order) != 2 || order[0] != "writer" {
		t.Fatalf("grant order %v: the shared request that came after the waiting writer was granted first", order)
	}
}

// TestSharedReentrancy: a shared acquisition of a key the transaction holds
// (in either mode) returns at once; an exclusive one of a key it holds
// shared is refused with ErrUpgrade, and the transaction keeps its key.
func TestSharedReentrancy(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:reenter")
	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		return l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Shared())
	})
	if err != nil {
		t.Fatalf("shared inside exclusive: %v", err)
	}
	err = l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Shared()); err != nil {
			return err
		}
		err := l.Do(ctx, key, fnMustNotRun(t))
		if !errors.Is(err, dblock.ErrUpgrade) {
			t.Errorf("exclusive inside shared = %v, want ErrUpgrade", err)
		}
		// Still held shared, by this transaction only.
		if err := heldByOther(l, key); err != nil {
			t.Error(err)
		}
		if err := tx.Exec("SELECT 1").Error; err != nil {
			t.Errorf("the transaction after the refused upgrade: %v", err)
		}
		return nil
	}, dblock.Shared())
	if err != nil {
		t.Fatal(err)
	}
	assertFree(t, l, key)
}

// TestSharedOptionsRefused: Shared does not combine with Fencing or
// MinInterval, is not a Locker default, and names only keys of the call.
func TestSharedOptionsRefused(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:opts")
	for name, opts := range map[string][]dblock.LockOption{
		"Fencing":     {dblock.Shared(), dblock.Fencing()},
		"MinInterval": {dblock.Shared(), dblock.MinInterval(time.Second)},
		"other key":   {dblock.Shared(dblock.Resource("shared:not-taken"))},
	} {
		if err := l.Do(ctx, key, fnMustNotRun(t), opts...); err == nil {
			t.Errorf("%s: Do succeeded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := dblock.New(e.db, dblock.Table(e.table), dblock.Defaults(dblock.Shared())); err == nil {
		t.Error("New with Defaults(Shared()) succeeded")
	}
	assertFree(t, l, key)
}

// TestSharedDoMultiModes: DoMulti takes the keys Shared names shared and
// the others exclusively.
func TestSharedDoMultiModes(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	read, write := dblock.Resource("shared:multi-read"), dblock.Resource("shared:multi-write")
	err := l.DoMulti(ctx, []dblock.Key{write, read}, func(ctx context.Context, tx *gorm.DB) error {
		// Another shared holder of read gets it; nobody gets write.
		done := make(chan error, 1)
		go func() {
			done <- l.Do(context.Background(), read, func(context.Context, *gorm.DB) error { return nil }, dblock.Shared(), dblock.NoWait())
		}()
		if err := <-done; err != nil {
			t.Errorf("another shared holder of %s: %v", read, err)
		}
		return heldByOther(l, write)
	}, dblock.Shared(read))
	if err != nil {
		t.Fatal(err)
	}
}

// TestSharedLockTxSnapshot: LockTx of a shared key in a transaction that
// read before it fails with ErrStaleSnapshot; two transactions of the
// caller's that take the key shared without reading first both get it
// (the check holds nothing the other waits for).
func TestSharedLockTxSnapshot(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:locktx")
	// Two at once.
	tx1 := e.db.WithContext(ctx).Begin()
	defer tx1.Rollback()
	tx2 := e.db.WithContext(ctx).Begin()
	defer tx2.Rollback()
	for i, tx := range []*gorm.DB{tx1, tx2} {
		if err := l.LockTx(ctx, tx, key, dblock.Shared(), dblock.WaitTimeout(5*time.Second)); err != nil {
			t.Fatalf("LockTx shared in transaction %d: %v", i+1, err)
		}
	}
	assertHeld(t, l, key)
	tx1.Rollback()
	tx2.Rollback()

	// Read first, then lock: refused (MariaDB with snapshot isolation).
	stale := e.db.WithContext(ctx).Begin()
	defer stale.Rollback()
	var n int
	if err := stale.Raw("SELECT COUNT(*) FROM `" + e.table + "`").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	err := l.LockTx(ctx, stale, key, dblock.Shared())
	if hasSnapshotIsolation(t, e.db) {
		if !errors.Is(err, dblock.ErrStaleSnapshot) {
			t.Fatalf("LockTx shared after a read = %v, want ErrStaleSnapshot", err)
		}
	} else if err != nil {
		t.Fatalf("LockTx shared after a read, no snapshot isolation: %v", err)
	}
	t.Logf("LockTx shared after a read: %v", err)
}

// hasSnapshotIsolation reports whether the server has innodb_snapshot_isolation
// (MariaDB 10.6.18, 10.11.8 and later), which the stale-snapshot check
// needs.
func hasSnapshotIsolation(t *testing.T, db *gorm.DB) bool {
	t.Helper()
	var n int
	if err := db.Raw("SELECT COUNT(*) FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'INNODB_SNAPSHOT_ISOLATION'").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}
