package dblock_test

// Server and session settings users run with: innodb_rollback_on_timeout,
// a DSN readTimeout shorter than a lock wait, innodb_snapshot_isolation
// (the library's guard must neither leak into the pool nor clobber the
// user's own value).

import (
	"context"
	"errors"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// rollbackOnTimeoutOptions start the server of TestRollbackOnTimeout:
// error 1205 (a lock wait timeout, and on MariaDB NOWAIT) rolls back the
// whole transaction, and an unbounded lock wait times out after 1 s.
var rollbackOnTimeoutOptions = []string{"--innodb-rollback-on-timeout=ON", "--innodb-lock-wait-timeout=1"}

// rotEnv is the setting of TestRollbackOnTimeout's subtests.
type rotEnv struct {
	env                  // the throwaway server's pool and lock table
	l     *dblock.Locker // the Locker under test, on env's pool
	odb   *gorm.DB       // another pool of the same server, for third parties
	other *dblock.Locker // a third party's Locker on odb
}

// TestRollbackOnTimeout runs, on a throwaway server with
// innodb_rollback_on_timeout=ON (issue 14 item 1), the acquisitions that
// can end in error 1205 inside a transaction that holds other locks or
// writes. One server (seconds to start) serves every subtest, each with
// its own business table.
func TestRollbackOnTimeout(t *testing.T) {
	verifyNoGoroutineLeak(t)
	start := time.Now()
	srv := testdb.ThrowawayFor(t, rollbackOnTimeoutOptions...)
	t.Logf("server with %q started in %v", rollbackOnTimeoutOptions, time.Since(start).Round(time.Millisecond))
	db := faultOpen(t, srv.DSN())
	var rollback, wait int
	if err := db.Raw("SELECT @@GLOBAL.innodb_rollback_on_timeout, @@GLOBAL.innodb_lock_wait_timeout").Row().Scan(&rollback, &wait); err != nil {
		t.Fatal(err)
	}
	if rollback != 1 || wait != 1 {
		t.Fatalf("server has innodb_rollback_on_timeout=%d innodb_lock_wait_timeout=%d, want 1 and 1", rollback, wait)
	}
	table := testdb.Table(t, db)
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	odb := faultOpen(t, srv.DSN())
	r := rotEnv{
		env:   env{db: db, sqlDB: sqlDB, table: table},
		l:     faultLocker(t, db, table),
		odb:   odb,
		other: faultLocker(t, odb, table),
	}
	t.Run("NoWaitKeepsOuterLock", func(t *testing.T) {
		nestedFailureKeepsOuterLock(t, r, dblock.NoWait())
	})
	t.Run("WaitTimeoutKeepsOuterLock", func(t *testing.T) {
		// max_statement_time (1969) ends only the statement: already right
		// before issue 14, kept as a guard.
		nestedFailureKeepsOuterLock(t, r, dblock.WaitTimeout(300*time.Millisecond))
	})
	t.Run("LockWaitTimeoutLosesOuterLock", func(t *testing.T) { rotLockWaitTimeoutLosesOuterLock(t, r) })
	t.Run("LockTxSaysRolledBack", func(t *testing.T) { rotLockTxSaysRolledBack(t, r) })
	t.Run("FnStatementTimeoutNotAutocommitted", func(t *testing.T) { rotFnStatementTimeoutNotAutocommitted(t, r) })
}

// nestedFailureKeepsOuterLock: a nested Do(b, opts) inside Do(a) while b
// is held elsewhere returns ErrNotAcquired only; the outer lock is kept (a
// third party cannot take a while fn runs) and fn's writes before and
// after the failed acquisition commit with the outer Do.
func nestedFailureKeepsOuterLock(t *testing.T, r rotEnv, opts ...dblock.LockOption) {
	kv := r.kvTable(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("a"), dblock.Resource("b")
	holdKey(t, ctx, r.other, b)
	var nested, outerHeld error
	err := r.l.Do(ctx, a, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		nested = r.l.Do(ctx, b, fnMustNotRun(t), opts...)
		outerHeld = heldByOther(r.other, a)
		return put(tx, kv, "after", 1)
	})
	before, after := get(t, r.db, kv, "before"), get(t, r.db, kv, "after")
	t.Logf("nested: %v; outer: %v; rows before=%d after=%d", nested, err, before, after)
	if err != nil {
		t.Errorf("outer Do = %v, want nil", err)
	}
	if !errors.Is(nested, dblock.ErrNotAcquired) || errors.Is(nested, dblock.ErrLockLost) {
		t.Errorf("nested Do = %v, want ErrNotAcquired and not ErrLockLost", nested)
	}
	if outerHeld != nil {
		t.Errorf("after the nested acquisition failed, the outer lock was gone: %v", outerHeld)
	}
	if before != 1 || after != 1 {
		t.Errorf("fn's writes: before=%d after=%d, want both committed (1) with the outer Do", before, after)
	}
}

// rotLockWaitTimeoutLosesOuterLock: a nested Do(b) with no bound waits
// for the server's innodb_lock_wait_timeout (1 s); its 1205 rolls the
// whole transaction back. The nested Do says so (ErrNotAcquired and
// ErrLockLost), a statement fn then runs through tx fails with ErrLockLost
// instead of being autocommitted, and the outer Do returns ErrLockLost
// although fn returned nil. None of fn's writes are in the table.
func rotLockWaitTimeoutLosesOuterLock(t *testing.T, r rotEnv) {
	kv := r.kvTable(t)
	ctx := cancelOnly(t) // no deadline: the server's 1 s bounds the wait
	a, b := dblock.Resource("a"), dblock.Resource("b")
	holdKey(t, ctxT(t), r.other, b)
	var nested, stmt error
	var waited time.Duration
	err := r.l.Do(ctx, a, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		start := time.Now()
		nested = r.l.Do(ctx, b, fnMustNotRun(t))
		waited = time.Since(start)
		stmt = put(tx, kv, "after", 1)
		return nil // a careless fn: the outer Do must report the loss itself
	})
	t.Logf("nested Do after %v: %v; statement after it: %v; outer Do: %v", waited.Round(time.Millisecond), nested, stmt, err)
	if !isAll(nested, dblock.ErrNotAcquired, dblock.ErrLockLost) {
		t.Errorf("nested Do = %v, want ErrNotAcquired and ErrLockLost (1205 rolled the whole transaction back)", nested)
	}
	wantLost(t, "a statement through tx after the loss", stmt)
	wantLost(t, "outer Do", err)
	if n := rowsOf(t, r.db, kv); n != 0 {
		t.Errorf("%d of fn's rows are in the table (after=%d: autocommitted without a lock), want none",
			n, get(t, r.db, kv, "after"))
	}
}

