package dblock_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// review19: adversarial review of the database/sql path and of the
// implicit-commit guard (implicit.go).

// TestReview19ImplicitCommitBypass: the keeper reads the first words of a
// holder's statement to refuse those that end the lock's transaction on
// the server. Statements that commit implicitly but start with another
// word go through the plain Exec path (which is not guarded by the
// savepoint): the server commits, the lock row is released while fn
// still runs (another Locker takes the key), and fn's writes before the
// statement are committed although fn fails and Do reports the failure
// (nothing committed).
func TestReview19ImplicitCommitBypass(t *testing.T) {
	e, l := setupLocker(t)
	other := e.locker(t)
	t.Cleanup(func() { _ = other.Close() })
	kv := e.kvTable(t)
	ctx := ctxT(t)
	ddl := e.table + "_r19ddl"
	proc := e.table + "_r19commit"
	if err := e.db.Exec("CREATE PROCEDURE `" + proc + "`() BEGIN COMMIT; END").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.db.Exec("DROP PROCEDURE IF EXISTS `" + proc + "`").Error
		_ = e.db.Exec("DROP TABLE IF EXISTS `" + ddl + "`").Error
	})
	bypasses := map[string]string{
		"SET STATEMENT FOR CREATE TABLE": "SET STATEMENT max_statement_time=0 FOR CREATE TABLE IF NOT EXISTS `" + ddl + "` (id INT)",
		"SET STATEMENT FOR COMMIT":       "SET STATEMENT max_statement_time=0 FOR COMMIT",
		"EXECUTE IMMEDIATE COMMIT":       "EXECUTE IMMEDIATE 'COMMIT'",
		"EXECUTE IMMEDIATE DDL":          "EXECUTE IMMEDIATE 'CREATE TABLE IF NOT EXISTS `" + ddl + "` (id INT)'",
		"CALL proc that commits":         "CALL `" + proc + "`()",
		"-- newline comment then DDL":    "--\nCREATE TABLE IF NOT EXISTS `" + ddl + "` (id INT)",
		"--<tab> comment then DDL":       "--\tx\nCREATE TABLE IF NOT EXISTS `" + ddl + "` (id INT)",
		// The content of a versioned comment newer than the server is
		// not run, but the guard reads it as if it were.
		"CREATE /*M!999999 TEMPORARY */": "CREATE /*M!999999 TEMPORARY */ TABLE IF NOT EXISTS `" + ddl + "` (id INT)",
		"ROLLBACK /*M!999999 TO s */":    "ROLLBACK /*M!999999 TO SAVEPOINT s */",
	}
	for name, q := range bypasses {
		t.Run(name, func(t *testing.T) {
			key := dblock.Resource("r19-bypass-" + name)
			k := "w-" + name
			errFn := errors.New("fn fails after its statement")
			var execErr error
			stolen := false
			err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
				if err := put(tx, kv, k, 1); err != nil {
					return err
				}
				_, execErr = dblock.SQL(tx).ExecContext(ctx, q)
				if lk, err := other.TryLock(ctx, key); err == nil {
					stolen = true
					_ = lk.Rollback()
				}
				return errFn
			})
			t.Logf("%q: exec err %v; Do: %v", q, execErr, err)
			if strings.HasPrefix(q, "CALL") {
				// What a procedure does cannot be read from its call: the
				// call runs in a guarded transaction and is followed by a
				// check. The procedure's COMMIT committed fn's write before
				// it (that cannot be undone): the call and Do must say so,
				// and nothing after it may run.
				if !errors.Is(execErr, dblock.ErrCommitUnknown) || !errors.Is(err, dblock.ErrCommitUnknown) {
					t.Errorf("%q: exec err %v, Do %v; want both ErrCommitUnknown", q, execErr, err)
				}
				return
			}
			if execErr == nil {
				t.Errorf("%q ran in fn; want it refused (it ends the lock's transaction on the server)", q)
			}
			if stolen {
				t.Errorf("after %q in fn, another Locker took the key while fn still ran (mutual exclusion broken)", q)
			}
			if v := get(t, e.db, kv, k); v != -1 {
				t.Errorf("fn failed and Do returned %v, but fn's write before %q is committed (v=%d)", err, q, v)
			}
		})
	}
}

// TestReview19GuardedUnseenCommitThenFnError: the doc says a statement
// that ends a guarded transaction unseen (a procedure that commits) is
// caught and reported as ErrCommitUnknown. Before the fix the check ran
// only on the COMMIT path: when fn then failed, Do rolled back without
// looking and returned fn's error alone, yet fn's write before the
// procedure was committed. And when fn ignored the call's error, Commit
// said "writes not committed". Every way out must say ErrCommitUnknown and
// never "not committed".
func TestReview19GuardedUnseenCommitThenFnError(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	proc := e.table + "_r19commit2"
	if err := e.db.Exec("CREATE PROCEDURE `" + proc + "`() BEGIN COMMIT; END").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.db.Exec("DROP PROCEDURE IF EXISTS `" + proc + "`").Error })
	for _, c := range []struct {
		k                   string
		fnFails, ignoreCall bool
	}{{"guarded-ok", false, false}, {"guarded-fail", true, false}, {"guarded-ignored", false, true}} {
		key := dblock.Resource("r19-guarded")
		k, fnFails := c.k, c.fnFails
		errFn := errors.New("fn fails")
		err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			if err := put(tx, kv, k, 1); err != nil {
				return err
			}
			st, err := dblock.SQL(tx).PrepareContext(ctx, "SELECT 1") // guards the transaction
			if err != nil {
				return err
			}
			_ = st.Close()
			if _, err := dblock.SQL(tx).ExecContext(ctx, "CALL `"+proc+"`()"); err != nil && !c.ignoreCall {
				return err
			}
			if err := put(tx, kv, k+"-after", 2); err != nil && !c.ignoreCall {
				return err
			}
			if fnFails {
				return errFn
			}
			return nil
		})
		committed := get(t, e.db, kv, k) != -1
		t.Logf("%s: Do = %v; write before CALL committed: %v; after: %v", k, err, committed, get(t, e.db, kv, k+"-after") != -1)
		if committed && (!errors.Is(err, dblock.ErrCommitUnknown) || strings.Contains(err.Error(), "not committed")) {
			t.Errorf("%s: fn's write is committed but Do = %v, not ErrCommitUnknown, or says not committed", k, err)
		}
	}
}

