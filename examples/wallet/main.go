// Command wallet shows per-user locks: concurrent withdrawals from one
// wallet never overdraw it, and withdrawals of different users do not wait
// for each other.
//
// The service, Wallets.Withdraw, is plain code that reads a balance and
// writes the new one; the lock is added around it by the decorator
// decorator.WithLockErr with a user-granularity key (decorator.UserKey).
//
//	go run ./examples/wallet
//
// The server is named by $DBLOCK_DSN (default root@tcp(127.0.0.1:3306)/test).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
	"github.com/txlock/txlock/examples/internal/exampledb"
)

// config is one run.
type config struct {
	DSN       string
	LockTable string
	Table     string        // wallets
	Check     time.Duration // per withdrawal, lock held
	Alice     int           // concurrent withdrawals of 10 from alice's 100
	Bob       int           // concurrent withdrawals of 10 from bob's 100, at the same time
}

func main() {
	cfg := config{DSN: exampledb.DSN(), LockTable: "tb_lock", Table: "demo_wallets"}
	flag.DurationVar(&cfg.Check, "check", 50*time.Millisecond, "time a withdrawal takes while its user's lock is held")
	flag.IntVar(&cfg.Alice, "alice", 20, "concurrent withdrawals of 10 from alice's 100")
	flag.IntVar(&cfg.Bob, "bob", 5, "concurrent withdrawals of 10 from bob's 100")
	flag.Parse()
	ok, err := run(context.Background(), cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wallet:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// newWithdraw decorates the service's Withdraw with a per-user lock.
func newWithdraw(locker *dblock.Locker, w *Wallets) func(context.Context, WithdrawRequest) error {
	return decorator.WithLockErr(locker,
		decorator.UserKey(func(r WithdrawRequest) string { return r.UserID }),
		w.Withdraw,
		dblock.WaitTimeout(30*time.Second))
}

// outcome is what the withdrawals of one user did.
type outcome struct {
	ok, refused, failed int
	last                time.Duration // when the last one returned, after the start
	balance             int64
}

// run runs the withdrawals and writes a report to out. It reports whether
// no wallet was overdrawn or lost an update, and bob finished before alice.
func run(ctx context.Context, cfg config, out io.Writer) (bool, error) {
	db, sqlDB, err := exampledb.OpenMigrated(ctx, cfg.DSN, cfg.LockTable)
	if err != nil {
		return false, err
	}
	defer sqlDB.Close()
	locker, err := dblock.New(db, dblock.Table(cfg.LockTable))
	if err != nil {
		return false, err
	}
	defer locker.Close()
	wallets, err := NewWallets(db, cfg.Table, cfg.Check)
	if err != nil {
		return false, err
	}
	if err := wallets.CreateTable(ctx); err != nil {
		return false, err
	}
	for _, u := range []string{"alice", "bob"} {
		if err := wallets.Set(ctx, u, 100); err != nil {
			return false, err
		}
	}
	withdraw := newWithdraw(locker, wallets)

	users := map[string]int{"alice": cfg.Alice, "bob": cfg.Bob}
	results := map[string]*outcome{"alice": {}, "bob": {}}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	gate := make(chan struct{})
	start := time.Now()
	for user, n := range users {
		for range n {
			wg.Go(func() {
				<-gate
				err := withdraw(ctx, WithdrawRequest{UserID: user, Amount: 10})
				mu.Lock()
				defer mu.Unlock()
				o := results[user]
				o.last = max(o.last, time.Since(start))
				switch {
				case err == nil:
					o.ok++
				case errors.Is(err, ErrInsufficientFunds):
					o.refused++
				default:
					o.failed++
					errs = append(errs, err)
				}
			})
		}
	}
	start = time.Now()
	close(gate)
	wg.Wait()

	fmt.Fprintf(out, "wallet: per-user locks around a plain read-check-write withdrawal (%s per withdrawal under the lock)\n\n", cfg.Check)
	good := true
	for _, user := range slices.Sorted(maps.Keys(users)) {
		o := results[user]
		if o.balance, err = wallets.Balance(ctx, user); err != nil {
			return false, err
		}
		wantOK := min(users[user], 10)
		conserved := 100-int64(o.ok)*10 == o.balance
		fmt.Fprintf(out, "  %-5s  %2d withdrawals of 10 from 100: %2d paid, %2d refused (insufficient funds), %d failed; balance %3d; last answer after %v\n",
			user, users[user], o.ok, o.refused, o.failed, o.balance, o.last.Round(time.Millisecond))
		if o.ok != wantOK || !conserved || o.balance < 0 || o.failed > 0 {
			good = false
			fmt.Fprintf(out, "         WRONG: want %d paid and the balance to equal 100 - 10 x paid\n", wantOK)
		}
	}
	for _, err := range errs {
		fmt.Fprintf(out, "  error: %v\n", err)
	}
	if cfg.Alice > cfg.Bob && results["bob"].last >= results["alice"].last {
		good = false
		fmt.Fprintln(out, "  WRONG: bob waited for alice: different users must not block each other")
	}
	if good {
		fmt.Fprintln(out, "\nOK: no wallet overdrawn or miscounted; bob's withdrawals did not wait for alice's")
	}
	return good, nil
}
