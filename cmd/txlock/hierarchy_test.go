package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestBinaryHierarchy: txlock hierarchy shows the setting, asks before a
// switch (no answer: nothing changes), switches with --yes, and the
// fixture's Locker, which assumed the hierarchy off, then takes the global
// key with every key it locks.
func TestBinaryHierarchy(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if out := f.ok(t, "hierarchy"); !strings.Contains(out, "hierarchy off") {
		t.Fatalf("txlock hierarchy: %q, want off", out)
	}
	out, errOut, code := f.exitCode(t, "n\n", "hierarchy", "on")
	if code == 0 || !strings.Contains(errOut, "not confirmed") {
		t.Fatalf("hierarchy on, answered n: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if out := f.ok(t, "hierarchy"); !strings.Contains(out, "hierarchy off") {
		t.Fatalf("after a refused switch: %q, want off", out)
	}
	out = f.ok(t, "hierarchy", "on", "--yes")
	t.Logf("txlock hierarchy on --yes: %s", out)
	if out := f.ok(t, "hierarchy"); !strings.Contains(out, "hierarchy on") {
		t.Fatalf("after the switch: %q, want on", out)
	}
	if out := f.ok(t, "hierarchy", "on", "--yes"); !strings.Contains(out, "already on") {
		t.Errorf("a second switch on: %q", out)
	}

	lk, err := f.locker.Lock(ctx, dblock.Resource("cli:hier"))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	g, err := f.locker.TryLock(ctx, dblock.Global())
	if err == nil {
		_ = g.Rollback()
		t.Fatal("the global key was free while a resource was held under the hierarchy")
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("TryLock(global) = %v, want ErrNotAcquired", err)
	}
	if _, errOut, code := f.exitCode(t, "", "hierarchy", "sideways"); code == 0 || !strings.Contains(errOut, "want on or off") {
		t.Errorf("hierarchy sideways: exit %d, %s", code, errOut)
	}
}
