package dblock

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// TestCheckCountersBounded: the stale-snapshot checks' counters are at most
// checkSlots, however many connections the server has had and however
// many checks each transaction ran. With a counter per connection id, each
// new connection that took a key shared in a caller's transaction added a
// fence-table row that nothing ever deletes (connection ids grow while the
// server runs). Connections whose ids differ by a multiple of checkSlots
// follow different sequences (TestReview26CheckSlotExhaustedByOtherConnection
// met the first design, connection id modulo 4,096, there).
func TestCheckCountersBounded(t *testing.T) {
	const conns = 2 * checkSlots
	seen := make(map[string]bool)
	for conn := int64(1); conn <= conns; conn++ {
		for n := range 3 {
			seen[string(checkHash(conn, n))] = true
		}
	}
	t.Logf("%d connection ids x 3 check numbers: %d counters (at most %d)", conns, len(seen), checkSlots)
	if len(seen) > checkSlots {
		t.Errorf("%d connection ids x 3 check numbers name %d counters, want at most %d", conns, len(seen), checkSlots)
	}
	same := 0
	for n := range checkAttempts {
		if bytes.Equal(checkHash(7, n), checkHash(7+checkSlots, n)) {
			same++
		}
	}
	if same > 1 {
		t.Errorf("connections 7 and 7+checkSlots share %d of their first %d counters: ids that differ by checkSlots follow one sequence", same, checkAttempts)
	}
}

// TestCheckCounterSlotHeldElsewhere: a transaction on another connection
// holds the counter of a caller transaction's first check (here: holds it
// as such a transaction would, after its own check met the same counter).
// The caller's shared LockTx does not wait for it: its bump fails at once,
// the next counter is tried, and the lock is granted.
func TestCheckCounterSlotHeldElsewhere(t *testing.T) {
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	admin, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(db, Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	tx := db.WithContext(ctx).Begin()
	if tx.Error != nil {
		t.Fatal(tx.Error)
	}
	defer tx.Rollback()
	var conn int64
	if err := tx.Raw("SELECT CONNECTION_ID()").Row().Scan(&conn); err != nil {
		t.Fatal(err)
	}
	// Another transaction bumped and locked the counter of check 0, as
	// its own check would have had its sequence met this one's.
	other, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Rollback() }()
	fence := "`" + schema.FenceTable(table) + "`"
	if _, err := other.ExecContext(ctx, "INSERT INTO "+fence+" (key_hash, token) VALUES (?, 1) ON DUPLICATE KEY UPDATE token = token + 1", checkHash(conn, 0)); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	err = l.LockTx(ctx, tx, Resource("slot-held-elsewhere"), Shared())
	t.Logf("LockTx(Shared) with check 0's counter held by another transaction: %v after %v", err, time.Since(start))
	if err != nil {
		t.Fatalf("LockTx(Shared) = %v, want nil: the bump of a held counter must not wait, the next number is tried", err)
	}
	var checks int
	if err := admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+fence+" WHERE key_hash IN (?, ?)", checkHash(conn, 0), checkHash(conn, 1)).Scan(&checks); err != nil {
		t.Fatal(err)
	}
	// Check 0's row is other's uncommitted insert (invisible), check 1's
	// the caller's committed bump.
	if checks != 1 {
		t.Errorf("%d of the counters of checks 0 and 1 committed, want 1 (check 1, bumped by the caller's check)", checks)
	}
}

// TestCheckCountersMetByChance: transaction A holds the counters of 16
// shared checks; transaction B, on a connection whose first counter is
// one of A's (an id found by search, made B's with pseudo_thread_id, which
// CONNECTION_ID() returns), takes a free key shared. B's first bump meets
// A's lock and fails at once, its next counters are its own, and the lock
// is granted.
func TestCheckCountersMetByChance(t *testing.T) {
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(db, Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !l.srv.snapshotIsolation {
		t.Fatal("the test server has no innodb_snapshot_isolation: the stale-snapshot check cannot be tested")
	}
	txA := db.WithContext(ctx).Begin()
	defer txA.Rollback()
	var idA int64
	if err := txA.Raw("SELECT CONNECTION_ID()").Row().Scan(&idA); err != nil {
		t.Fatal(err)
	}
	const held = 16
	for i := range held {
		if err := l.LockTx(ctx, txA, Resource(fmt.Sprintf("met:a%d", i)), Shared()); err != nil {
			t.Fatalf("A: LockTx(Shared) #%d: %v", i, err)
		}
	}
	// A's checks were numbered 0 to 15 (one record of the transaction).
	aCounters := make(map[string]bool, held)
	for n := range held {
		aCounters[string(checkHash(idA, n))] = true
	}
	idB := int64(0)
	for id := idA + 1; id < idA+1<<24; id++ {
		if aCounters[string(checkHash(id, 0))] {
			idB = id
			break
		}
	}
	if idB == 0 {
		t.Fatal("no connection id near A's has its first counter among A's")
	}
	txB := db.WithContext(ctx).Begin()
	defer txB.Rollback()
	if err := txB.Exec("SET SESSION pseudo_thread_id = ?", idB).Error; err != nil {
		t.Fatal(err)
	}
	err = l.LockTx(ctx, txB, Resource("met:b"), Shared())
	t.Logf("B (connection id %d, A's %d; B's first counter is one A holds): %v", idB, idA, err)
	if err != nil {
		t.Fatalf("B's LockTx(Shared) of a free key = %v, want nil", err)
	}
}
