package dblock

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// TestCheckCountersBounded: the stale-snapshot checks' counters are at most
// checkSlots per check number, however many connections the server has
// had. With a counter per connection id, each new connection that took a
// key shared in a caller's transaction added a fence-table row that
// nothing ever deletes (connection ids grow while the server runs).
func TestCheckCountersBounded(t *testing.T) {
	const conns = 3 * checkSlots
	seen := make(map[string]bool)
	for conn := int64(1); conn <= conns; conn++ {
		for n := range 2 {
			seen[string(checkHash(conn, n))] = true
		}
	}
	t.Logf("%d connection ids x 2 check numbers: %d counters", conns, len(seen))
	if len(seen) != 2*checkSlots {
		t.Errorf("%d connection ids x 2 check numbers name %d counters, want %d (checkSlots per number)", conns, len(seen), 2*checkSlots)
	}
	if bytes.Equal(checkHash(7, 0), checkHash(7, 1)) || bytes.Equal(checkHash(7, 0), checkHash(8, 0)) {
		t.Error("two checks of one slot, or one check of two slots, name one counter")
	}
}

// TestCheckCounterSlotHeldElsewhere: a transaction on another connection
// of the same slot holds the counter of a caller transaction's first check
// (here: holds it as such a transaction would). The caller's shared
// LockTx does not wait for it: its bump fails at once, the next check
// number is tried, and the lock is granted.
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
	// Another connection of the slot: its transaction bumped and locked
	// the counter of check 0, as its own check would have.
	other, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Rollback() }()
	fence := "`" + schema.FenceTable(table) + "`"
	if _, err := other.ExecContext(ctx, "INSERT INTO "+fence+" (key_hash, token) VALUES (?, 1) ON DUPLICATE KEY UPDATE token = token + 1", checkHash(conn+checkSlots, 0)); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	err = l.LockTx(ctx, tx, Resource("slot-held-elsewhere"), Shared())
	t.Logf("LockTx(Shared) with check 0's counter held by a transaction of another connection of the slot: %v after %v", err, time.Since(start))
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
		t.Errorf("%d of the slot's counters 0 and 1 committed, want 1 (check 1, bumped by the caller's check)", checks)
	}
}
