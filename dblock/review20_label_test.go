package dblock_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// review20HoldMDL takes a metadata lock on table from a connection of db
// that blocks every write to it (LOCK TABLES ... WRITE: what a long
// ALTER TABLE ... ALGORITHM=COPY, or a backup tool, holds), and releases
// it when the test ends or when the returned func is called.
func review20HoldMDL(t *testing.T, db *gorm.DB, table string) func() {
	t.Helper()
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "LOCK TABLES `"+table+"` WRITE"); err != nil {
		_ = conn.Close()
		t.Fatalf("LOCK TABLES %s WRITE: %v", table, err)
	}
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		_, _ = conn.ExecContext(ctx, "UNLOCK TABLES")
		_ = conn.Close()
	}
	t.Cleanup(release)
	return release
}

// TestReview20LabelWriteStallsAcquisition shows (FAILS NOW) that the
// best-effort label write blocks lock acquisitions: a metadata lock on
// <table>_session (a long ALTER TABLE, LOCK TABLES, a backup) makes the
// label INSERT that presetLease sends on a connection new to the Locker
// wait for it, on the lock's context, bounded neither by WaitTimeout (the
// label write runs on lctx, not on the WaitTimeout-bounded prep context)
// nor by anything of its own (innodb_lock_wait_timeout=1 does not bound a
// metadata-lock wait: lock_wait_timeout does, one year by default). A
// free key is not acquired; Do with WaitTimeout(2s) waits until the
// caller's context ends.
//
// Expected: the label is best effort ("A failed write never fails a
// lock"): the free key is granted at once, or at worst within WaitTimeout.
func TestReview20LabelWriteStallsAcquisition(t *testing.T) {
	e := setup(t)
	l := e.locker(t)
	t.Cleanup(func() { _ = l.Close() })
	release := review20HoldMDL(t, otherPool(t), schema.SessionTable(e.table))

	// The caller's context is long (the test's ceiling); WaitTimeout is
	// the bound the caller asked for on acquiring.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	key := dblock.Resource("review20-label-mdl")
	start := time.Now()
	err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.WaitTimeout(2*time.Second))
	took := time.Since(start)
	release()
	t.Logf("Do of a free key while %s is write-locked: %v after %v", schema.SessionTable(e.table), err, took.Round(time.Millisecond))
	if err != nil {
		t.Errorf("Do of a free key failed because the session table (labels, best effort) was locked: %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Do waited until the caller's context ended (%v), past WaitTimeout(2s)", took.Round(time.Millisecond))
	}
}

// TestReview20LabelLockTxStalls shows (FAILS NOW) the caller's-transaction
// path of the same: LockTx writes the label of the caller's connection from
// the side pool under sessionTimeout (2 s), synchronously, and a failed
// write is not remembered, so every LockTx on a connection waits the
// full 2 s while the session table is write-locked.
//
// Expected: a label write never delays a lock by more than a short bound,
// and not on every call.
func TestReview20LabelLockTxStalls(t *testing.T) {
	e := setup(t)
	l := e.locker(t)
	t.Cleanup(func() { _ = l.Close() })
	ctx := ctxT(t)
	// Warm the connection's row creation, so that only the label is left.
	key := dblock.Resource("review20-label-locktx")
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	release := review20HoldMDL(t, otherPool(t), schema.SessionTable(e.table))
	defer release()
	var took []time.Duration
	for range 3 {
		start := time.Now()
		err := e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			return l.LockTx(ctx, tx, key)
		})
		took = append(took, time.Since(start))
		if err != nil {
			t.Fatalf("LockTx: %v", err)
		}
	}
	t.Logf("LockTx of a free key while the session table is write-locked: %v", roundMs(took))
	// Order, not wall clock: a free key's LockTx costs a few round trips;
	// sessionTimeout (2 s) is a thousand times that.
	slow := 0
	for _, d := range took {
		if d >= 2*time.Second {
			slow++
		}
	}
	if slow > 0 {
		t.Errorf("%d of %d LockTx of a free key waited the label write's 2 s timeout", slow, len(took))
	}
}

// review20GormParam opens gorm on the test server with the session
// variable name set to value through the DSN (as an application pinning
// its zone or autocommit would), closed when the test ends.
func review20GormParam(t *testing.T, name, value string) (*gorm.DB, *sql.DB) {
	t.Helper()
	cfg := serverConfig(t)
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params[name] = value
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	testdb.NoLeaks(t, db)
	return db, sqlDB
}

