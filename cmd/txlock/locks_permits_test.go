package main

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// findSem returns the semaphore of resource in s, nil if none.
func findSem(s *Snapshot, resource string) *HeldKey {
	for i := range s.Keys {
		if s.Keys[i].Key.Resource == resource && s.Keys[i].Mode == semMode {
			return &s.Keys[i]
		}
	}
	return nil
}

// waitPermitWait waits until PROCESSLIST (live) shows a statement waiting
// for a permit row of f's permit table (not the SKIP LOCKED look).
func (f *fixture) waitPermitWait(t *testing.T) {
	t.Helper()
	marker := "%`" + schema.PermitTable(f.table) + "` FORCE INDEX (PRIMARY)%"
	poll(t, "a call waiting for a permit in PROCESSLIST", func() (bool, string) {
		var n int
		err := f.db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND TIME_MS >= 100 "+
			"AND INFO LIKE ? AND INFO NOT LIKE '%SKIP LOCKED%'", marker).Row().Scan(&n)
		return err == nil && n > 0, strconv.Itoa(n)
	})
}

// slots returns the permit slots of conns, sorted, and whether each is
// in mode SEM.
func slots(conns []Conn) ([]int, bool) {
	var out []int
	all := true
	for _, c := range conns {
		all = all && c.Mode == semMode && c.PermitSlot != nil
		if c.PermitSlot != nil {
			out = append(out, *c.PermitSlot)
		}
	}
	slices.Sort(out)
	return out, all
}

// TestBinaryLocksShowsSemaphores: locks shows each semaphore (dblock.
// Permits) whose permits are held: its key (from the lock table's row of
// the same key_hash), mode SEM, how many of its permits are held, its
// holders (named when someone waits for their permit, or with --identify;
// "?" otherwise, one per permit) and waiters, apart from the key's own
// lock; --key filters semaphores as keys; JSON carries the same.
func TestBinaryLocksShowsSemaphores(t *testing.T) {
	f := newFixture(t)
	quiet, full := dblock.Resource("sem:quiet"), dblock.Resource("sem:full")
	_, q1 := f.held(t, quiet, dblock.Permits(3))
	_, q2 := f.held(t, quiet, dblock.Permits(3))
	_, own := f.held(t, quiet) // the key's lock, apart from its semaphore
	_, f1 := f.held(t, full, dblock.Permits(2))
	_, f2 := f.held(t, full, dblock.Permits(2))
	w := f.wait(t, full, dblock.Permits(2))
	f.waitPermitWait(t)
	t.Logf("quiet: permits %d %d, lock %d; full: permits %d %d and a waiter", q1, q2, own, f1, f2)

	var snap Snapshot
	var out string
	poll(t, "both semaphores, the full one's waiter and the holder it waits for", func() (bool, string) {
		out = f.ok(t, "locks", "--json")
		snap = Snapshot{}
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			t.Fatalf("locks --json: %v\n%s", err, out)
		}
		q, fl := findSem(&snap, "sem:quiet"), findSem(&snap, "sem:full")
		return q != nil && fl != nil && len(fl.Waiters) == 1 && len(fl.Holders) >= 1, out
	})
	t.Logf("txlock locks --json:\n%s", out)
	k := findSem(&snap, "sem:quiet")
	if k.Permits != 3 || k.PermitsHeld != 2 || len(k.Holders) != 0 || k.RowID == 0 || len(k.KeyHash) != 64 || k.KeyStr != quiet.String() || k.Source != "probe" {
		t.Errorf("semaphore nobody waits for: %+v, want 2 of 3 permits held, holders unnamed (probe), the key resolved", *k)
	}
	lockOf := findKey(&snap, "sem:quiet")
	if lockOf == nil || lockOf.Mode == semMode || lockOf.RowID != k.RowID {
		t.Errorf("the key's lock beside its semaphore: %+v, want its own entry (row %d)", lockOf, k.RowID)
	}
	k = findSem(&snap, "sem:full")
	named := k.Holders[0].ID
	if k.Permits != 2 || k.PermitsHeld != 2 || len(k.Holders) != 1 || named != f1 && named != f2 || k.Holder == nil || k.Holder.ID != named {
		t.Errorf("full semaphore: %+v, want 2 of 2 held, the holder of the permit waited for named (%d or %d)", *k, f1, f2)
	}
	if s, all := slots(k.Waiters); !all || len(s) != 1 || s[0] != *k.Holders[0].PermitSlot {
		t.Errorf("the waiter %+v: want mode SEM, waiting for the slot of the holder named (%+v)", k.Waiters, k.Holders[0])
	}
	if !slices.ContainsFunc(snap.Notes, func(n string) bool { return strings.HasPrefix(n, `holder "?"`) }) {
		t.Errorf("no note says why permit holders are \"?\": %q", snap.Notes)
	}

	// The table: a line per permit held, its holder or "?", and SEM n/m.
	k = findSem(&snap, "sem:quiet")
	time.Sleep(250 * time.Millisecond) // let the INNODB_* cache refresh
	poll(t, "the semaphores in the table", func() (bool, string) {
		table := squeeze(f.ok(t, "locks"))
		ok := strings.Count(table, "holder SEM 2/3 ?") == 2 &&
			strings.Contains(table, `resource="sem:full" `) && strings.Contains(table, "holder SEM 2/2 "+strconv.FormatInt(named, 10)) &&
			strings.Count(table, "holder SEM 2/2 ?") == 1 && strings.Contains(table, "waiter SEM ") &&
			strings.Contains(table, `resource="sem:quiet" `+strconv.FormatInt(k.RowID, 10)+" holder - ?") // the key's lock: apart

		if ok {
			t.Logf("txlock locks:\n%s", table)
		}
		return ok, table
	})

	// --identify names every permit holder; --key filters.
	time.Sleep(250 * time.Millisecond)
	var ident Snapshot
	out = f.ok(t, "locks", "--identify", "--json", "--key-resource", "sem:quiet")
	if err := json.Unmarshal([]byte(out), &ident); err != nil {
		t.Fatal(err)
	}
	t.Logf("--identify --key-resource sem:quiet:\n%s", out)
	k = findSem(&ident, "sem:quiet")
	if k == nil || findSem(&ident, "sem:full") != nil {
		t.Fatalf("--key-resource sem:quiet: %+v", ident.Keys)
	}
	ids := []int64{k.Holders[0].ID}
	if len(k.Holders) > 1 {
		ids = append(ids, k.Holders[1].ID)
	}
	for _, h := range k.Holders {
		if h.Label != fixtureLabel {
			t.Errorf("--identify: holder %d has label %q, want %q", h.ID, h.Label, fixtureLabel)
		}
	}
	if s, all := slots(k.Holders); len(k.Holders) != 2 || !slices.Equal(sorted(ids...), sorted(q1, q2)) || !all || len(slices.Compact(s)) != 2 || k.PermitsHeld != 2 || k.Source != "identify" {
		t.Errorf("--identify: %+v, want holders %d and %d on two slots", *k, q1, q2)
	}
	w.let()
}
