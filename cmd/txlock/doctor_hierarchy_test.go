package main

import (
	"context"
	"strings"
	"testing"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// TestBinaryDoctorHierarchy: doctor shows the table's hierarchy setting on
// an OK line, and FAILs a switch stopped halfway and a table without
// migration 4's column (on the permit table too).
func TestBinaryDoctorHierarchy(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sqlDB := f.sqlDB(t)
	doctor := func(what string) (string, int) {
		t.Helper()
		out, _, code := f.exitCode(t, "", "doctor")
		for _, l := range strings.Split(squeeze(out), "\n") {
			if strings.Contains(l, " hierarchy ") {
				t.Logf("%s: %s", what, l)
			}
		}
		return squeeze(out), code
	}
	if err := migrations.SetHierarchy(context.Background(), sqlDB, true, migrations.Table(f.table)); err != nil {
		t.Fatal(err)
	}
	if out, code := doctor("on"); code != 0 || !strings.Contains(out, "OK hierarchy on: the global key contains every key") {
		t.Errorf("hierarchy on: exit %d\n%s", code, out)
	}
	// A switch that stopped halfway leaves the default at 2.
	if _, err := sqlDB.Exec("ALTER TABLE `" + f.table + "` ALTER COLUMN hierarchy SET DEFAULT 2"); err != nil {
		t.Fatal(err)
	}
	if out, code := doctor("halfway"); code != 1 || !strings.Contains(out, "FAIL hierarchy migrations: a switch of the hierarchy of "+f.table+" stopped halfway") ||
		!strings.Contains(out, "run it again (txlock hierarchy on|off)") {
		t.Errorf("a switch stopped halfway: exit %d\n%s", code, out)
	}
	// The permit table without migration 4's column.
	pt := schema.PermitTable(f.table)
	if _, err := sqlDB.Exec("ALTER TABLE `" + pt + "` DROP COLUMN hierarchy"); err != nil {
		t.Fatal(err)
	}
	if out, code := doctor("no column"); code != 1 || !strings.Contains(out, "FAIL hierarchy "+pt+": no hierarchy column (migration 4 is not applied)") {
		t.Errorf("the permit table without its hierarchy column: exit %d\n%s", code, out)
	}
}
