package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// The keeper refuses every statement after one whose error ended the
// transaction, so that nothing the holder sends runs in autocommit. It
// learns of errors from QueryContext's and QueryRowContext's return
// (keeper.answered(sent, row.Err()) in conn.go), but MariaDB sends a
// result set's metadata before it runs a scan: an error met during the
// scan (a deadlock, a stale snapshot 1020, with innodb_rollback_on_timeout
// a lock-wait timeout) reaches the client at rows.Next or Row.Scan, after
// the keeper has recorded a success. The server has rolled the whole
// transaction back; before the fix the keeper did not know, so later
// statements of the holder ran in autocommit, and the final COMMIT
// succeeded (there was nothing to commit): Do returned nil although fn's
// earlier writes were gone and its later ones were committed without the
// lock (which was released halfway).
//
// The library's own statement that does this is the fence read of several
// keys (`key_hash IN (x, y) LOCK IN SHARE MODE`, a range scan): a nested
// DoMulti of two keys in a Do whose fn had read fails its snapshot check
// with 1020 in rows.Next.

func TestReviewStaleSnapshotInFenceScanNotRefused(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	if err := put(e.db, kv, "seen", 0); err != nil {
		t.Fatal(err)
	}
	var nested, after error
	err := l.Do(ctx, dblock.Resource("outer"), func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		var v int64
		if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'seen'").Row().Scan(&v); err != nil {
			return err // a read: the transaction now has a snapshot
		}
		nested = l.DoMulti(ctx, []dblock.Key{dblock.Resource("b"), dblock.Resource("c")}, fnMustNotRun(t))
		after = put(tx, kv, "after", 1)
		return nil // a careless fn, as in rotLockWaitTimeoutLosesOuterLock
	})
	t.Logf("nested DoMulti: %v; write after it: %v; outer Do: %v", nested, after, err)
	if !isAll(nested, dblock.ErrStaleSnapshot, dblock.ErrLockLost) {
		t.Fatalf("nested DoMulti = %v, want ErrStaleSnapshot and ErrLockLost (the setting of the test)", nested)
	}
	if !errors.Is(after, dblock.ErrLockLost) {
		t.Errorf("a write through tx after the stale snapshot rolled the transaction back = %v, want it refused with ErrLockLost", after)
	}
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("outer Do = %v, want ErrLockLost: its transaction was rolled back by the server", err)
	}
	if bv, av := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); bv != -1 || av != -1 {
		t.Errorf("rows before=%d after=%d, want neither (after=1: autocommitted without a lock, before=-1: rolled back, yet Do returned %v)", bv, av, err)
	}
}

// TestReviewDeadlockInFnScanNotRefused is the same with fn's own statement:
// a multi-row locking read chosen as a deadlock victim mid-scan. The
// victim is made certain by the other transaction's weight (it has
// written many rows; InnoDB rolls back the lighter one).
func TestReviewDeadlockInFnScanNotRefused(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	other, provoke, otherDone := deadlockPartner(t, e, ctx, kv)
	started := false
	var scanErr, after error
	err := l.Do(ctx, dblock.Resource("scan"), func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		started = true
		// Lock r1, then wait for r2 inside one scan; the other
		// transaction then asks for r1: a deadlock, whose victim is fn's.
		go provoke("fn's scan to wait for r2")
		rows, err := tx.Raw("SELECT k FROM `" + kv + "` WHERE k IN ('r1', 'r2') ORDER BY k FOR UPDATE").Rows()
		if err != nil {
			scanErr = err
		} else {
			for rows.Next() {
			}
			scanErr = rows.Err()
			rows.Close()
		}
		after = put(tx, kv, "after", 1) // carries on after the failed scan
		return nil
	})
	if !started {
		t.Fatalf("fn failed before the deadlock was set up: %v", err)
	}
	if oerr := <-otherDone; oerr != nil {
		t.Logf("the other transaction's UPDATE: %v", oerr)
	}
	_ = other.Rollback()
	t.Logf("fn's scan: %v; write after it: %v; Do: %v", scanErr, after, err)
	if mysqlNumber(t, scanErr) != 1213 {
		t.Fatalf("fn's scan = %v, want 1213 (the setting of the test)", scanErr)
	}
	if !errors.Is(after, dblock.ErrLockLost) {
		t.Errorf("a write through tx after the deadlock rolled the transaction back = %v, want it refused with ErrLockLost", after)
	}
	if err == nil {
		t.Errorf("Do returned nil although its transaction was rolled back by a deadlock halfway through fn")
	}
	if bv, av := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); bv != -1 || av != -1 {
		t.Errorf("rows before=%d after=%d, want neither (after=1: autocommitted without a lock)", bv, av)
	}
}

