package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// ErrInsufficientFunds is the service's own error: the balance is too low.
var ErrInsufficientFunds = errors.New("insufficient funds")

// WithdrawRequest asks to take Amount from the wallet of UserID.
type WithdrawRequest struct {
	UserID string
	Amount int64
}

// Wallets is a plain service: it reads the balance, checks it, and writes
// the new balance computed in Go. Two concurrent withdrawals of one user
// would both read the old balance, and the wallet would pay twice what it
// holds; the per-user lock around Withdraw (see newWithdraw) makes them
// take turns. It has no locking code of its own.
type Wallets struct {
	db    *gorm.DB
	table string
	// check is how long a withdrawal takes between reading the balance
	// and writing it (a fraud check, a call to a bank).
	check time.Duration
}

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewWallets returns the service on table.
func NewWallets(db *gorm.DB, table string, check time.Duration) (*Wallets, error) {
	if !tableRE.MatchString(table) {
		return nil, fmt.Errorf("wallet: invalid table name %q", table)
	}
	return &Wallets{db: db, table: table, check: check}, nil
}

// CreateTable creates the wallets table if it does not exist.
func (w *Wallets) CreateTable(ctx context.Context) error {
	return w.db.WithContext(ctx).Exec("CREATE TABLE IF NOT EXISTS `" + w.table + "` (" +
		"user_id VARCHAR(64) NOT NULL PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB").Error
}

// DropTable drops the wallets table.
func (w *Wallets) DropTable(ctx context.Context) error {
	return w.db.WithContext(ctx).Exec("DROP TABLE IF EXISTS `" + w.table + "`").Error
}

// Set sets the balance of a user, creating the wallet if needed.
func (w *Wallets) Set(ctx context.Context, userID string, balance int64) error {
	return dblock.DB(ctx, w.db).Exec("INSERT INTO `"+w.table+"` (user_id, balance) VALUES (?, ?) "+
		"ON DUPLICATE KEY UPDATE balance = VALUES(balance)", userID, balance).Error
}

// Balance returns the balance of a user.
func (w *Wallets) Balance(ctx context.Context, userID string) (int64, error) {
	var b []int64
	if err := dblock.DB(ctx, w.db).Raw("SELECT balance FROM `"+w.table+"` WHERE user_id = ?", userID).Scan(&b).Error; err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, fmt.Errorf("wallet of %s not found", userID)
	}
	return b[0], nil
}

// Withdraw takes req.Amount from the wallet of req.UserID, or fails with
// ErrInsufficientFunds. Its statements go through dblock.DB(ctx, db): in
// the lock's transaction when it is decorated.
func (w *Wallets) Withdraw(ctx context.Context, req WithdrawRequest) error {
	if req.Amount <= 0 {
		return fmt.Errorf("withdraw %d: the amount must be positive", req.Amount)
	}
	balance, err := w.Balance(ctx, req.UserID)
	if err != nil {
		return err
	}
	if balance < req.Amount {
		return fmt.Errorf("%s has %d, asked %d: %w", req.UserID, balance, req.Amount, ErrInsufficientFunds)
	}
	select {
	case <-time.After(w.check):
	case <-ctx.Done():
		return ctx.Err()
	}
	return dblock.DB(ctx, w.db).Exec("UPDATE `"+w.table+"` SET balance = ? WHERE user_id = ?", balance-req.Amount, req.UserID).Error
}