// rotLockTxSaysRolledBack: LockTx in a caller's own transaction that waits
// out the server's lock wait timeout: the error is ErrNotAcquired and says
// that the transaction was rolled back; when the transaction held another
// lock through the library, it is ErrLockLost too.
func rotLockTxSaysRolledBack(t *testing.T, r rotEnv) {
	kv := r.kvTable(t)
	ctx := cancelOnly(t)
	a, b := dblock.Resource("a"), dblock.Resource("b")
	holdKey(t, ctxT(t), r.other, b)
	for _, heldBefore := range []bool{false, true} {
		tx := r.db.WithContext(ctx).Begin()
		if tx.Error != nil {
			t.Fatal(tx.Error)
		}
		if heldBefore {
			if err := r.l.LockTx(ctx, tx, a, dblock.NoPriorReads()); err != nil {
				tx.Rollback()
				t.Fatalf("LockTx(a): %v", err)
			}
		}
		if err := put(tx, kv, "caller", 1); err != nil {
			tx.Rollback()
			t.Fatal(err)
		}
		err := r.l.LockTx(ctx, tx, b, dblock.NoPriorReads())
		tx.Rollback()
		t.Logf("held a before: %v; LockTx(b) = %v", heldBefore, err)
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Errorf("held a before: %v; LockTx(b) = %v, want ErrNotAcquired", heldBefore, err)
		}
		if err != nil {
			mustContain(t, err, "rolled back")
		}
		if heldBefore && !errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("LockTx(b) in a transaction holding a = %v, want ErrLockLost too", err)
		}
		if v := get(t, r.db, kv, "caller"); v != -1 {
			t.Errorf("the caller's write is in the table (%d): the transaction was not rolled back?", v)
		}
	}
}

