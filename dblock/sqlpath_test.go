package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// The database/sql path: NewSQL, SQL and Locker.Tx, with the guarantees of
// the gorm path.

// sqlLocker returns a Locker made by NewSQL on the test's pool, with a
// side pool of its own, closed when the test ends.
func sqlLocker(t *testing.T, e env) *dblock.Locker {
	t.Helper()
	side, err := otherPool(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.NewSQL(e.sqlDB, dblock.Table(e.table), dblock.SideDB(side))
	if err != nil {
		t.Fatalf("NewSQL: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// sqlPut writes k=v in table through q.
func sqlPut(ctx context.Context, q gorm.ConnPool, table, k string, v int64) error {
	_, err := q.ExecContext(ctx, "INSERT INTO `"+table+"` (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)", k, v)
	return err
}

// connID returns the server's id of the connection q runs on.
func connID(t *testing.T, ctx context.Context, q gorm.ConnPool) int64 {
	t.Helper()
	var id int64
	if err := q.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatalf("CONNECTION_ID(): %v", err)
	}
	return id
}

// NewSQL: bad input fails with the library's words, not a panic; a pool
// without SideDB is refused naming SideDB, and so is a SideDB on another
// database (which used to be taken: key rows were then created in the
// other database's table, and acquisitions failed with ErrTableMissing or
// "disappeared 3 times"); Close leaves both pools open.
func TestNewSQL(t *testing.T) {
	e := setup(t)
	if _, err := dblock.NewSQL(nil); err == nil {
		t.Error("NewSQL(nil) succeeded")
	} else {
		mustContain(t, err, "dblock: NewSQL: nil *sql.DB")
	}
	closed, err := otherPool(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	_ = closed.Close()
	if _, err := dblock.NewSQL(closed, dblock.SideDB(e.sqlDB)); err == nil {
		t.Error("NewSQL of a closed *sql.DB succeeded")
	} else {
		mustContain(t, err, "dblock: NewSQL", "closed")
	}
	_, err = dblock.NewSQL(e.sqlDB, dblock.Table(e.table))
	mustContain(t, err, "dblock: NewSQL: a *sql.DB does not tell its DSN", "SideDB")
	_, err = dblock.NewSQL(e.sqlDB, dblock.Table(e.table), dblock.SideDB(e.sqlDB))
	mustContain(t, err, "dblock: NewSQL: SideDB is the pool the Locker locks on")

	elsewhere, err := secondDatabase(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	_, err = dblock.NewSQL(e.sqlDB, dblock.Table(e.table), dblock.SideDB(elsewhere))
	mustContain(t, err, "dblock: NewSQL: the SideDB pool uses database", "open it on the same database")

	side, err := otherPool(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.NewSQL(e.sqlDB, dblock.Table(e.table), dblock.SideDB(side))
	if err != nil {
		t.Fatal(err)
	}
	assertFree(t, l, dblock.Resource("k"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.sqlDB.Ping(); err != nil {
		t.Errorf("the caller's pool after Close: %v", err)
	}
	if err := side.Ping(); err != nil {
		t.Errorf("the SideDB pool after Close: %v", err)
	}
}

// Do and Lock of a NewSQL Locker: statements through SQL(tx) run in the
// lock's transaction (commit with the release, dropped by a rollback), and
// a nested Do through fn's context joins it.
func TestSQLDoAndLock(t *testing.T) {
	e := setup(t)
	l := sqlLocker(t, e)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("k")

	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		q := dblock.SQL(tx)
		if err := heldByOther(l, key); err != nil {
			t.Error(err)
		}
		if inScope, ok := dblock.TxFrom(ctx); !ok || dblock.SQL(inScope) != q {
			t.Error("SQL of TxFrom(fn's ctx) is not SQL of fn's tx")
		}
		if err := sqlPut(ctx, q, kv, "do", 1); err != nil {
			return err
		}
		outer := connID(t, ctx, q)
		return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			if inner := connID(t, ctx, dblock.SQL(tx)); inner != outer {
				t.Errorf("nested Do of the held key runs on connection %d, want the outer transaction's %d", inner, outer)
			}
			return sqlPut(ctx, dblock.SQL(tx), kv, "nested", 1)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if get(t, e.db, kv, "do") != 1 || get(t, e.db, kv, "nested") != 1 {
		t.Error("writes through SQL(tx) in Do were not committed")
	}

	lk, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := sqlPut(ctx, dblock.SQL(lk.Tx()), kv, "dropped", 1); err != nil {
		t.Fatal(err)
	}
	if err := lk.Rollback(); err != nil {
		t.Fatal(err)
	}
	lk, err = l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	if err := sqlPut(ctx, dblock.SQL(lk.Tx()), kv, "kept", 1); err != nil {
		t.Fatal(err)
	}
	if err := lk.Commit(); err != nil {
		t.Fatal(err)
	}
	if get(t, e.db, kv, "dropped") != -1 || get(t, e.db, kv, "kept") != 1 {
		t.Error("writes through SQL(lk.Tx()): want the rolled back one absent, the committed one present")
	}
}

// Locker.Tx: a lock in a *sql.Tx the caller began is held until that
// transaction ends (another Locker's TryLock fails meanwhile), commits and
// rolls back with it, is reentrant through the context and remembered per
// *sql.Tx whatever handle reaches it, and a transaction that read before
// it is refused.
func TestSQLCallerTx(t *testing.T) {
	e := setup(t)
	l := sqlLocker(t, e)
	other := e.locker(t)
	defer other.Close()
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("k")

	t.Run("handles of two transactions", func(t *testing.T) {
		// Each handle has a Statement of its own: Locker.Tx once changed
		// the one all handles of the Locker share.
		tx1, err := e.sqlDB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx1.Rollback()
		tx2, err := e.sqlDB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx2.Rollback()
		h1 := l.Tx(tx1)
		if h2 := l.Tx(tx2); dblock.SQL(h1) != tx1 || dblock.SQL(h2) != tx2 {
			t.Error("Locker.Tx(tx2) changed the transaction of Locker.Tx(tx1)")
		}
	})

	for _, commit := range []bool{false, true} {
		tx, err := e.sqlDB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		tctx := dblock.WithTx(ctx, l.Tx(tx))
		if err := l.LockTx(tctx, l.Tx(tx), key, dblock.Fencing()); err != nil {
			_ = tx.Rollback()
			t.Fatalf("LockTx: %v", err)
		}
		token, ok := dblock.TokenFrom(tctx, key)
		if !ok {
			t.Error("no fencing token after LockTx with Fencing")
		}
		if err := heldByOther(other, key); err != nil {
			t.Error(err)
		}
		// Another handle on tx, in a context that never saw the first:
		// the key is known held (no new token), and Do joins tx.
		err = l.Do(dblock.WithTx(ctx, l.Tx(tx)), key, func(ctx context.Context, jtx *gorm.DB) error {
			if got, _ := dblock.TokenFrom(ctx, key); got != token {
				t.Errorf("a second handle on the *sql.Tx took token %d, want the held key's %d", got, token)
			}
			if dblock.SQL(jtx) != tx {
				t.Error("SQL(fn's tx) under WithTx(Locker.Tx(tx)) is not the caller's *sql.Tx")
			}
			return sqlPut(ctx, dblock.SQL(jtx), kv, "caller", 1)
		}, dblock.Fencing())
		if err != nil {
			t.Fatalf("Do joining the caller's *sql.Tx: %v", err)
		}
		if err := heldByOther(other, key); err != nil {
			t.Errorf("after the joined Do returned: %v", err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := freeForOther(other, key); err != nil {
			t.Error(err)
		}
		want := int64(-1)
		if commit {
			want = 1
		}
		if got := get(t, e.db, kv, "caller"); got != want {
			t.Errorf("commit=%v: the caller's write is %d, want %d", commit, got, want)
		}
	}

	t.Run("read before the lock", func(t *testing.T) {
		tx, err := e.sqlDB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		var n int64
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM `"+kv+"`").Scan(&n); err != nil {
			t.Fatal(err)
		}
		err = l.LockTx(ctx, l.Tx(tx), key)
		t.Logf("LockTx after a read: %v", err)
		if !errors.Is(err, dblock.ErrStaleSnapshot) {
			t.Errorf("LockTx in a *sql.Tx that read first = %v, want ErrStaleSnapshot", err)
		}
	})
}

// Statements through SQL of a lost lock's transaction are refused with
// the loss, whatever the method; a refused QueryRow used to fail with a
// bare "context canceled" (database/sql builds the Row from the context's
// error, not its cause), through gorm too.
func TestSQLAfterLossRefused(t *testing.T) {
	e := setup(t)
	l := sqlLocker(t, e)
	kv := e.kvTable(t)
	lctx, cancel := context.WithCancel(ctxT(t))
	lk, err := l.Lock(lctx, dblock.Resource("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	cancel()
	<-lk.Lost()
	ctx := ctxT(t)
	q := dblock.SQL(lk.Tx())
	wantLost(t, "ExecContext", sqlPut(ctx, q, kv, "after", 1))
	rows, err := q.QueryContext(ctx, "SELECT 1")
	if err == nil {
		rows.Close()
	}
	wantLost(t, "QueryContext", err)
	var x int
	wantLost(t, "QueryRowContext", q.QueryRowContext(ctx, "SELECT 1").Scan(&x))
	st, err := q.PrepareContext(ctx, "SELECT 1")
	if err == nil {
		st.Close()
	}
	wantLost(t, "PrepareContext", err)
	wantLost(t, "gorm's Row", lk.Tx().Raw("SELECT 1").Row().Scan(&x))
	if n := rowsOf(t, e.db, kv); n != 0 {
		t.Errorf("%d rows written after the loss", n)
	}
}

// A statement prepared through SQL runs outside the keeper: the
// transaction must be guarded as for gorm's prepared statements, or a
// prepared statement that ends the transaction (here a procedure that
// commits, which releases the lock, and which the check of a statement's
// first words cannot see) leaves the next statements in autocommit,
// committed without the lock, and Do reports success.
func TestSQLPreparedStatementGuarded(t *testing.T) {
	e := setup(t)
	l := sqlLocker(t, e)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	proc := e.table + "_commit"
	if err := e.db.Exec("CREATE PROCEDURE `" + proc + "`() COMMIT").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.db.Exec("DROP PROCEDURE IF EXISTS `" + proc + "`").Error })
	err := l.Do(ctx, dblock.Resource("k"), func(ctx context.Context, tx *gorm.DB) error {
		st, err := dblock.SQL(tx).PrepareContext(ctx, "CALL `"+proc+"`()")
		if err != nil {
			return err
		}
		defer st.Close()
		if _, err := st.ExecContext(ctx); err != nil {
			return err
		}
		return sqlPut(ctx, dblock.SQL(tx), kv, "after-commit", 1)
	})
	t.Logf("Do: %v", err)
	if err == nil {
		t.Error("Do after its transaction was committed by a prepared statement succeeded")
	}
	if !errors.Is(err, dblock.ErrCommitUnknown) || !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Do = %v, want ErrCommitUnknown and ErrLockLost: the procedure committed what fn wrote before it", err)
	}
	if got := get(t, e.db, kv, "after-commit"); got != -1 {
		t.Error("a write after the transaction ended was committed outside the lock")
	}
}

// Bad input to SQL and Locker.Tx fails with ErrNoTransaction, not a panic.
func TestSQLBadInput(t *testing.T) {
	e := setup(t)
	l := sqlLocker(t, e)
	ctx := ctxT(t)
	key := dblock.Resource("k")
	var x int
	q := dblock.SQL(nil)
	_, execErr := q.ExecContext(ctx, "DO 1")
	_, queryErr := q.QueryContext(ctx, "DO 1")
	_, prepErr := q.PrepareContext(ctx, "DO 1")
	for what, err := range map[string]error{
		"SQL(nil).ExecContext":     execErr,
		"SQL(nil).QueryContext":    queryErr,
		"SQL(nil).PrepareContext":  prepErr,
		"SQL(nil).QueryRowContext": q.QueryRowContext(ctx, "DO 1").Scan(&x),
		"SQL(&gorm.DB{})":          dblock.SQL(&gorm.DB{}).QueryRowContext(ctx, "DO 1").Err(),
		"LockTx(Tx(nil))":          l.LockTx(ctx, l.Tx(nil), key),
		"Do under WithTx(Tx(nil))": l.Do(dblock.WithTx(ctx, l.Tx(nil)), key, fnMustNotRun(t)),
		"Tx(nil).Exec":             l.Tx(nil).Exec("DO 1").Error,
	} {
		if !errors.Is(err, dblock.ErrNoTransaction) {
			t.Errorf("%s = %v, want ErrNoTransaction", what, err)
		}
	}
	var nilLocker *dblock.Locker
	if nilLocker.Tx(nil) != nil {
		t.Error("Tx of a nil *Locker is not nil")
	}
	tx, err := e.sqlDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	err = l.LockTx(ctx, l.Tx(tx), key)
	t.Logf("LockTx in a committed *sql.Tx: %v", err)
	if !errors.Is(err, dblock.ErrNoTransaction) {
		t.Errorf("LockTx in a committed *sql.Tx = %v, want ErrNoTransaction", err)
	}
	assertFree(t, l, key)
}
