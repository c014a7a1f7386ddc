package dblock_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestReview26CheckSlotExhaustedByOtherConnection: the shared stale-snapshot
// check's counters are keyed by the connection id modulo 4,096, so two
// connections whose ids differ by a multiple of 4,096 share one set of
// counters. A caller's transaction A that took 16 keys shared in separate
// LockTx calls (a report that walks 16 accounts, say) holds the counters
// of checks 0 to 15 of its slot until it ends. Any caller's transaction B
// on a connection of the same slot then finds every counter it may try
// (checkAttempts = 16) held, and its shared LockTx fails with a bare 1205
// ("bumping the transaction's check counter") although the key is free:
// A's unrelated work on another connection makes B's locks fail. With one
// counter set per connection id this could not happen. On a server with
// connection churn ids that collide modulo 4,096 are ordinary: 200 live
// connections hold about 5 colliding pairs.
//
// The collision is made with pseudo_thread_id, which CONNECTION_ID()
// returns (the library reads the id with CONNECTION_ID()).
//
// Expected: B's LockTx(Shared) of a free key succeeds (the docs promise
// "the bump does not wait, and the next check number is tried"), whatever
// another connection's transaction holds.
//
// Fixed: each connection's checks now follow a pseudo-random sequence of
// counters of its own (checkHash), so B meets A's counters only by chance,
// one counter at a time (TestCheckCountersMetByChance).
func TestReview26CheckSlotExhaustedByOtherConnection(t *testing.T) {
	e, l := setupLocker(t)
	if !hasSnapshotIsolation(t, e.db) {
		t.Fatal("the test server has no innodb_snapshot_isolation: the stale-snapshot check cannot be tested")
	}
	ctx := ctxT(t)

	txA := e.db.WithContext(ctx).Begin()
	if txA.Error != nil {
		t.Fatal(txA.Error)
	}
	defer txA.Rollback()
	idA := connectionID(t, txA)
	for i := range 16 {
		if err := l.LockTx(ctx, txA, dblock.Resource(fmt.Sprintf("r26:slot-a%d", i)), dblock.Shared()); err != nil {
			t.Fatalf("A: LockTx(Shared) #%d: %v", i, err)
		}
	}

	txB := e.db.WithContext(ctx).Begin()
	if txB.Error != nil {
		t.Fatal(txB.Error)
	}
	defer txB.Rollback()
	if connectionID(t, txB) == idA {
		t.Fatal("A and B run on one connection")
	}
	// B's connection id, as the server reports it, is in A's slot.
	if err := txB.Exec("SET SESSION pseudo_thread_id = ?", idA+4096).Error; err != nil {
		t.Fatal(err)
	}
	if got := connectionID(t, txB); got != idA+4096 {
		t.Fatalf("B's CONNECTION_ID() = %d, want %d", got, idA+4096)
	}

	start := time.Now()
	err := l.LockTx(ctx, txB, dblock.Resource("r26:slot-b"), dblock.Shared())
	t.Logf("B (connection id %d, A's is %d): LockTx(Shared) of a free key while A holds 16 shared keys: %v after %v", idA+4096, idA, err, time.Since(start))
	if err != nil {
		t.Errorf("LockTx(Shared) of a free key = %v, want nil: another connection's transaction must not make it fail", err)
	}
}

// TestReview26GuardStaleSnapshotSharedSlot (a passing guard): sharing a
// connection slot (the first design's: ids that differ by a multiple of
// 4,096) does not weaken the shared stale-snapshot check. While
// transaction A holds the counters of its first checks (1, then 3 shared
// keys), a transaction B on a connection of A's slot that read before its
// shared lock gets ErrStaleSnapshot, and a transaction C of the same slot
// that read nothing is granted its shared lock.
func TestReview26GuardStaleSnapshotSharedSlot(t *testing.T) {
	e, l := setupLocker(t)
	if !hasSnapshotIsolation(t, e.db) {
		t.Fatal("the test server has no innodb_snapshot_isolation: the stale-snapshot check cannot be tested")
	}
	ctx := ctxT(t)
	for _, held := range []int{1, 3} {
		txA := e.db.WithContext(ctx).Begin()
		defer txA.Rollback()
		idA := connectionID(t, txA)
		for i := range held {
			if err := l.LockTx(ctx, txA, dblock.Resource(fmt.Sprintf("r26:stale-a%d-%d", held, i)), dblock.Shared()); err != nil {
				t.Fatalf("A: LockTx(Shared) #%d: %v", i, err)
			}
		}
		txB := e.db.WithContext(ctx).Begin()
		defer txB.Rollback()
		if err := txB.Exec("SET SESSION pseudo_thread_id = ?", idA+4096).Error; err != nil {
			t.Fatal(err)
		}
		var n int
		if err := txB.Raw("SELECT COUNT(*) FROM `" + e.table + "`").Row().Scan(&n); err != nil {
			t.Fatal(err)
		}
		err := l.LockTx(ctx, txB, dblock.Resource(fmt.Sprintf("r26:stale-b%d", held)), dblock.Shared())
		t.Logf("A holds %d check counters; B of its slot read first: %v", held, err)
		if !errors.Is(err, dblock.ErrStaleSnapshot) {
			t.Errorf("B (read before its shared lock, A holds %d counters of the slot) = %v, want ErrStaleSnapshot", held, err)
		}
		txC := e.db.WithContext(ctx).Begin()
		defer txC.Rollback()
		if err := txC.Exec("SET SESSION pseudo_thread_id = ?", idA+2*4096).Error; err != nil {
			t.Fatal(err)
		}
		if err := l.LockTx(ctx, txC, dblock.Resource(fmt.Sprintf("r26:stale-c%d", held)), dblock.Shared()); err != nil {
			t.Errorf("C (read nothing, A holds %d counters of the slot) = %v, want nil", held, err)
		}
		_ = txA.Rollback()
		_ = txB.Rollback()
		_ = txC.Rollback()
	}
}
