package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// TestRun runs the example against the test server.
func TestRun(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	lock := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{DSN: dsn, LockTable: lock, Table: lock + "_wallets", Check: 40 * time.Millisecond, Alice: 20, Bob: 5}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS `" + cfg.Table + "`") })
	var out bytes.Buffer
	ok, err := run(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil || !ok {
		t.Fatalf("run: ok=%v err=%v", ok, err)
	}
}

// While alice's lock is held, bob's withdrawal goes through (before alice's
// lock is released: an order of events, the time is logged) and alice's
// fails with the lock's error, not the service's.
func TestUsersDoNotBlockEachOther(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	lock := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	ctx := context.Background()
	locker, err := dblock.New(db, dblock.Table(lock))
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	w, err := NewWallets(db, lock+"_wallets", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.CreateTable(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.DropTable(context.Background()) })
	for _, u := range []string{"alice", "bob"} {
		if err := w.Set(ctx, u, 100); err != nil {
			t.Fatal(err)
		}
	}
	withdraw := newWithdraw(locker, w)

	held, err := locker.Lock(ctx, dblock.User("alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	start := time.Now()
	if err := withdraw(ctx, WithdrawRequest{UserID: "bob", Amount: 30}); err != nil {
		t.Fatalf("bob while alice is locked: %v", err)
	}
	t.Logf("bob's withdrawal took %v while alice was locked", time.Since(start))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = withdraw(short, WithdrawRequest{UserID: "alice", Amount: 10})
	if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, ErrInsufficientFunds) {
		t.Errorf("alice while locked: %v, want dblock.ErrNotAcquired", err)
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := withdraw(ctx, WithdrawRequest{UserID: "alice", Amount: 500}); !errors.Is(err, ErrInsufficientFunds) {
		t.Errorf("overdraw: %v, want ErrInsufficientFunds", err)
	}
	if b, _ := w.Balance(ctx, "bob"); b != 70 {
		t.Errorf("bob's balance %d, want 70", b)
	}
}