// TestReviewDeadlockInPreparedStmtNotRefused: statements of a gorm
// PrepareStmt session on fn's tx run through StmtContext, outside the
// keeper, so it cannot see their errors: a prepared UPDATE chosen as a
// deadlock victim ends the transaction. Before the fix, fn's next (plain)
// write through tx was autocommitted and Do returned nil; now the
// transaction is guarded from its first prepared statement, so that write
// is rolled back and Do reports the loss.
func TestReviewDeadlockInPreparedStmtNotRefused(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	other, provoke, otherDone := deadlockPartner(t, e, ctx, kv)
	started := false
	var updErr, after error
	err := l.Do(ctx, dblock.Resource("prepared"), func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		ptx := tx.Session(&gorm.Session{PrepareStmt: true})
		if err := ptx.Exec("UPDATE `"+kv+"` SET v = v + 1 WHERE k = ?", "r1").Error; err != nil {
			return err
		}
		started = true
		go provoke("fn's UPDATE to wait for r2")
		updErr = ptx.Exec("UPDATE `"+kv+"` SET v = v + 1 WHERE k = ?", "r2").Error
		after = put(tx, kv, "after", 1) // carries on after the failed statement
		return nil
	})
	if !started {
		t.Fatalf("fn failed before the deadlock was set up: %v", err)
	}
	if oerr := <-otherDone; oerr != nil {
		t.Logf("the other transaction's UPDATE: %v", oerr)
	}
	_ = other.Rollback()
	t.Logf("fn's prepared UPDATE: %v; write after it: %v; Do: %v", updErr, after, err)
	if mysqlNumber(t, updErr) != 1213 {
		t.Fatalf("fn's UPDATE = %v, want 1213 (the setting of the test)", updErr)
	}
	// The prepared statement ran outside the keeper's sight, so the write
	// after it may be sent; but the transaction is guarded (autocommit off,
	// a savepoint), so it lands in a new transaction that is rolled back:
	// checked with the rows below.
	t.Logf("the write after the deadlock: %v", after)
	if err == nil {
		t.Errorf("Do returned nil although its transaction was rolled back by a deadlock halfway through fn")
	}
	if bv, av := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); bv != -1 || av != -1 {
		t.Errorf("rows before=%d after=%d, want neither (after=1: autocommitted without a lock)", bv, av)
	}
}

// deadlockPartner seeds kv with r1 and r2 and opens, on another pool, a
// transaction that holds r2 and has written 200 rows (so that InnoDB
// picks the other side of a deadlock as its victim). provoke, run in a
// goroutine before fn's statement that waits for r2, waits until that
// statement waits (what names it) and then asks for r1: a deadlock. Its
// UPDATE's outcome arrives on done.
func deadlockPartner(t *testing.T, e env, ctx context.Context, kv string) (other *gorm.DB, provoke func(what string), done <-chan error) {
	t.Helper()
	for _, k := range []string{"r1", "r2"} {
		if err := put(e.db, kv, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	heavy := e.businessTable(t, "heavy", "id INT PRIMARY KEY, v INT")
	if err := e.db.Exec("INSERT INTO `" + heavy + "` SELECT seq, 0 FROM seq_1_to_200").Error; err != nil {
		t.Fatal(err)
	}
	odb := otherPool(t)
	other = odb.WithContext(ctx).Begin()
	t.Cleanup(func() { other.Rollback() })
	if err := other.Exec("UPDATE `" + heavy + "` SET v = v + 1").Error; err != nil {
		t.Fatal(err)
	}
	if err := other.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r2'").Error; err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	provoke = func(what string) {
		if err := waitLockWait(odb, kv); err != nil {
			ch <- fmt.Errorf("waiting for %s: %w", what, err)
			return
		}
		ch <- other.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r1'").Error
	}
	return other, provoke, ch
}