// rotFnStatementTimeoutNotAutocommitted is the "Also" of issue 14 on this
// server: fn's own statement waits out the lock wait timeout on a row a
// third party holds, and 1205 rolls fn's transaction back. The lock is
// lost: a write fn then makes through tx fails with ErrLockLost and is not
// autocommitted, Do returns ErrLockLost, and the key is free.
func rotFnStatementTimeoutNotAutocommitted(t *testing.T, r rotEnv) {
	kv := r.kvTable(t)
	if err := put(r.db, kv, "row", 0); err != nil {
		t.Fatal(err)
	}
	ctx := cancelOnly(t)
	a := dblock.Resource("a")
	third := r.odb.WithContext(ctxT(t)).Begin()
	defer third.Rollback()
	var v int64
	if err := third.Raw("SELECT v FROM `" + kv + "` WHERE k = 'row' FOR UPDATE").Row().Scan(&v); err != nil {
		t.Fatal(err)
	}
	var upd, after error
	err := r.l.Do(ctx, a, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		upd = tx.Exec("UPDATE `" + kv + "` SET v = 1 WHERE k = 'row'").Error
		after = put(tx, kv, "after", 1)
		return nil
	})
	third.Rollback()
	t.Logf("fn's UPDATE: %v; write after it: %v; Do: %v", upd, after, err)
	if n := mysqlNumber(t, upd); n != 1205 {
		t.Fatalf("fn's UPDATE failed with %d, want 1205 (the setting of the test)", n)
	}
	wantLost(t, "a write through tx after the 1205", after)
	wantLost(t, "Do", err)
	if bv, av := get(t, r.db, kv, "before"), get(t, r.db, kv, "after"); bv != -1 || av != -1 {
		t.Errorf("rows before=%d after=%d, want neither (after=1: autocommitted without a lock)", bv, av)
	}
	assertFree(t, r.other, a)
}

// TestReadTimeoutShorterThanWait (issue 14 item 11): with the DSN's
// readTimeout (1 s) shorter than the wait asked for, the acquisition ends
// with ErrNotAcquired (not the driver's "invalid connection"), and the
// waiting statement leaves the server's queue while the holder still holds
// the key, instead of staying queued until its own server-side bound
// (WaitTimeout(30s): far above the 10 s the test gives it to go).
func TestReadTimeoutShorterThanWait(t *testing.T) {
	e := setup(t)
	db := faultOpen(t, dsnWith(t, func(c *gomysql.Config) { c.ReadTimeout = time.Second }))
	l := faultLocker(t, db, e.table)
	holder := e.locker(t)
	defer holder.Close()
	ctx := ctxWithin(t, time.Minute)
	key := dblock.Resource("k")
	h := holdKey(t, ctx, holder, key)

	start := time.Now()
	err := l.Do(ctx, key, fnMustNotRun(t), dblock.WaitTimeout(30*time.Second))
	returned := time.Since(start)
	t.Logf("Do returned after %v: %v", returned.Round(time.Millisecond), err)
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Errorf("Do = %v, want ErrNotAcquired", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws := lockWaits(t, e.sqlDB, e.table)
		if len(ws) == 0 {
			t.Logf("the waiting statement left the queue %v after Do returned", time.Since(start.Add(returned)).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the abandoned wait is still queued 10 s after Do returned: %v", ws)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.Err() != nil {
		t.Fatalf("the holder lost its lock meanwhile: %v", h.Err())
	}
}

// snapshotIsolation returns the session's innodb_snapshot_isolation as
// seen through db (with a pool of one connection: that connection).
func snapshotIsolation(t *testing.T, db *gorm.DB) int {
	t.Helper()
	var v int
	if err := db.Raw("SELECT @@SESSION.innodb_snapshot_isolation").Row().Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSnapshotGuardDoesNotLeakFromDerivedHandle (issue 14 item 12): LockTx
// given a handle derived from the caller's transaction (tx.WithContext, as
// repositories do) must not leave innodb_snapshot_isolation turned on in
// the pool once the caller commits the original: a later, unrelated
// transaction on that connection that reads, then updates a row another
// session changed meanwhile, must succeed (no 1020).
func TestSnapshotGuardDoesNotLeakFromDerivedHandle(t *testing.T) {
	e, l, global := oneSession(t)
	if global != 0 {
		t.Skipf("the server's global innodb_snapshot_isolation is %d: the leak cannot be seen", global)
	}
	ctx := ctxT(t)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "r", 0); err != nil {
		t.Fatal(err)
	}
	other := otherPool(t)
	before := snapshotIsolation(t, e.db)
	err := e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return l.LockTx(ctx, tx.WithContext(ctx), dblock.Resource("a"))
	})
	if err != nil {
		t.Fatal(err)
	}
	after := snapshotIsolation(t, e.db)
	t.Logf("innodb_snapshot_isolation on the pool's connection: %d before, %d after", before, after)
	if after != before {
		t.Errorf("innodb_snapshot_isolation on the pooled connection: %d after the transaction, was %d", after, before)
	}
	// An unrelated transaction on the same connection.
	err = e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if v := get(t, tx, kv, "r"); v != 0 {
			t.Fatalf("read %d, want 0", v)
		}
		if err := put(other, kv, "r", 10); err != nil {
			t.Fatal(err)
		}
		return tx.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r'").Error
	})
	if err != nil {
		t.Errorf("an unrelated transaction after the lock's: %v (1020: the guard leaked into the pool)", err)
	}
}

