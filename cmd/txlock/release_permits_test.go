package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestBinaryReleaseSemaphore: release --key of a semaphore whose permits
// are held (its lock free) names the permit holders and refuses, killing
// nobody; --permit-holder CONN asks, kills that holder only, and its permit
// goes to a waiter; a connection that holds no permit, or a key without a
// semaphore, is refused; the key's lock is released apart, without
// touching the permit holders.
func TestBinaryReleaseSemaphore(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("rel:sem")
	a, aConn := f.held(t, key, dblock.Permits(2))
	b, bConn := f.held(t, key, dblock.Permits(2))
	aID, bID := strconv.FormatInt(aConn, 10), strconv.FormatInt(bConn, 10)
	alive := func(what string, lks ...*dblock.Lock) {
		t.Helper()
		for _, lk := range lks {
			if err := lk.Tx().Exec("SELECT 1").Error; err != nil {
				t.Fatalf("%s: a permit holder was hurt: %v", what, err)
			}
		}
	}

	out, errOut, code := f.exitCode(t, "", "release", "--force", "--key", "resource=rel:sem")
	t.Logf("release --force of a semaphore: exit %d\nstdout:\n%sstderr:\n%s", code, out, errOut)
	for _, want := range []string{"nobody holds the lock of " + key.String() + ", but 2 of the 2 permits", "connection " + aID + " (", "connection " + bID + " (", "permit slot 0", "permit slot 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if code != 1 || strings.Contains(errOut, "killed connection") || !strings.Contains(errOut, "release does not kill them all; nothing killed") ||
		!strings.Contains(errOut, "txlock release --key 'resource=rel:sem' --permit-holder CONN") {
		t.Errorf("release of a semaphore: exit %d, want 1, nothing killed, and the way to end one holder", code)
	}
	alive("release --force of the key", a, b)

	// Not a holder, no semaphore: refused.
	_, errOut, code = f.exitCode(t, "", "release", "--force", "--key", "resource=rel:sem", "--permit-holder", "999999999")
	if code != 1 || !strings.Contains(errOut, "connection 999999999 holds no permit of "+key.String()) {
		t.Errorf("--permit-holder of a connection holding none: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = f.exitCode(t, "", "release", "--force", "--key", "resource=rel:nosem", "--permit-holder", aID)
	if code != 1 || !strings.Contains(errOut, "has no semaphore") {
		t.Errorf("--permit-holder of a key without a semaphore: exit %d, stderr %q", code, errOut)
	}

	// The key's lock is apart: releasing it leaves the permit holders alone.
	lk, lkConn := f.held(t, key)
	out, errOut, code = f.exitCode(t, "", "release", "--force", "--key", "resource=rel:sem")
	if code != 0 || !strings.Contains(out, "is held by connection "+strconv.FormatInt(lkConn, 10)) {
		t.Fatalf("release of the key's lock beside its semaphore: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	wantLost(t, lk)
	alive("release of the key's lock", a, b)

	// --permit-holder: asks, then kills that holder only.
	args := []string{"release", "--key", "resource=rel:sem", "--permit-holder", aID}
	out, errOut, code = f.exitCode(t, "n\n", args...)
	if code != 1 || !strings.Contains(errOut, "Kill connection "+aID+"? [y/N]") || !strings.Contains(errOut, "not confirmed: nothing killed") {
		t.Errorf("answer n: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	alive("answer n", a, b)
	w := f.wait(t, key, dblock.Permits(2))
	f.waitPermitWait(t)
	out, errOut, code = f.exitCode(t, "y\n", args...)
	t.Logf("release --permit-holder %s: exit %d\nstdout:\n%sstderr:\n%s", aID, code, out, errOut)
	if code != 0 || !strings.Contains(out, "a permit of "+key.String()+" (slot ") || !strings.Contains(out, "is held by connection "+aID) ||
		!strings.Contains(out, "connection "+aID+" is gone; its hold on a permit of "+key.String()+" is released") || !strings.Contains(errOut, "killed connection "+aID) {
		t.Fatalf("answer y: exit %d", code)
	}
	wantLost(t, a)
	alive("the other permit holder", b)
	select {
	case got := <-w.got:
		if got == aConn {
			t.Errorf("the waiter runs on the killed connection %d", aConn)
		}
		w.let()
	case <-w.done:
		t.Fatalf("waiter: %v", w.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not get the permit after its holder was killed")
	}
	<-w.done

	// The key's row collected (txlock gc) while b holds a permit: release
	// still finds the semaphore by the key's hash, and locks shows it by
	// its key_hash.
	if err := f.db.Exec("DELETE FROM `"+f.table+"` WHERE resource = ?", key.Resource).Error; err != nil {
		t.Fatal(err)
	}
	out, errOut, code = f.exitCode(t, "", "release", "--force", "--key", "resource=rel:sem")
	if code != 1 || !strings.Contains(errOut, "(holders: "+bID+")") || !strings.Contains(out, "1 of the 2 permits") {
		t.Errorf("release of a semaphore whose key row is gone: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	time.Sleep(250 * time.Millisecond) // let the INNODB_* cache refresh
	var snap Snapshot
	if err := json.Unmarshal([]byte(f.ok(t, "locks", "--json", "--identify")), &snap); err != nil {
		t.Fatal(err)
	}
	var sem *HeldKey
	for i := range snap.Keys {
		if snap.Keys[i].Mode == semMode {
			sem = &snap.Keys[i]
		}
	}
	if sem == nil || sem.RowID != 0 || sem.KeyStr != "key_hash="+sem.KeyHash || sem.PermitsHeld != 1 || sem.Holder == nil || sem.Holder.ID != bConn {
		t.Errorf("locks: a semaphore whose key row is gone: %+v, want it by key_hash, held by %d", sem, bConn)
	}
}
