package dblock_test

import (
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestImplicitCommitRefused: a statement in fn that would end the lock's
// transaction on the server (DDL commits implicitly; so do BEGIN, LOCK
// TABLES, SET autocommit = 1, ...) used to run: the server committed, the
// lock was free while fn went on, fn's later writes ran in autocommit
// outside it, and Do returned nil. Such a statement is now refused before
// it is sent, the lock stays held, and statements that keep the
// transaction (CREATE TEMPORARY TABLE, ROLLBACK TO SAVEPOINT) still run.
func TestImplicitCommitRefused(t *testing.T) {
	e, l := setupLocker(t)
	other := e.locker(t)
	t.Cleanup(func() { _ = other.Close() })
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("implicit-commit")
	ddl := e.table + "_ddl"
	t.Cleanup(func() { _ = e.db.Exec("DROP TABLE IF EXISTS `" + ddl + "`").Error })

	refused := []string{
		"CREATE TABLE `" + ddl + "` (id INT PRIMARY KEY)",
		"  /* a comment */ create table `" + ddl + "` (id INT PRIMARY KEY)",
		"/*!CREATE TABLE `" + ddl + "` (id INT PRIMARY KEY) */",
		"CREATE OR REPLACE TABLE `" + ddl + "` (id INT PRIMARY KEY)",
		"TRUNCATE TABLE `" + kv + "`",
		"ALTER TABLE `" + kv + "` COMMENT 'x'",
		"LOCK TABLES `" + kv + "` WRITE",
		"BEGIN",
		"START TRANSACTION",
		"COMMIT",
		"ROLLBACK",
		"SET autocommit = 1",
		"SET @@session.AUTOCOMMIT = 1",
	}
	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		for _, q := range refused {
			err := tx.Exec(q).Error
			_, sqlErr := dblock.SQL(tx).ExecContext(ctx, q)
			_, prepErr := dblock.SQL(tx).PrepareContext(ctx, q)
			var n int
			rowErr := dblock.SQL(tx).QueryRowContext(ctx, q).Scan(&n)
			t.Logf("%s: %v", q, err)
			for what, err := range map[string]error{"gorm Exec": err, "SQL ExecContext": sqlErr, "SQL PrepareContext": prepErr, "SQL QueryRowContext": rowErr} {
				if err == nil {
					t.Errorf("%s of %q in fn ran; want it refused", what, q)
				}
			}
			if _, err := other.TryLock(ctx, key); err == nil {
				t.Fatalf("after %q in fn, another Locker took the key while fn ran", q)
			}
		}
		for _, q := range []string{
			"CREATE TEMPORARY TABLE `" + ddl + "_tmp` (id INT)",
			"DROP TEMPORARY TABLE `" + ddl + "_tmp`",
			"SAVEPOINT sp1",
			"ROLLBACK TO SAVEPOINT sp1",
			"SELECT 'CREATE TABLE' FROM DUAL",
		} {
			if err := tx.Exec(q).Error; err != nil {
				t.Errorf("%q in fn: %v; want it run", q, err)
			}
		}
		return put(tx, kv, "after", 2)
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if got := get(t, e.db, kv, "before") + get(t, e.db, kv, "after"); got != 3 {
		t.Errorf("fn's writes: before+after = %d, want 3 (both committed with the lock)", got)
	}
	var n int
	if err := e.db.Raw("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?", ddl).Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("the refused CREATE TABLE %s ran", ddl)
	}
	// A Lock handle's transaction is guarded the same way.
	lk := holdKey(t, ctx, l, key)
	if err := lk.Tx().Exec("CREATE TABLE `" + ddl + "` (id INT PRIMARY KEY)").Error; err == nil {
		t.Error("CREATE TABLE through Lock.Tx ran")
	}
	assertHeld(t, other, key)
	if err := lk.Commit(); err != nil {
		t.Errorf("Commit after a refused statement: %v", err)
	}
}
