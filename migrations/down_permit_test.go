package migrations_test

import (
	"context"
	"testing"
	"time"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// TestDownRefusesWhileAPermitIsHeld: a transaction that holds a permit of
// a semaphore (a row of the permit table FOR UPDATE, nothing of the lock
// table) does not hold up migration 4's Down (an ALTER of the lock table
// only): Down drops the hierarchy column that every locking read selects,
// and only then gives up at migration 3's ALTER of the permit table. It
// must give up before rolling anything back, as it does for a held key.
func TestDownRefusesWhileAPermitIsHeld(t *testing.T) {
	ctx := context.Background()
	db, name := migrated(t)
	pt := schema.PermitTable(name)
	if _, err := db.Exec("INSERT INTO `" + pt + "` (key_hash, slot, permits) VALUES (UNHEX(SHA2('p', 256)), 0, 1)"); err != nil {
		t.Fatal(err)
	}
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	var id int64
	if err := holder.QueryRow("SELECT id FROM `" + pt + "` FOR UPDATE").Scan(&id); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rep, err := migrations.Down(dctx, db, migrations.Table(name))
	t.Logf("Down while a permit is held: %+v, %v", rep, err)
	if err == nil || len(rep.RolledBack) != 0 {
		t.Errorf("Down while a permit is held rolled back %v (err %v), want nothing rolled back", rep.RolledBack, err)
	}
	st, err := migrations.Status(ctx, db, migrations.Table(name))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if !m.Applied {
			t.Errorf("migration %d rolled back while a permit was held", m.Version)
		}
	}
}
