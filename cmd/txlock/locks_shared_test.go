package main

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// holderIDs returns the connections of k's holders, sorted, and whether
// each holds k in mode.
func holderIDs(k *HeldKey, mode string) ([]int64, bool) {
	var ids []int64
	all := true
	for _, h := range k.Holders {
		ids = append(ids, h.ID)
		all = all && h.Mode == mode
	}
	slices.Sort(ids)
	return ids, all
}

// TestBinaryLocksShowsSharedHolders: locks shows each holder's mode and,
// for a key held shared by several transactions, each of them: named when
// MariaDB gives their transactions an id (they wrote first), "?" with a
// note and the candidates when they have written nothing (id 0, which
// every read-only transaction shares: an idle one that holds nothing is
// never named). --identify names the shared holders nobody waits for.
func TestBinaryLocksShowsSharedHolders(t *testing.T) {
	f := newFixture(t)
	named, unnamed, excl, quiet := dblock.Resource("sh:named"), dblock.Resource("sh:unnamed"), dblock.Resource("sh:excl"), dblock.Resource("sh:quiet")
	_, n1 := f.sharedNamed(t, named)
	_, n2 := f.sharedNamed(t, named)
	_, u1 := f.sharedLock(t, unnamed)
	_, u2 := f.sharedLock(t, unnamed)
	_, x := f.held(t, excl)
	_, q1 := f.sharedNamed(t, quiet)
	_, q2 := f.sharedNamed(t, quiet)
	_, innocent := f.readOnlyTx(t)
	f.wait(t, named)
	f.wait(t, unnamed)
	f.wait(t, excl)

	var snap Snapshot
	var out string
	poll(t, "the holders and waiters of the three contended keys", func() (bool, string) {
		out = f.ok(t, "locks", "--json")
		snap = Snapshot{}
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			t.Fatalf("locks --json: %v\n%s", err, out)
		}
		n, u, e := findKey(&snap, "sh:named"), findKey(&snap, "sh:unnamed"), findKey(&snap, "sh:excl")
		return n != nil && len(n.Holders) == 2 && len(n.Waiters) == 1 && u != nil && u.UnnamedShared && len(u.Waiters) == 1 &&
			e != nil && e.Holder != nil && len(e.Waiters) == 1, out
	})
	t.Logf("named %d %d, unnamed %d %d, exclusive %d, quiet %d %d, read-only %d\ntxlock locks --json:\n%s", n1, n2, u1, u2, x, q1, q2, innocent, out)

	k := findKey(&snap, "sh:named")
	if ids, all := holderIDs(k, "S"); !all || !slices.Equal(ids, sorted(n1, n2)) || k.Mode != "S" || k.UnnamedShared || k.Holder.ID != k.Holders[0].ID {
		t.Errorf("key held shared by named transactions: %+v, want mode S and holders %d, %d in mode S", k, n1, n2)
	}
	for _, h := range k.Holders {
		if h.Label != fixtureLabel {
			t.Errorf("shared holder %d has label %q, want %q (every holder is labelled, not only the first)", h.ID, h.Label, fixtureLabel)
		}
	}
	if k.Waiters[0].Mode != "X" {
		t.Errorf("the writer waiting for %s: mode %q, want X", k.KeyStr, k.Waiters[0].Mode)
	}
	k = findKey(&snap, "sh:unnamed")
	if k.Mode != "S" || k.Holder != nil || len(k.Holders) != 0 || k.Waiters[0].Mode != "X" {
		t.Errorf("key held shared by transactions that have written nothing: %+v, want mode S and no holder named", k)
	}
	for _, c := range []int64{u1, u2} {
		if !slices.ContainsFunc(snap.Candidates, func(cd Conn) bool { return cd.ID == c }) {
			t.Errorf("shared holder %d is not among the candidates %+v", c, snap.Candidates)
		}
	}
	k = findKey(&snap, "sh:excl")
	if k.Mode != "X" || k.Holder.ID != x || k.Holder.Mode != "X" || len(k.Holders) != 1 {
		t.Errorf("exclusive key: %+v, want holder %d in mode X", k, x)
	}
	for _, k := range snap.Keys {
		for _, h := range k.Holders {
			if h.ID == innocent {
				t.Errorf("%s: the idle read-only transaction %d, which holds nothing, is named as a holder", k.KeyStr, innocent)
			}
		}
	}
	if !slices.Contains(snap.Notes, unnamedSharedNote) {
		t.Errorf("no note says why the shared holders are not named: %q", snap.Notes)
	}

	// The table: a MODE column, a line per shared holder, "?" in mode S.
	time.Sleep(250 * time.Millisecond) // let the INNODB_* cache refresh
	wants := []string{"MODE", "holder  S     " + strconv.FormatInt(n1, 10), "holder  S     " + strconv.FormatInt(n2, 10), "holder  S     ?", "holder  X     " + strconv.FormatInt(x, 10)}
	runs := 0
	poll(t, "a table with every holder in its mode and the three waiters", func() (bool, string) {
		runs++
		table := f.ok(t, "locks")
		for _, want := range wants {
			if !strings.Contains(table, want) {
				return false, table
			}
		}
		if strings.Count(table, "waiter  X") != 3 {
			return false, table
		}
		t.Logf("txlock locks (run %d):\n%s", runs, table)
		return true, table
	})

	// --identify names the shared holders of a key nobody waits for.
	time.Sleep(250 * time.Millisecond)
	var ident Snapshot
	if err := json.Unmarshal([]byte(f.ok(t, "locks", "--identify", "--json", "--key-resource", "sh:quiet")), &ident); err != nil {
		t.Fatal(err)
	}
	if len(ident.Keys) != 1 {
		t.Fatalf("--identify: keys %+v", ident.Keys)
	}
	k = &ident.Keys[0]
	t.Logf("--identify of a key held shared, nobody waiting: %+v", *k)
	if ids, all := holderIDs(k, "S"); !all || !slices.Equal(ids, sorted(q1, q2)) || k.Source != "identify" || k.Mode != "S" {
		t.Errorf("--identify: %+v, want holders %d, %d in mode S", k, q1, q2)
	}
}

// sorted returns ids sorted.
func sorted(ids ...int64) []int64 {
	slices.Sort(ids)
	return ids
}
