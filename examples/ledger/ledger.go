package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// ErrInsufficientFunds is the service's own error: the balance is too low.
var ErrInsufficientFunds = errors.New("insufficient funds")

// DBTX is what the ledger's queries run on: sqlc's generated DBTX, which
// *sql.DB, *sql.Tx, *sqlx.DB, *sqlx.Tx and dblock.SQL of a lock's
// transaction all have.
type DBTX interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Account is a row of the accounts table.
type Account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// Entry is a row of the entries table: one movement of money. A deposit
// has no From, a withdrawal no To.
type Entry struct {
	From   sql.NullInt64 `db:"from_id"`
	To     sql.NullInt64 `db:"to_id"`
	Amount int64         `db:"amount"`
}

// Ledger is a service written with sqlx: accounts whose balances are read,
// checked and written back computed in Go, under a lock per account.
type Ledger struct {
	db       *sqlx.DB
	locker   *dblock.Locker
	accounts string
	entries  string
	// check is how long a movement takes between reading a balance and
	// writing it (a fraud check, a call to a bank).
	check time.Duration
}

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,50}$`)

// NewLedger returns the service on the tables prefix_accounts and
// prefix_entries.
func NewLedger(db *sqlx.DB, locker *dblock.Locker, prefix string, check time.Duration) (*Ledger, error) {
	if !tableRE.MatchString(prefix) {
		return nil, fmt.Errorf("ledger: invalid table prefix %q", prefix)
	}
	return &Ledger{db: db, locker: locker, accounts: prefix + "_accounts", entries: prefix + "_entries", check: check}, nil
}

// CreateTables creates the ledger's tables if they do not exist.
func (l *Ledger) CreateTables(ctx context.Context) error {
	for _, ddl := range []string{
		"CREATE TABLE IF NOT EXISTS `" + l.accounts + "` (id BIGINT NOT NULL PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS `" + l.entries + "` (n BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, " +
			"from_id BIGINT NULL, to_id BIGINT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB",
	} {
		if _, err := l.db.ExecContext(ctx, ddl); err != nil {
			return err
		}
	}
	return nil
}

// DropTables drops the ledger's tables.
func (l *Ledger) DropTables(ctx context.Context) error {
	_, err := l.db.ExecContext(ctx, "DROP TABLE IF EXISTS `"+l.accounts+"`, `"+l.entries+"`")
	return err
}

// accountKey is the lock of one account.
func accountKey(id int64) dblock.Key { return dblock.Resource("account:" + strconv.FormatInt(id, 10)) }

// Open creates account id with balance, or resets it, and clears its
// entries.
func (l *Ledger) Open(ctx context.Context, id, balance int64) error {
	return l.locker.Do(ctx, accountKey(id), func(ctx context.Context, tx *gorm.DB) error {
		q := dblock.SQL(tx)
		if _, err := q.ExecContext(ctx, "DELETE FROM `"+l.entries+"` WHERE from_id = ? OR to_id = ?", id, id); err != nil {
			return err
		}
		_, err := q.ExecContext(ctx, "INSERT INTO `"+l.accounts+"` (id, balance) VALUES (?, ?) "+
			"ON DUPLICATE KEY UPDATE balance = VALUES(balance)", id, balance)
		return err
	})
}

// Transfer moves amount from one account to another, or fails with
// ErrInsufficientFunds. Do takes both accounts' locks (in one canonical
// order, so that opposite transfers cannot deadlock) and commits the
// queries, run through dblock.SQL(tx), with the release.
func (l *Ledger) Transfer(ctx context.Context, from, to, amount int64) error {
	if amount <= 0 || from == to {
		return fmt.Errorf("ledger: transfer of %d from %d to %d: want a positive amount between two accounts", amount, from, to)
	}
	return l.locker.DoMulti(ctx, []dblock.Key{accountKey(from), accountKey(to)}, func(ctx context.Context, tx *gorm.DB) error {
		q := dblock.SQL(tx)
		if err := l.debit(ctx, q, from, amount); err != nil {
			return err
		}
		if err := l.credit(ctx, q, to, amount); err != nil {
			return err
		}
		return l.record(ctx, q, Entry{From: valid(from), To: valid(to), Amount: amount})
	}, dblock.WaitTimeout(30*time.Second))
}

// Deposit adds amount to account id in a transaction the service opens
// with sqlx itself: the account's lock is taken inside it (Locker.Tx
// turns the *sql.Tx into a handle LockTx takes), and released by its
// Commit or Rollback. The queries keep all of sqlx (GetContext,
// NamedExecContext) on the service's own *sqlx.Tx.
func (l *Ledger) Deposit(ctx context.Context, id, amount int64) error {
	if amount <= 0 {
		return fmt.Errorf("ledger: deposit of %d: want a positive amount", amount)
	}
	tx, err := l.db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// The lock first, before any read: the transaction's snapshot then
	// follows the previous holder's commit.
	if err := l.locker.LockTx(ctx, l.locker.Tx(tx.Tx), accountKey(id), dblock.WaitTimeout(30*time.Second)); err != nil {
		return err
	}
	var a Account
	if err := tx.GetContext(ctx, &a, "SELECT id, balance FROM `"+l.accounts+"` WHERE id = ?", id); err != nil {
		return fmt.Errorf("account %d: %w", id, err)
	}
	if err := l.pause(ctx); err != nil {
		return err
	}
	if err := l.setBalance(ctx, tx, id, a.Balance+amount); err != nil {
		return err
	}
	if _, err := tx.NamedExecContext(ctx, "INSERT INTO `"+l.entries+"` (from_id, to_id, amount) VALUES (:from_id, :to_id, :amount)",
		Entry{To: valid(id), Amount: amount}); err != nil {
		return err
	}
	return tx.Commit()
}

// Withdraw takes amount from account id, or fails with
// ErrInsufficientFunds, holding the account's lock through a Lock handle:
// the queries run through dblock.SQL(lk.Tx()), and Commit keeps them.
func (l *Ledger) Withdraw(ctx context.Context, id, amount int64) error {
	if amount <= 0 {
		return fmt.Errorf("ledger: withdrawal of %d: want a positive amount", amount)
	}
	lk, err := l.locker.Lock(ctx, accountKey(id), dblock.WaitTimeout(30*time.Second))
	if err != nil {
		return err
	}
	defer lk.Rollback()
	q := dblock.SQL(lk.Tx())
	if err := l.debit(ctx, q, id, amount); err != nil {
		return err
	}
	if err := l.record(ctx, q, Entry{From: valid(id), Amount: amount}); err != nil {
		return err
	}
	return lk.Commit()
}

// Balance returns the balance of account id.
func (l *Ledger) Balance(ctx context.Context, id int64) (int64, error) {
	a, err := l.account(ctx, l.db, id)
	return a.Balance, err
}

// Entries returns the entries of account id, oldest first.
func (l *Ledger) Entries(ctx context.Context, id int64) ([]Entry, error) {
	var es []Entry
	err := selectAll(ctx, l.db, &es, "SELECT from_id, to_id, amount FROM `"+l.entries+"` WHERE from_id = ? OR to_id = ? ORDER BY n", id, id)
	return es, err
}

// account reads account id through q.
func (l *Ledger) account(ctx context.Context, q DBTX, id int64) (Account, error) {
	var a Account
	if err := l.get(ctx, q, &a, "SELECT id, balance FROM `"+l.accounts+"` WHERE id = ?", id); err != nil {
		return a, fmt.Errorf("account %d: %w", id, err)
	}
	return a, nil
}

// debit takes amount from account id through q, or fails with
// ErrInsufficientFunds: a read, a check and a write of the balance
// computed in Go, which only the account's lock keeps exact.
func (l *Ledger) debit(ctx context.Context, q DBTX, id, amount int64) error {
	a, err := l.account(ctx, q, id)
	if err != nil {
		return err
	}
	if a.Balance < amount {
		return fmt.Errorf("account %d has %d, asked %d: %w", id, a.Balance, amount, ErrInsufficientFunds)
	}
	if err := l.pause(ctx); err != nil {
		return err
	}
	return l.setBalance(ctx, q, id, a.Balance-amount)
}

// credit adds amount to account id through q.
func (l *Ledger) credit(ctx context.Context, q DBTX, id, amount int64) error {
	a, err := l.account(ctx, q, id)
	if err != nil {
		return err
	}
	return l.setBalance(ctx, q, id, a.Balance+amount)
}

// setBalance writes the balance of account id through q.
func (l *Ledger) setBalance(ctx context.Context, q DBTX, id, balance int64) error {
	_, err := q.ExecContext(ctx, "UPDATE `"+l.accounts+"` SET balance = ? WHERE id = ?", balance, id)
	return err
}

// record appends e through q, binding its fields by name with sqlx.
func (l *Ledger) record(ctx context.Context, q DBTX, e Entry) error {
	query, args, err := sqlx.Named("INSERT INTO `"+l.entries+"` (from_id, to_id, amount) VALUES (:from_id, :to_id, :amount)", e)
	if err != nil {
		return err
	}
	_, err = q.ExecContext(ctx, query, args...)
	return err
}

// pause is the time a movement takes under its lock.
func (l *Ledger) pause(ctx context.Context) error {
	if l.check <= 0 {
		return nil
	}
	t := time.NewTimer(l.check)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func valid(id int64) sql.NullInt64 { return sql.NullInt64{Int64: id, Valid: true} }

// get is sqlx's GetContext for a struct over any DBTX: sqlx.GetContext
// wants sqlx's own QueryRowxContext, whose *sqlx.Row only sqlx can
// build, so the row is read as *sqlx.Rows, with the columns mapped to
// fields as l.db maps them. It fails with sql.ErrNoRows when there is no
// row.
func (l *Ledger) get(ctx context.Context, q DBTX, dest any, query string, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	r := &sqlx.Rows{Rows: rows, Mapper: l.db.Mapper}
	defer r.Close()
	if !r.Next() {
		if err := r.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := r.StructScan(dest); err != nil {
		return err
	}
	return r.Close()
}

// selectAll is sqlx's SelectContext over any DBTX.
func selectAll(ctx context.Context, q DBTX, dest any, query string, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if err := sqlx.StructScan(rows, dest); err != nil {
		return err
	}
	return rows.Close()
}
