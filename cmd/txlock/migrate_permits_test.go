package main

import (
	"context"
	"strings"
	"testing"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// TestBinaryMigrateDownWhileAPermitIsHeld: a transaction holding a permit
// of a semaphore (and nothing of the lock table) does not hold up the
// first DDL of Down (migration 4's, on the lock table): migrate down used
// to roll migration 4 back (dropping the hierarchy column every locking
// read selects, while services ran) and only then give up at the permit
// table. It must refuse before anything is rolled back, naming the permit.
func TestBinaryMigrateDownWhileAPermitIsHeld(t *testing.T) {
	f := newFixture(t)
	f.held(t, dblock.Resource("down:permit"), dblock.Permits(2))
	out, errOut, code := f.exitCode(t, "y\n", "migrate", "down")
	t.Logf("migrate down while a permit is held: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	if code != 1 || !strings.Contains(errOut, `1 key(s) are held right now (a permit of resource="down:permit")`) || !strings.Contains(errOut, "nothing dropped") {
		t.Errorf("exit %d, want 1 and a refusal naming the permit", code)
	}
	st, err := migrations.Status(context.Background(), f.sqlDB(t), migrations.Table(f.table))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if !m.Applied {
			t.Errorf("migration %d was rolled back: %+v", m.Version, m)
		}
	}
}
