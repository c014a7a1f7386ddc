package dblock

import (
	"context"
	"database/sql"
	"fmt"

	"gorm.io/gorm"
)

// guardSnapshot protects a joined transaction, which may have read before
// this lock, against a silent lost update (DESIGN.md protocol step 8).
// Under REPEATABLE READ its reads come from a snapshot that may predate the
// previous holder's commit; on MariaDB with innodb_snapshot_isolation, a
// write based on such a snapshot then fails with error 1020
// (ErrStaleSnapshot) instead of overwriting the previous holder's update.
//
// The setting is per session, so it is turned back to the server's default
// before the transaction ends: by Lock's Commit and Rollback for a
// transaction the Locker opened, and by a guardedTx wrapped around the
// connection of a caller's transaction (its Commit and Rollback). Once per
// transaction.
func (l *Locker) guardSnapshot(ctx context.Context, scope *txScope, pool gorm.ConnPool) error {
	if !l.srv.snapshotIsolation || !scope.needsGuard() {
		return nil
	}
	if _, ok := pool.(*guardedTx); ok {
		scope.setGuarded()
		return nil
	}
	if _, err := pool.ExecContext(ctx, l.q.snapshotOn); err != nil {
		return fmt.Errorf("dblock: enabling innodb_snapshot_isolation on the joined transaction: %w", err)
	}
	if !scope.fresh {
		// The caller ends this transaction with the *gorm.DB it gave us:
		// route its Commit and Rollback through the reset.
		scope.tx.Statement.ConnPool = &guardedTx{ConnPool: pool, reset: l.q.snapshotOff}
	}
	scope.setGuarded()
	return nil
}

// guardedTx is the connection of a caller's transaction in which the
// Locker turned innodb_snapshot_isolation on. It turns it back to the
// server's default just before the transaction ends, so that the setting
// does not outlive the transaction on the pooled connection. Every other
// call goes to the caller's transaction unchanged.
type guardedTx struct {
	gorm.ConnPool        // the caller's transaction (it implements gorm.TxCommitter)
	reset         string // the statement that restores the session
}

func (g *guardedTx) restore() {
	// A failure here means the connection is failing: the COMMIT that
	// follows reports it, and database/sql discards the connection.
	_, _ = g.ConnPool.ExecContext(context.Background(), g.reset)
}

// Commit implements gorm.TxCommitter.
func (g *guardedTx) Commit() error {
	g.restore()
	return g.ConnPool.(gorm.TxCommitter).Commit()
}

// Rollback implements gorm.TxCommitter.
func (g *guardedTx) Rollback() error {
	g.restore()
	return g.ConnPool.(gorm.TxCommitter).Rollback()
}

// StmtContext implements gorm.Tx.
func (g *guardedTx) StmtContext(ctx context.Context, stmt *sql.Stmt) *sql.Stmt {
	if t, ok := g.ConnPool.(interface {
		StmtContext(context.Context, *sql.Stmt) *sql.Stmt
	}); ok {
		return t.StmtContext(ctx, stmt)
	}
	return stmt
}