// review20ZonedGorm opens gorm with the session time zone tz.
func review20ZonedGorm(t *testing.T, tz string) *gorm.DB {
	t.Helper()
	db, _ := review20GormParam(t, "time_zone", "'"+tz+"'")
	return db
}

// TestReview20LabelTimeZones shows (FAILS NOW) that labels depend on the
// session time zone: seen is a DATETIME(6) written with NOW(6) (the
// writer's zone) and compared with NOW(6) - Uptime (the reader's zone).
// A holder whose pool runs at -12:00 is read by a Locker whose pool runs
// at +13:00: its row looks 25 hours old, before the server's start, so
// Holder shows no label (and that reader's prune deletes the live row).
//
// Expected: the label of a live holder is shown whatever the sessions'
// zones (write and compare UTC_TIMESTAMP(6), as MinInterval does).
func TestReview20LabelTimeZones(t *testing.T) {
	e := setup(t)
	var uptime int64
	if err := e.db.Raw("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Uptime'").Row().Scan(&uptime); err != nil {
		t.Fatal(err)
	}
	if uptime > 24*3600 {
		t.Skipf("server up %ds: the 25 h zone gap no longer puts the row before the start", uptime)
	}
	west := labelled(t, e, review20ZonedGorm(t, "-12:00"), "pod-west")
	east := labelled(t, e, review20ZonedGorm(t, "+13:00"), "pod-east")
	ctx := ctxT(t)
	key := dblock.Resource("review20-tz")
	lk, err := west.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	var conn int64
	if err := dblock.SQL(lk.Tx()).QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&conn); err != nil {
		t.Fatal(err)
	}
	hw, errW := west.Holder(ctx, key)
	he, errE := east.Holder(ctx, key)
	t.Logf("uptime %ds; holder %d; Holder through the -12:00 Locker: %q %v; through the +13:00 Locker: %q %v", uptime, conn, hw.Label, errW, he.Label, errE)
	if errW != nil || errE != nil {
		t.Fatalf("Holder: %v / %v", errW, errE)
	}
	if hw.ConnID != conn || he.ConnID != conn {
		t.Fatalf("Holder named %d / %d, want %d", hw.ConnID, he.ConnID, conn)
	}
	if hw.Label != "pod-west" {
		t.Errorf("Holder through the holder's own zone: label %q, want pod-west", hw.Label)
	}
	if he.Label != "pod-west" {
		t.Errorf("Holder through a Locker in another session time zone: label %q, want pod-west (the row's seen, in the writer's zone, reads as before the server's start)", he.Label)
	}
}

// TestReview20LabelAutocommitOff: on a pool whose DSN turns autocommit
// off, the label row written before BEGIN must be committed (visible to
// another session) and the session's autocommit must be as the DSN left
// it. HELD (see report): the BEGIN that follows commits it implicitly.
func TestReview20LabelAutocommitOff(t *testing.T) {
	e := setup(t)
	db, sqlDB := review20GormParam(t, "autocommit", "0")
	sqlDB.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = sqlDB.Close() })
	testdb.NoLeaks(t, db)
	l := labelled(t, e, db, "pod-ac0")
	ctx := ctxT(t)
	lk, err := l.TryLock(ctx, dblock.Resource("review20-ac0"))
	if err != nil {
		t.Fatal(err)
	}
	var conn int64
	if err := dblock.SQL(lk.Tx()).QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&conn); err != nil {
		t.Fatal(err)
	}
	if err := lk.Rollback(); err != nil {
		t.Fatal(err)
	}
	var label string
	if err := otherPool(t).Raw("SELECT label FROM `"+schema.SessionTable(e.table)+"` WHERE conn_id = ?", conn).Row().Scan(&label); err != nil {
		t.Fatalf("the label of connection %d, read from another session: %v", conn, err)
	}
	var ac int
	if err := db.Raw("SELECT @@session.autocommit").Row().Scan(&ac); err != nil {
		t.Fatal(err)
	}
	t.Logf("label of %d seen by another session: %q; the pool's autocommit after the lock: %d", conn, label, ac)
	if label != "pod-ac0" || ac != 0 {
		t.Errorf("label %q, autocommit %d; want pod-ac0 and 0", label, ac)
	}
}
