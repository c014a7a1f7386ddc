package dblock_test

// Helpers of the election tests: the election's server named lock, who
// holds it, and who waits for it.

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"testing"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

// electionLock returns the named lock of key's election on e's table,
// computed here from the documented formula: "txlock:" and the hex of
// SHA-256(schema NUL table NUL key hash), 64 characters.
func electionLock(t *testing.T, e env, key dblock.Key) string {
	t.Helper()
	var schemaName string
	if err := e.sqlDB.QueryRow("SELECT DATABASE()").Scan(&schemaName); err != nil {
		t.Fatal(err)
	}
	kh := lockkey.Fields(key).Hash()
	h := sha256.New()
	h.Write([]byte(schemaName + "\x00" + e.table + "\x00"))
	h.Write(kh[:])
	return ("txlock:" + hex.EncodeToString(h.Sum(nil)))[:64]
}

// namedLockHolder returns the connection id holding the named lock, 0
// when it is free.
func namedLockHolder(t *testing.T, db *sql.DB, name string) int64 {
	t.Helper()
	var id sql.NullInt64
	if err := db.QueryRow("SELECT IS_USED_LOCK(?)", name).Scan(&id); err != nil {
		t.Fatalf("IS_USED_LOCK: %v", err)
	}
	return id.Int64
}

// namedLockWaits returns how many statements wait for the named lock.
func namedLockWaits(t *testing.T, db *sql.DB, name string) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?",
		"%GET_LOCK('"+name+"'%").Scan(&n); err != nil {
		t.Fatalf("reading PROCESSLIST: %v", err)
	}
	return n
}

// waitForNamedLockWaits polls until n statements wait for the named lock.
func waitForNamedLockWaits(t *testing.T, db *sql.DB, name string, n int) {
	t.Helper()
	waitFor(t, "the waits for the election's named lock", func() bool { return namedLockWaits(t, db, name) == n })
}

// assertElectionFree checks that nobody holds or waits for the election's
// named lock.
func assertElectionFree(t *testing.T, e env, key dblock.Key) {
	t.Helper()
	name := electionLock(t, e, key)
	waitForNamedLockWaits(t, e.sqlDB, name, 0)
	waitFor(t, "the election's named lock to be free", func() bool { return namedLockHolder(t, e.sqlDB, name) == 0 })
}
