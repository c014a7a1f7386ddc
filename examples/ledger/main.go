// Command ledger shows txlock in a service written with database/sql and
// sqlx, without gorm: concurrent transfers, deposits and withdrawals
// between a few accounts, each a read-check-write of balances computed in
// Go, never lose money or overdraw an account.
//
// The Locker is made from the service's own pool with dblock.NewSQL. The
// three ways to hold an account's lock are all here:
//
//   - Transfer: Locker.DoMulti, queries on dblock.SQL(tx) (sqlc's DBTX).
//   - Withdraw: a Lock handle, queries on dblock.SQL(lk.Tx()).
//   - Deposit: the service's own *sqlx.Tx, locked with LockTx and Locker.Tx.
//
// Run it with:
//
//	go run ./examples/ledger
//
// The server is named by $DBLOCK_DSN (default root@tcp(127.0.0.1:3306)/test).
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/examples/internal/exampledb"
	"github.com/txlock/txlock/migrations"
)

// config is one run.
type config struct {
	DSN       string
	LockTable string
	Prefix    string        // the ledger's tables: Prefix_accounts, Prefix_entries
	Accounts  int           // accounts, each opened with 100
	Workers   int           // concurrent goroutines
	Ops       int           // operations per goroutine
	Check     time.Duration // per operation, lock held
	Seed      uint64
}

func main() {
	cfg := config{DSN: exampledb.DSN(), LockTable: "tb_lock", Prefix: "demo_ledger", Seed: uint64(time.Now().UnixNano())}
	flag.IntVar(&cfg.Accounts, "accounts", 4, "accounts, each opened with 100")
	flag.IntVar(&cfg.Workers, "workers", 16, "concurrent goroutines")
	flag.IntVar(&cfg.Ops, "ops", 20, "operations per goroutine")
	flag.DurationVar(&cfg.Check, "check", 5*time.Millisecond, "time an operation takes while its locks are held")
	flag.Parse()
	ok, err := run(context.Background(), cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// openDB opens the service's sqlx pool on dsn and the Locker's side pool
// on the same connector (a *sql.DB does not tell its DSN, so NewSQL is
// given its side pool), and migrates the lock table.
func openDB(ctx context.Context, dsn, lockTable string) (*sqlx.DB, *sql.DB, error) {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the DSN: %w", err)
	}
	connector, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, nil, err
	}
	db := sqlx.NewDb(sql.OpenDB(connector), "mysql")
	side := sql.OpenDB(connector)
	side.SetMaxOpenConns(4)
	if _, err := migrations.Up(ctx, db.DB, migrations.Table(lockTable)); err != nil {
		_ = db.Close()
		_ = side.Close()
		return nil, nil, err
	}
	return db, side, nil
}

// tally counts what the workers did.
type tally struct {
	mu                             sync.Mutex
	transfers, deposits, withdraws int
	refused                        int   // ErrInsufficientFunds
	deposited, withdrawn           int64 // sums of the successful ones
	errs                           []error
}

// run runs the workers, checks the books and writes a report to out. It
// reports whether every account's balance is exact.
func run(ctx context.Context, cfg config, out io.Writer) (bool, error) {
	if cfg.Accounts < 2 || cfg.Workers < 1 || cfg.Ops < 0 {
		return false, fmt.Errorf("want at least 2 accounts and 1 worker, got %d and %d", cfg.Accounts, cfg.Workers)
	}
	db, side, err := openDB(ctx, cfg.DSN, cfg.LockTable)
	if err != nil {
		return false, err
	}
	defer db.Close()
	defer side.Close()
	locker, err := dblock.NewSQL(db.DB, dblock.Table(cfg.LockTable), dblock.SideDB(side))
	if err != nil {
		return false, err
	}
	defer locker.Close()
	ledger, err := NewLedger(db, locker, cfg.Prefix, cfg.Check)
	if err != nil {
		return false, err
	}
	if err := ledger.CreateTables(ctx); err != nil {
		return false, err
	}
	const opening = 100
	for id := range int64(cfg.Accounts) {
		if err := ledger.Open(ctx, id, opening); err != nil {
			return false, err
		}
	}

	var t tally
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
		wg.Go(func() {
			for range cfg.Ops {
				t.note(ledger.random(ctx, rng, int64(cfg.Accounts)))
			}
		})
	}
	wg.Wait()

	fmt.Fprintf(out, "ledger: %d goroutines x %d operations on %d accounts (sqlx, dblock.NewSQL): %d transfers, %d deposits (+%d), %d withdrawals (-%d), %d refused for insufficient funds\n",
		cfg.Workers, cfg.Ops, cfg.Accounts, t.transfers, t.deposits, t.deposited, t.withdraws, t.withdrawn, t.refused)
	good := len(t.errs) == 0
	for _, err := range t.errs {
		fmt.Fprintf(out, "  error: %v\n", err)
	}
	var total int64
	for id := range int64(cfg.Accounts) {
		balance, err := ledger.Balance(ctx, id)
		if err != nil {
			return false, err
		}
		entries, err := ledger.Entries(ctx, id)
		if err != nil {
			return false, err
		}
		want := int64(opening)
		for _, e := range entries {
			if e.To.Valid && e.To.Int64 == id {
				want += e.Amount
			}
			if e.From.Valid && e.From.Int64 == id {
				want -= e.Amount
			}
		}
		total += balance
		fmt.Fprintf(out, "  account %d: balance %3d, %3d entries, opening + entries = %3d\n", id, balance, len(entries), want)
		if balance != want || balance < 0 {
			good = false
			fmt.Fprintln(out, "    WRONG: the balance must equal the opening plus its entries, and never be negative")
		}
	}
	if want := int64(cfg.Accounts)*opening + t.deposited - t.withdrawn; total != want {
		good = false
		fmt.Fprintf(out, "  WRONG: the accounts hold %d in all, want %d (openings + deposits - withdrawals)\n", total, want)
	}
	if good {
		fmt.Fprintln(out, "OK: every balance equals its opening plus its entries; no money created or lost")
	}
	return good, nil
}

// op is one operation a worker ran.
type op struct {
	kind   string
	amount int64
	err    error
}

// random runs one operation on random accounts.
func (l *Ledger) random(ctx context.Context, rng *rand.Rand, accounts int64) op {
	a, amount := rng.Int64N(accounts), 1+rng.Int64N(30)
	switch n := rng.IntN(10); {
	case n < 6:
		b := (a + 1 + rng.Int64N(accounts-1)) % accounts
		return op{"transfer", amount, l.Transfer(ctx, a, b, amount)}
	case n < 8:
		return op{"deposit", amount, l.Deposit(ctx, a, amount)}
	default:
		return op{"withdraw", amount, l.Withdraw(ctx, a, amount)}
	}
}

// note counts o.
func (t *tally) note(o op) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case errors.Is(o.err, ErrInsufficientFunds):
		t.refused++
		return
	case o.err != nil:
		t.errs = append(t.errs, fmt.Errorf("%s of %d: %w", o.kind, o.amount, o.err))
		return
	}
	switch o.kind {
	case "transfer":
		t.transfers++
	case "deposit":
		t.deposits++
		t.deposited += o.amount
	case "withdraw":
		t.withdraws++
		t.withdrawn += o.amount
	}
}