// TestReview19AutocommitOffPoolRestoredToOn: a pool whose sessions run
// with autocommit off (DSN autocommit=0, the Params of go-sql-driver) is
// accepted by NewSQL. Once a lock transaction was guarded (a prepared
// statement through SQL), the Locker "restores" autocommit = 1 on the
// connection before it goes back to the caller's pool: the application's
// next statements on that connection commit one by one, and its
// ROLLBACK undoes nothing.
func TestReview19AutocommitOffPoolRestoredToOn(t *testing.T) {
	e := setup(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	app := faultOpen(t, dsnWith(t, func(c *gomysql.Config) {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params["autocommit"] = "0"
	}))
	appDB, err := app.DB()
	if err != nil {
		t.Fatal(err)
	}
	appDB.SetMaxOpenConns(1) // the lock's connection is the application's next one
	side, err := otherPool(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.NewSQL(appDB, dblock.Table(e.table), dblock.SideDB(side))
	if err != nil {
		t.Fatalf("NewSQL on an autocommit=0 pool: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	var before int
	if err := appDB.QueryRowContext(ctx, "SELECT @@autocommit").Scan(&before); err != nil {
		t.Fatal(err)
	}
	_, _ = appDB.ExecContext(ctx, "ROLLBACK")
	err = l.Do(ctx, dblock.Resource("r19-autocommit"), func(ctx context.Context, tx *gorm.DB) error {
		st, err := dblock.SQL(tx).PrepareContext(ctx, "SELECT 1")
		if err != nil {
			return err
		}
		return st.Close()
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	var after int
	if err := appDB.QueryRowContext(ctx, "SELECT @@autocommit").Scan(&after); err != nil {
		t.Fatal(err)
	}
	// The application's "transaction" on its autocommit=0 pool.
	conn, err := appDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.ExecContext(ctx, "INSERT INTO `"+kv+"` (k, v) VALUES ('app', 1)")
	_, _ = conn.ExecContext(ctx, "ROLLBACK")
	_ = conn.Close()
	t.Logf("@@autocommit of the pool's connection: before the lock %d, after %d", before, after)
	if after != before {
		t.Errorf("the lock's connection went back to the pool with autocommit = %d, the pool's sessions had %d", after, before)
	}
	if v := get(t, e.db, kv, "app"); v != -1 {
		t.Errorf("the application's INSERT followed by ROLLBACK on its autocommit=0 pool is committed (v=%d)", v)
	}
}

// TestReview19ImplicitCommitFalsePositives: statements that keep the
// transaction are refused because a word appears anywhere after SET
// ("password", "autocommit" in a user variable's name or a string) or
// because ANALYZE is taken for ANALYZE TABLE (MariaDB's ANALYZE of a
// statement runs it like EXPLAIN does). The error claims they would end
// the lock's transaction.
func TestReview19ImplicitCommitFalsePositives(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	legit := []string{
		"SET @password_hash = SHA2('x', 256)",
		"SET @note = 'autocommit is on'",
		"SET STATEMENT max_statement_time = 5 FOR UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'password'",
		"ANALYZE SELECT * FROM `" + kv + "`",
	}
	for _, q := range legit {
		err := l.Do(ctx, dblock.Resource("r19-fp"), func(ctx context.Context, tx *gorm.DB) error {
			_, err := dblock.SQL(tx).ExecContext(ctx, q)
			return err
		})
		if err != nil {
			t.Errorf("%q in fn: %v; want it run (it does not end the transaction)", q, err)
		}
	}
}

// TestReview19TableNameTripsImplicitCommitGuard: the guard refuses any SET
// statement containing "autocommit" or "password" anywhere, including the
// Locker's own stale-snapshot check ("SET STATEMENT
// innodb_snapshot_isolation = ON FOR SELECT ... FROM `<table>_fence`"),
// which runs through the keeper for a nested Do of a new key and for
// Fencing. A valid lock table name containing "password" makes those
// acquisitions fail with "would end the lock's transaction".
func TestReview19TableNameTripsImplicitCommitGuard(t *testing.T) {
	e := setup(t)
	table := "tb_lock_password_r19"
	testdb.TableNamed(t, e.db, table)
	l, err := dblock.New(e.db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx := ctxT(t)
	err = l.Do(ctx, dblock.Resource("outer"), func(ctx context.Context, tx *gorm.DB) error {
		return l.Do(ctx, dblock.Resource("inner"), func(context.Context, *gorm.DB) error { return nil })
	})
	if err != nil {
		t.Errorf("nested Do of a new key on table %s: %v", table, err)
	}
	err = l.Do(ctx, dblock.Resource("fenced"), func(context.Context, *gorm.DB) error { return nil }, dblock.Fencing())
	if err != nil {
		t.Errorf("Do with Fencing on table %s: %v", table, err)
	}
}
