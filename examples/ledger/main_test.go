package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// testServer gives the test a gorm pool on the test server (for the
// test's own checks), a lock table of its own, and the server's DSN.
func testServer(t *testing.T) (*gorm.DB, string, string) {
	t.Helper()
	db := testdb.Open(t)
	lock := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	return db, lock, dsn
}

// TestRun runs the example: 16 goroutines of transfers, deposits and
// withdrawals on 4 accounts, through the three ways of holding a lock;
// every balance must be exact.
func TestRun(t *testing.T) {
	t.Parallel()
	db, lock, dsn := testServer(t)
	cfg := config{DSN: dsn, LockTable: lock, Prefix: lock + "_l", Accounts: 4, Workers: 16, Ops: 15, Check: time.Millisecond, Seed: 1}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS `" + cfg.Prefix + "_accounts`, `" + cfg.Prefix + "_entries`") })
	var out bytes.Buffer
	ok, err := run(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil || !ok {
		t.Fatalf("run: ok=%v err=%v", ok, err)
	}
}

// Each way the ledger holds an account's lock really takes it: while
// another Locker holds the account, Transfer, Deposit and Withdraw fail
// with the lock's error and change nothing; once it is released they go
// through.
func TestOperationsWaitForTheAccount(t *testing.T) {
	t.Parallel()
	gdb, lock, dsn := testServer(t)
	ctx := context.Background()
	db, side, err := openDB(ctx, dsn, lock)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	defer side.Close()
	locker, err := dblock.NewSQL(db.DB, dblock.Table(lock), dblock.SideDB(side))
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	l, err := NewLedger(db, locker, lock+"_l", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTables(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DropTables(context.Background()) })
	for id := range int64(2) {
		if err := l.Open(ctx, id, 100); err != nil {
			t.Fatal(err)
		}
	}
	other, err := dblock.New(gdb, dblock.Table(lock))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	held, err := other.Lock(ctx, accountKey(0))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	for name, op := range map[string]func(context.Context) error{
		"Transfer": func(ctx context.Context) error { return l.Transfer(ctx, 1, 0, 10) },
		"Deposit":  func(ctx context.Context) error { return l.Deposit(ctx, 0, 10) },
		"Withdraw": func(ctx context.Context) error { return l.Withdraw(ctx, 0, 10) },
	} {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := op(short)
		cancel()
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Errorf("%s while the account is held: %v, want dblock.ErrNotAcquired", name, err)
		}
	}
	for id := range int64(2) {
		if b, err := l.Balance(ctx, id); err != nil || b != 100 {
			t.Errorf("account %d after the refused operations: %d, %v; want 100", id, b, err)
		}
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := l.Transfer(ctx, 1, 0, 10); err != nil {
		t.Fatal(err)
	}
	if err := l.Deposit(ctx, 0, 5); err != nil {
		t.Fatal(err)
	}
	if err := l.Withdraw(ctx, 0, 500); !errors.Is(err, ErrInsufficientFunds) {
		t.Errorf("overdraw: %v, want ErrInsufficientFunds", err)
	}
	if err := l.Withdraw(ctx, 0, 15); err != nil {
		t.Fatal(err)
	}
	if b, _ := l.Balance(ctx, 0); b != 100 {
		t.Errorf("account 0: %d, want 100 + 10 + 5 - 15", b)
	}
	if es, _ := l.Entries(ctx, 0); len(es) != 3 {
		t.Errorf("account 0 has %d entries, want 3: %+v", len(es), es)
	}
}
