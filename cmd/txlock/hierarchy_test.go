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

// TestBinaryReleaseContainerUnderHierarchy: with the hierarchy on, every
// holder holds the global key shared: release of the global key refuses
// (it would kill every holder) and kills nothing.
func TestBinaryReleaseContainerUnderHierarchy(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.ok(t, "hierarchy", "on", "--yes")
	var held []*dblock.Lock
	for _, k := range []dblock.Key{dblock.Resource("cli:h1"), dblock.User("cli:h2")} {
		lk, err := f.locker.Lock(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Rollback()
		held = append(held, lk)
	}
	out, errOut, code := f.exitCode(t, "", "release", "--force", "--key", "global")
	t.Logf("release --force --key global (exit %d)\nstdout:\n%sstderr:\n%s", code, out, errOut)
	if code == 0 || !strings.Contains(errOut, "hierarchy is on") || strings.Contains(errOut, "killed connection") {
		t.Errorf("release of the global key under the hierarchy: exit %d, want a refusal that kills nothing", code)
	}
	for _, lk := range held {
		if err := lk.Commit(); err != nil {
			t.Errorf("a holder after the refused release: %v", err)
		}
	}
}