// TestSnapshotIsolationSetInDSNKept (issue 14 item 13): a DSN that turns
// innodb_snapshot_isolation on keeps it on after every acquisition path;
// the guard must restore the session's previous value, not the server's
// default.
func TestSnapshotIsolationSetInDSNKept(t *testing.T) {
	e := setup(t)
	var global int
	if err := e.db.Raw("SELECT @@GLOBAL.innodb_snapshot_isolation").Row().Scan(&global); err != nil {
		t.Skipf("server without innodb_snapshot_isolation: %v", err)
	}
	db := faultOpen(t, dsnWith(t, func(c *gomysql.Config) {
		c.Params = map[string]string{"innodb_snapshot_isolation": "ON"}
	}))
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(1)
	l := faultLocker(t, db, e.table)
	ctx := ctxT(t)
	a, b := dblock.Resource("a"), dblock.Resource("b")
	noop := func(context.Context, *gorm.DB) error { return nil }
	paths := []struct {
		name string
		run  func() error
	}{
		{"LockTx", func() error {
			return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return l.LockTx(ctx, tx, a) })
		}},
		{"Do under WithTx", func() error {
			return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return l.Do(dblock.WithTx(ctx, tx), a, noop) })
		}},
		{"nested Do of another key", func() error {
			return l.Do(ctx, a, func(ctx context.Context, _ *gorm.DB) error { return l.Do(ctx, b, noop) })
		}},
		{"Do", func() error { return l.Do(ctx, a, noop) }},
		{"Lock", func() error {
			k, err := l.Lock(ctx, a)
			if err != nil {
				return err
			}
			return k.Commit()
		}},
	}
	if v := snapshotIsolation(t, db); v != 1 {
		t.Fatalf("the DSN's session has innodb_snapshot_isolation = %d, want 1", v)
	}
	for _, p := range paths {
		// Each path starts from the DSN's value, whatever an earlier one did.
		if err := db.Exec("SET SESSION innodb_snapshot_isolation = ON").Error; err != nil {
			t.Fatal(err)
		}
		if err := p.run(); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		if v := snapshotIsolation(t, db); v != 1 {
			t.Errorf("after %s the session has innodb_snapshot_isolation = %d, want the DSN's 1 (global %d)", p.name, v, global)
		}
	}
}
