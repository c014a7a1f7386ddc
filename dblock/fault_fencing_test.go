package dblock_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// fencedStore is a resource store that rejects writes carrying a fencing
// token not above the last one it accepted: what a lock's fencing tokens
// are for.
type fencedStore struct {
	db    *gorm.DB
	table string
}

func newFencedStore(t *testing.T, e env) fencedStore {
	t.Helper()
	s := fencedStore{db: e.db, table: e.businessTable(t, "store",
		"resource VARCHAR(64) NOT NULL PRIMARY KEY, last_token BIGINT NOT NULL, value VARCHAR(64) NOT NULL")}
	if err := e.db.Exec("INSERT INTO `" + s.table + "` (resource, last_token, value) VALUES ('res', 0, '')").Error; err != nil {
		t.Fatal(err)
	}
	return s
}

// write stores value with token, and reports whether the store accepted it.
func (s fencedStore) write(t *testing.T, token int64, value string) bool {
	t.Helper()
	res := s.db.Exec("UPDATE `"+s.table+"` SET last_token = ?, value = ? WHERE resource = 'res' AND last_token < ?", token, value, token)
	if res.Error != nil {
		t.Fatalf("store write: %v", res.Error)
	}
	return res.RowsAffected == 1
}

func (s fencedStore) read(t *testing.T) (int64, string) {
	t.Helper()
	var tok int64
	var v string
	if err := s.db.Raw("SELECT last_token, value FROM `"+s.table+"` WHERE resource = 'res'").Row().Scan(&tok, &v); err != nil {
		t.Fatal(err)
	}
	return tok, v
}

// TestFaultFencingRejectsStaleHolder: a holder is partitioned from the lock
// server; its lease runs out and the next holder, with a higher token,
// writes to the store. The stale holder's write with its old token (as
// from a process that was paused and did not look at Lost) is rejected.
func TestFaultFencingRejectsStaleHolder(t *testing.T) {
	e, relay, holderL, waiterL := partitionSetup(t)
	store := newFencedStore(t, e)
	ctx := ctxT(t)
	key := dblock.Resource("fenced")

	h, err := holderL.Lock(ctx, key, dblock.Lease(partitionLease), dblock.Fencing())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Rollback()
	old := h.Token()
	if old <= 0 {
		t.Fatalf("Token() = %d with Fencing, want > 0", old)
	}
	if !store.write(t, old, "first holder") {
		t.Fatal("the store rejected the first holder's write")
	}
	if err := h.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}
	relay.Blackhole()

	w, err := waiterL.Lock(ctx, key, dblock.WaitTimeout(10*time.Second), dblock.Fencing())
	if err != nil {
		t.Fatalf("the next holder: %v", err)
	}
	defer w.Rollback()
	if !isClosed(h.Lost()) {
		t.Error("the next holder was granted the key while the partitioned holder's Lost was still open")
	}
	next := w.Token()
	if next <= old {
		t.Fatalf("next holder's token %d, not above the partitioned holder's %d", next, old)
	}
	if !store.write(t, next, "second holder") {
		t.Fatal("the store rejected the next holder's write")
	}
	// The stale holder wakes up and writes with its old token.
	if store.write(t, old, "stale write") {
		t.Fatal("the store accepted a write with a stale token after the next holder wrote")
	}
	if tok, v := store.read(t); tok != next || v != "second holder" {
		t.Errorf("store has token %d value %q, want %d %q", tok, v, next, "second holder")
	}
	if err := commitWithin(t, h, 5*time.Second); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("partitioned holder's Commit = %v, want ErrLockLost", err)
	}
	if err := w.Commit(); err != nil {
		t.Errorf("next holder's Commit: %v", err)
	}
	t.Logf("partitioned holder token %d, next holder token %d: stale write rejected", old, next)
}

// TestFaultFencingTokenSurvivesCrash: a child process takes the key with a
// fencing token and is killed (SIGKILL) before committing; the next holder's
// token is above it. Three rounds: tokens strictly increase, none reused.
func TestFaultFencingTokenSurvivesCrash(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("crash")
	var tokens []int64
	for i := range 3 {
		c := startChild(t, "hold", envFaultTable+"="+e.table, envFaultKey+"=crash", envFaultArg+"=fencing")
		childTok, err := strconv.ParseInt(c.expect(t, "HELD", opTimeout), 10, 64)
		if err != nil || childTok <= 0 {
			t.Fatalf("round %d: child token %d, %v", i, childTok, err)
		}
		c.kill(t)
		c.reap(t, opTimeout)
		k, err := l.Lock(ctx, key, dblock.Fencing(), dblock.WaitTimeout(5*time.Second))
		if err != nil {
			t.Fatalf("round %d: Lock after the child was killed: %v", i, err)
		}
		tokens = append(tokens, childTok, k.Token())
		if err := k.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("tokens %v: not strictly increasing at %d", tokens, i)
		}
	}
	t.Logf("tokens (killed child, next holder) x3: %v", tokens)
}
