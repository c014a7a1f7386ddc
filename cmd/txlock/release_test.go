package main

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// These tests read MariaDB's INNODB_* views: not parallel (see
// TestBinaryLocksShowsHoldersAndWaiters).

// wantLost checks that a killed holder's Commit fails as a lost lock.
func wantLost(t *testing.T, lk *dblock.Lock) {
	t.Helper()
	err := lk.Commit()
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Commit of the killed holder = %v, want ErrLockLost", err)
	}
}

func TestBinaryReleaseForce(t *testing.T) {
	f := newFixture(t)

	// Nobody waits: the holder is named by a probe queued behind it.
	lk, conn := f.held(t, dblock.Resource("rel:alone"))
	out, errOut, code := f.exitCode(t, "", "release", "--force", "--key", "resource=rel:alone")
	t.Logf("txlock release --force --key resource=rel:alone\nstdout:\n%sstderr:\n%s", out, errOut)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	id := strconv.FormatInt(conn, 10)
	for _, want := range []string{"is held by connection " + id, "connection " + id + " is gone"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if !strings.Contains(errOut, "killed connection "+id) || !strings.Contains(errOut, `resource="rel:alone"`) {
		t.Errorf("stderr does not log the kill: %q", errOut)
	}
	wantLost(t, lk)

	// Someone waits: after the kill the waiter gets the lock.
	time.Sleep(250 * time.Millisecond) // let the INNODB_* cache refresh
	lk, conn = f.held(t, dblock.Resource("rel:contended"))
	w := f.wait(t, dblock.Resource("rel:contended"))
	time.Sleep(100 * time.Millisecond) // the waiter queues
	out, errOut, code = f.exitCode(t, "", "release", "--force", "--key-resource", "rel:contended")
	if code != 0 || !strings.Contains(out, "is held by connection "+strconv.FormatInt(conn, 10)) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	select {
	case got := <-w.got:
		if got == conn {
			t.Errorf("the waiter runs on the killed connection %d", conn)
		}
		w.let()
	case <-w.done:
		t.Fatalf("waiter: %v", w.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not get the lock after the holder was killed")
	}
	wantLost(t, lk)
}

func TestBinaryReleaseAsks(t *testing.T) {
	f := newFixture(t)
	lk, conn := f.held(t, dblock.Key{User: "u-9", Operation: "refund"})
	args := []string{"release", "--key", "user=u-9,operation=refund"}

	out, errOut, code := f.exitCode(t, "n\n", args...)
	if code != 1 || !strings.Contains(errOut, "Kill connection "+strconv.FormatInt(conn, 10)+"? [y/N]") || !strings.Contains(errOut, "not confirmed: nothing killed") {
		t.Errorf("answer n: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	// No answer at all (stdin closed) is no.
	time.Sleep(250 * time.Millisecond)
	if _, errOut, code := f.exitCode(t, "", args...); code != 1 || !strings.Contains(errOut, "nothing killed") {
		t.Errorf("no answer: exit %d, stderr %s", code, errOut)
	}
	if err := lk.Tx().Exec("SELECT 1").Error; err != nil {
		t.Fatalf("the holder was hurt without confirmation: %v", err)
	}

	time.Sleep(250 * time.Millisecond)
	out, errOut, code = f.exitCode(t, "y\n", args...)
	if code != 0 || !strings.Contains(errOut, "killed connection "+strconv.FormatInt(conn, 10)) {
		t.Fatalf("answer y: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	wantLost(t, lk)
}

func TestBinaryReleaseNobody(t *testing.T) {
	f := newFixture(t)
	out := f.ok(t, "release", "--force", "--key", "resource=never-locked")
	if !strings.Contains(out, `nobody holds resource="never-locked" (it has no row`) {
		t.Errorf("key without a row: %s", out)
	}
	if err := f.locker.Do(context.Background(), dblock.Resource("was-locked"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	out = f.ok(t, "release", "--key-resource", "was-locked")
	if !strings.Contains(out, `nobody holds resource="was-locked" (row`) {
		t.Errorf("free key: %s", out)
	}
	if _, errOut, code := f.exitCode(t, "", "release"); code != 1 || !strings.Contains(errOut, "name the key") {
		t.Errorf("release without a key: exit %d, %s", code, errOut)
	}
	if _, errOut, code := f.exitCode(t, "", "release", "--key", "global,user=u"); code != 1 || !strings.Contains(errOut, "invalid key") {
		t.Errorf("release of an invalid key: exit %d, %s", code, errOut)
	}
}
