package dblock

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// review21Wait polls cond every 5 ms until it holds, failing t after d.
func review21Wait(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// review21Running reports whether a statement starting with prefix and
// naming table runs on the server (from another connection).
func review21Running(t *testing.T, db *sql.DB, prefix, table string) bool {
	t.Helper()
	var n int
	err := db.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE CONCAT(?, '%') AND INFO LIKE CONCAT('%', ?, '%')",
		prefix, table).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// review21Fixture is a lock table, a pool to look at the server with, and
// a pool of one connection (connID) for a Locker.
type review21Fixture struct {
	admin     *sql.DB
	lockDB    *gorm.DB
	lockPool  *sql.DB
	connID    int64
	table, st string // the lock table and its session table
}

func review21Setup(t *testing.T) review21Fixture {
	t.Helper()
	db := testdb.Open(t)
	f := review21Fixture{table: testdb.Table(t, db)}
	f.st = schema.SessionTable(f.table)
	testdb.NoLeaks(t, db)
	var err error
	if f.admin, err = db.DB(); err != nil {
		t.Fatal(err)
	}
	f.lockDB = testdb.Open(t)
	if f.lockPool, err = f.lockDB.DB(); err != nil {
		t.Fatal(err)
	}
	f.lockPool.SetMaxOpenConns(1)
	if err := f.lockDB.Raw("SELECT CONNECTION_ID()").Row().Scan(&f.connID); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestReview21CloseOutlivedByPrune shows (FAILS NOW) that Close can
// return while the label writer still runs statements on the side pool:
// Close waits sessionTimeout (2 s) for the write in flight, but the write
// (up to a second of row-lock wait, then its answer) is followed by a
// prune, which writeLabel starts although Close has turned labels off,
// under a sessionTimeout of its own. With the SideDB the user closes after
// Close, the writer then runs on (and logs about) a pool the user believes
// the Locker is done with, and a goroutine of the Locker outlives Close.
//
// Expected: when Close returns, no writer runs (a prune is not started
// once Close began, and Close waits for what runs, or cancels it).
func TestReview21CloseOutlivedByPrune(t *testing.T) {
	f := review21Setup(t)
	admin, lockDB, connID, table, st := f.admin, f.lockDB, f.connID, f.table, f.st
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// tx1 holds the gap where the lock connection's row goes: the label
	// upsert waits for it (at most innodb_lock_wait_timeout=1 s).
	tx1, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx1.Rollback() }()
	if _, err := tx1.ExecContext(ctx, "SELECT * FROM `"+st+"` WHERE conn_id = "+strconv.FormatInt(connID, 10)+" FOR UPDATE"); err != nil {
		t.Fatal(err)
	}

	l, err := New(lockDB, Table(table), Label("review21-close"))
	if err != nil {
		t.Fatal(err)
	}
	l.sessions.pruned.Store(0) // a prune is due after the next write
	if err := l.Do(ctx, Resource("review21-close"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	review21Wait(t, "the label upsert to wait for tx1", 10*time.Second, func() bool {
		return review21Running(t, admin, "SET STATEMENT", st)
	})
	closed := make(chan time.Time, 1)
	go func() { _ = l.Close(); closed <- time.Now() }()
	review21Wait(t, "Close to turn labels off", 10*time.Second, l.sessions.off.Load)
	closeAt := time.Now()

	// A metadata lock on the session table, queued behind the upsert,
	// holds the prune's first read.
	mdl, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer mdl.Close()
	locked := make(chan error, 1)
	go func() {
		_, err := mdl.ExecContext(ctx, "LOCK TABLES `"+st+"` WRITE")
		locked <- err
	}()
	review21Wait(t, "LOCK TABLES to queue", 10*time.Second, func() bool {
		return review21Running(t, admin, "LOCK TABLES", st)
	})
	if err := tx1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-locked; err != nil {
		t.Fatal(err)
	}
	if l.sessions.pauseTo.Load() != 0 {
		t.Fatalf("setup: the label upsert failed (a machine too slow to release tx1 within 1 s): no prune follows")
	}
	var returned time.Time
	select {
	case returned = <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return within 20 s")
	}
	l.sessions.mu.Lock()
	writing := l.sessions.writing
	l.sessions.mu.Unlock()
	pruning := review21Running(t, admin, "SELECT conn_id FROM", st)
	t.Logf("Close returned %v after it turned labels off; writer running then: %v; prune statement on the server: %v",
		returned.Sub(closeAt).Round(time.Millisecond), writing, pruning)
	if writing {
		t.Errorf("Close returned while the label writer still runs (prune on the side pool: %v)", pruning)
	}
	_, _ = mdl.ExecContext(ctx, "UNLOCK TABLES")
	review21Wait(t, "the writer to end", 10*time.Second, func() bool {
		l.sessions.mu.Lock()
		defer l.sessions.mu.Unlock()
		return !l.sessions.writing
	})
}

// TestReview21LabelNeverRetried shows (FAILS NOW) that a lock connection
// whose label write failed (the session table write-locked for a moment:
// a migration, a backup) never gets its label: presetLease queues a
// connection's label only the first time the Locker meets it, the failed
// write leaves no trace to retry, and after the minute's pause the
// connection, met again and again, is not queued again. Pool connections
// live for hours, so Holder and `txlock locks` show no label for them.
// (The queue's overflow, "written when the connection is next met", has
// the same outcome.)
//
// Expected: once the pause is over, the next acquisition on that
// connection writes its label.
func TestReview21LabelNeverRetried(t *testing.T) {
	f := review21Setup(t)
	admin, lockDB, lockPool, connID, table, st := f.admin, f.lockDB, f.lockPool, f.connID, f.table, f.st
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(lockDB, Table(table), Label("review21-retry"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	key := Resource("review21-retry")
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err) // the key's row exists: the next Do needs the lock table only
	}
	l.flushLabels(ctx)
	if _, err := admin.ExecContext(ctx, "DELETE FROM `"+st+"`"); err != nil {
		t.Fatal(err)
	}
	// A fresh Locker on the same pool meets the connection for the first
	// time while the session table is write-locked.
	l2, err := New(lockDB, Table(table), Label("review21-retry"))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	mdl, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer mdl.Close()
	if _, err := mdl.ExecContext(ctx, "LOCK TABLES `"+st+"` WRITE"); err != nil {
		t.Fatal(err)
	}
	if err := l2.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	review21Wait(t, "the label write to fail and pause", 10*time.Second, func() bool { return l2.sessions.pauseTo.Load() != 0 })
	if _, err := mdl.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
		t.Fatal(err)
	}
	l2.sessions.pauseTo.Store(0) // the minute's pause is over

	lockPool.SetMaxOpenConns(2) // one for the lock, one for Holder's probe
	lk, err := l2.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lk.Rollback() }()
	h, err := l2.Holder(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the pause: the lock connection %d (first met during the failure: %d) shows label %q", h.ConnID, connID, h.Label)
	if h.ConnID != connID {
		t.Fatalf("setup: the lock is on connection %d, not %d", h.ConnID, connID)
	}
	if h.Label != "review21-retry" {
		t.Errorf("the connection whose label write failed once has label %q after the pause, for good: its label is never written again", h.Label)
	}
}
