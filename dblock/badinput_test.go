package dblock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// TestNewNilDB: New(nil) is an error, not a panic.
func TestNewNilDB(t *testing.T) {
	verifyNoGoroutineLeak(t)
	l, err := dblock.New(nil)
	if err == nil || l != nil {
		t.Fatalf("New(nil) = %v, %v; want an error", l, err)
	}
	mustContain(t, err, "nil *gorm.DB")
}

// TestNewClosedDB: New on a gorm whose pool is closed fails, saying so.
func TestNewClosedDB(t *testing.T) {
	verifyNoGoroutineLeak(t)
	db := testdb.Open(t)
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	if err := sqlDB.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := dblock.New(db)
	if err == nil {
		_ = l.Close()
		t.Fatal("New on a closed database succeeded")
	}
	mustContain(t, err, "closed")
}

// TestNewInvalidOptions: invalid options fail New with a clear error.
func TestNewInvalidOptions(t *testing.T) {
	e := setup(t)
	for _, c := range []struct {
		name string
		opt  dblock.Option
		want string
	}{
		{"empty table", dblock.Table(""), "table name"},
		{"table with a dash", dblock.Table("tb-lock"), "table name"},
		{"table with a quote", dblock.Table("tb_lock`; DROP TABLE x; --"), "table name"},
		{"table starting with a digit", dblock.Table("1tb"), "table name"},
		{"table too long", dblock.Table(strings.Repeat("t", schema.MaxTableNameLen+1)), "table name"},
		{"nil Logger", dblock.Logger(nil), "Logger"},
		{"nil SideDB", dblock.SideDB(nil), "SideDB"},
		{"Defaults(WaitTimeout(0))", dblock.Defaults(dblock.WaitTimeout(0)), "WaitTimeout"},
		{"Defaults(WaitTimeout(-1s))", dblock.Defaults(dblock.WaitTimeout(-time.Second)), "WaitTimeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := dblock.New(e.db, c.opt)
			if err == nil {
				_ = l.Close()
				t.Fatalf("New(%s) succeeded", c.name)
			}
			mustContain(t, err, c.want)
		})
	}
	// The longest valid name is accepted.
	l, err := dblock.New(e.db, dblock.Table(strings.Repeat("t", schema.MaxTableNameLen)))
	if err != nil {
		t.Fatalf("New with a %d-character table name: %v", schema.MaxTableNameLen, err)
	}
	_ = l.Close()
}

// TestLockTxNotATransaction: LockTx needs an open transaction: nil, the
// pool itself, a committed and a rolled back transaction are
// ErrNoTransaction, and nothing is held or leaked.
func TestLockTxNotATransaction(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	committed := e.db.WithContext(ctx).Begin()
	if err := committed.Commit().Error; err != nil {
		t.Fatal(err)
	}
	rolledBack := e.db.WithContext(ctx).Begin()
	if err := rolledBack.Rollback().Error; err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		tx   *gorm.DB
		want string
	}{
		{"nil", nil, "nil"},
		{"the pool", e.db, "not inside a transaction"},
		{"a session of the pool", e.db.WithContext(ctx).Session(&gorm.Session{}), "not inside a transaction"},
		{"committed", committed, ""},
		{"rolled back", rolledBack, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := l.LockTx(ctx, c.tx, key)
			if !errors.Is(err, dblock.ErrNoTransaction) {
				t.Fatalf("LockTx(%s) = %v, want ErrNoTransaction", c.name, err)
			}
			mustContain(t, err, c.want)
			assertFree(t, l, key)
		})
	}
}

// TestMissingTable: acquisitions on a table that does not exist fail with
// ErrTableMissing, whose message says to run the migrations.
func TestMissingTable(t *testing.T) {
	e := setup(t)
	l, err := dblock.New(e.db, dblock.Table(e.table+"_missing"))
	if err != nil {
		t.Fatalf("New does not check the table, yet: %v", err)
	}
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("order:1")

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	for name, err := range acquireAll(ctx, l, tx, key, nop) {
		if !errors.Is(err, dblock.ErrTableMissing) {
			t.Errorf("%s = %v, want ErrTableMissing", name, err)
			continue
		}
		mustContain(t, err, "migrations")
		if n := mysqlNumber(t, err); n != 1146 {
			t.Errorf("%s: server error %d, want 1146", name, n)
		}
	}
}

// TestCancelledContext: an acquisition with a cancelled context fails with
// context.Canceled before it reaches the server: no row is created.
func TestCancelledContext(t *testing.T) {
	e, l := setupLocker(t)
	key := dblock.Resource("order:1")
	tx := e.db.WithContext(ctxT(t)).Begin()
	defer tx.Rollback()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, err := range acquireAll(ctx, l, tx, key, fnMustNotRun(t)) {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s = %v, want context.Canceled", name, err)
		}
	}
	assertNoRows(t, e)
}

// TestNilArguments: a nil fn, a nil context and a nil *Locker are errors,
// not panics, and nothing reaches the server.
func TestNilArguments(t *testing.T) {
	e, l := setupLocker(t)
	key := dblock.Resource("order:1")
	ctx := ctxT(t)

	mustContain(t, l.Do(ctx, key, nil), "nil fn")
	var nilCtx context.Context
	mustContain(t, l.Do(nilCtx, key, nop), "nil context")
	_, err := l.Lock(nilCtx, key)
	mustContain(t, err, "nil context")
	var nilLocker *dblock.Locker
	mustContain(t, nilLocker.Do(ctx, key, nop), "nil *Locker")
	if err := nilLocker.Close(); err != nil {
		t.Errorf("Close of a nil *Locker = %v", err)
	}
	assertNoRows(t, e)
}

// TestBadWaitTimeout: WaitTimeout(0) or negative is an error for every
// acquisition (NoWait is the way not to wait), and nothing is held.
func TestBadWaitTimeout(t *testing.T) {
	e, l := setupLocker(t)
	key := dblock.Resource("order:1")
	ctx := ctxT(t)
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()

	for _, d := range []time.Duration{0, -time.Second} {
		for name, err := range acquireAll(ctx, l, tx, key, fnMustNotRun(t), dblock.WaitTimeout(d)) {
			if err == nil {
				t.Errorf("%s(WaitTimeout(%v)) succeeded", name, d)
				continue
			}
			mustContain(t, err, "WaitTimeout must be positive")
		}
	}
	assertNoRows(t, e)
	assertFree(t, l, key)
}

// TestClosedLocker: acquisitions after Close fail; Close is idempotent.
func TestClosedLocker(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:1")
	if err := l.Do(ctx, key, nop); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	mustContain(t, l.Do(ctx, key, nop), "closed")
	_, err := l.TryLock(ctx, key)
	mustContain(t, err, "closed")
}
