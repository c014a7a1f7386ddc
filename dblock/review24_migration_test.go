package dblock_test

import (
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// TestReview24TableAtMigration3: a lock table migrated up to 3 only (no
// hierarchy column on tb_lock) is refused with "predates a migration this
// txlock needs" and the server's "Unknown column 'hierarchy'": the error
// does not say which migration (4, the hierarchy setting) is missing. A
// permit works (migration 3 gave the permit table its hierarchy column),
// which is fine: the hierarchy cannot be on without migration 4.
func TestReview24TableAtMigration3(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	// Migration 4's Down, by hand: the table as migration 3 left it.
	for _, q := range []string{
		"ALTER TABLE `" + e.table + "` DROP COLUMN hierarchy",
		"DELETE FROM `" + migrations.VersionTable(e.table) + "` WHERE version_id = 4",
	} {
		if err := e.db.Exec(q).Error; err != nil {
			t.Fatal(err)
		}
	}
	l := e.locker(t)
	defer l.Close()
	noop := func(context.Context, *gorm.DB) error { return nil }
	if err := l.Do(ctx, dblock.Resource("r24:m3p"), noop, dblock.Permits(2)); err != nil {
		t.Errorf("a permit on a table at migration 3: %v", err)
	}
	errs := map[string]error{"Do": l.Do(ctx, dblock.Resource("r24:m3"), noop)}
	tx := e.db.WithContext(ctx).Begin()
	errs["LockTx"] = l.LockTx(ctx, tx, dblock.Resource("r24:m3tx"))
	tx.Rollback()
	for name, err := range errs {
		t.Logf("%s: %v", name, err)
		if err == nil {
			t.Errorf("%s on a table at migration 3 succeeded", name)
			continue
		}
		mustContain(t, err, "migration 4")
	}
}
