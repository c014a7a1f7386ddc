package dblock_test

import (
	"context"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestReview23PermitUnderHierarchyInsideKeyLock: with the hierarchy on, a
// permit asked for inside a transaction that holds the key's lock is never
// taken: joinHierarchy's plan leaves out every key the transaction holds,
// and it asks the scope about the key's lock (the lock table's heldKey),
// not about its permit, so the permit's node is dropped and nothing is
// locked. The nested call runs as if it held one of the n permits while
// another transaction takes all n: n+1 holders of an n-permit semaphore.
// (Without the hierarchy the same nesting takes the permit: see
// TestPermitsReentrant.)
func TestReview23PermitUnderHierarchyInsideKeyLock(t *testing.T) {
	permitInsideKeyLock(t, true)
}

// TestReview23PermitNoHierarchyInsideKeyLock is the control of
// TestReview23PermitUnderHierarchyInsideKeyLock without the hierarchy: the
// permit is taken (it passes today).
func TestReview23PermitNoHierarchyInsideKeyLock(t *testing.T) {
	permitInsideKeyLock(t, false)
}

// permitInsideKeyLock takes a key's only permit inside a Do that holds the
// key's lock, with the hierarchy on or off, and checks that no other
// transaction can take the permit meanwhile.
func permitInsideKeyLock(t *testing.T, hierarchy bool) {
	e, l := setupLocker(t)
	if hierarchy {
		e.setHierarchy(t, true)
	}
	ctx := ctxT(t)
	key := dblock.Resource("r23:permit-in-lock")
	ran := false
	err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
		return l.Do(ctx, key, func(context.Context, *gorm.DB) error {
			ran = true
			// This transaction holds the key's only permit, as far as
			// the library said: no other transaction may take it.
			if err := tryHeld(l, key, dblock.Permits(1)); err != nil {
				t.Errorf("inside Do(Permits(1)) nested in the key's lock (hierarchy %v): %v (two holders of a 1-permit semaphore)", hierarchy, err)
			}
			return nil
		}, dblock.Permits(1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("the nested Do did not run")
	}
}

// TestReview23PermitLastWaitMissesFreePermit: a permit waiter whose
// remaining WaitTimeout is below the 500 ms recheck waits on the one
// permit its turn names for the rest of its wait; when that wait runs
// out it fails with ErrNotAcquired without looking at the other permits,
// although one of them was released, and stayed free, while it waited.
// The last stretch of every bounded permit wait (WaitTimeout, a context
// deadline, a lease) is like this: a semaphore with a free permit
// refuses a caller that was still within its wait.
func TestReview23PermitLastWaitMissesFreePermit(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("r23:permit-last-wait")
	permitTable := schema.PermitTable(e.table)
	inIDs := regexp.MustCompile(`WHERE id IN \(([0-9]+)\) AND key_hash`)
	const attempts = 5
	for attempt := 1; attempt <= attempts; attempt++ {
		// A takes the lower permit row, B the other (LIMIT 1 in id order).
		a, err := l.TryLock(ctx, key, dblock.Permits(2))
		if err != nil {
			t.Fatal(err)
		}
		b, err := l.TryLock(ctx, key, dblock.Permits(2))
		if err != nil {
			t.Fatal(err)
		}
		var low int64
		if err := e.db.Raw("SELECT MIN(id) FROM `" + permitTable + "`").Row().Scan(&low); err != nil {
			t.Fatal(err)
		}
		var ended atomic.Int64 // sequence number of W's end
		var seq atomic.Int64
		done := make(chan error, 1)
		go func() {
			err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil },
				dblock.Permits(2), dblock.WaitTimeout(480*time.Millisecond))
			ended.Store(seq.Add(1))
			done <- err
		}()
		// W's wait on one permit: the statement without SKIP LOCKED.
		var info string
		waitFor(t, "the permit waiter's wait on one permit", func() bool {
			err := e.db.Raw("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND INFO LIKE ? AND INFO NOT LIKE '%SKIP LOCKED%' LIMIT 1",
				"%"+permitTable+"%FOR UPDATE%").Row().Scan(&info)
			return err == nil || len(done) > 0
		})
		released := int64(0)
		if m := inIDs.FindStringSubmatch(info); m != nil {
			waited, _ := strconv.ParseInt(m[1], 10, 64)
			other := a // release the permit W does not wait on
			if waited == low {
				other = b
			}
			if err := other.Commit(); err != nil {
				t.Fatal(err)
			}
			released = seq.Add(1)
			t.Logf("attempt %d: W waits on permit %d (lower id %d); the other permit was released", attempt, waited, low)
		}
		err = <-done
		_ = a.Rollback()
		_ = b.Rollback()
		if released == 0 || ended.Load() < released {
			t.Logf("attempt %d: W ended before the release (%v): inconclusive, again", attempt, err)
			continue
		}
		if err != nil {
			t.Fatalf("a permit was released while W waited, and stayed free until W's WaitTimeout ran out; W = %v, want the free permit", err)
		}
		return
	}
	t.Fatalf("in %d attempts W never waited long enough to release a permit under it", attempts)
}

// TestReview23PermitReentrantLockTxTakesSecondPermit: a second LockTx of a
// permit the caller's transaction holds runs one locking read to tell
// that the transaction is still open; for a permit that read is "any free
// permit" (LIMIT 1 ... SKIP LOCKED), which returns the lowest permit row
// not locked by another transaction: a free one below the permit the
// transaction holds. The transaction then holds two of the key's n
// permits, unknown to the library, and the semaphore admits one holder
// fewer: here a 2-permit semaphore with one holder refuses a second one
// with "all 2 permits ... are held".
func TestReview23PermitReentrantLockTxTakesSecondPermit(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("r23:permit-reenter-tx")
	x, err := l.TryLock(ctx, key, dblock.Permits(2)) // the lower permit
	if err != nil {
		t.Fatal(err)
	}
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, key, dblock.Permits(2)); err != nil { // the other
		t.Fatal(err)
	}
	if err := x.Rollback(); err != nil {
		t.Fatal(err)
	}
	// The same permit again: held already.
	if err := l.LockTx(ctx, tx, key, dblock.Permits(2)); err != nil {
		t.Fatal(err)
	}
	// One transaction holds the semaphore: another gets a permit.
	y, err := l.TryLock(ctx, key, dblock.Permits(2))
	if err != nil {
		t.Fatalf("a 2-permit semaphore held by one transaction refuses a second: %v", err)
	}
	_ = y.Rollback()
}
