package dblock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The database/sql path: a service written with database/sql (sqlx,
// sqlc, bun) takes locks with its *sql.DB (NewSQL), runs its queries in a
// lock's transaction through SQL, and locks inside a *sql.Tx of its own
// through Locker.Tx. Underneath it is the gorm path: the same Locker, the
// same transactions, the same guards.

// NewSQL returns a Locker on db, a database/sql pool of
// github.com/go-sql-driver/mysql, for services that do not use gorm. It
// is New on a gorm handle of db's pool (with a silent logger), which the
// Locker keeps to itself: lock transactions and Lock.Tx run on db's
// connections, and Close does not close db.
//
// A *sql.DB does not tell its DSN, so the Locker cannot open its side
// pool itself: pass SideDB, a second small pool on the same database (see
// SideDB). Nor does it know the DSN's readTimeout: bound waits with
// WaitTimeout or a context deadline below it. Like New, NewSQL reads the
// server's version and settings through db: it waits for a free
// connection of db.
func NewSQL(db *sql.DB, opts ...Option) (*Locker, error) {
	if db == nil {
		return nil, errors.New("dblock: NewSQL: nil *sql.DB")
	}
	gdb, err := gorm.Open(mysql.New(mysql.Config{Conn: db}), &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
	})
	if err != nil {
		return nil, fmt.Errorf("dblock: NewSQL: opening the *sql.DB: %w", err)
	}
	return newLocker("NewSQL", gdb, opts)
}

// SQL returns what tx runs its statements on, for code written with
// database/sql: ExecContext, QueryContext, QueryRowContext and
// PrepareContext, sqlc's DBTX (queries.New(dblock.SQL(tx))). Of a lock's
// transaction (Do's fn tx, Lock.Tx) it is the connection gorm itself
// uses, with the same guards: statements are refused with ErrLockLost
// after a loss, and the lease is kept. Of a joined transaction of yours
// it is that transaction; of a handle outside any, its pool. A nil tx
// gives statements that fail with ErrNoTransaction. Statements prepared
// through it run outside the keepalive's sight, as gorm's PrepareStmt
// ones do (see "The lease" in the package documentation).
func SQL(tx *gorm.DB) gorm.ConnPool {
	if tx == nil {
		return failedPool{fmt.Errorf("%w: SQL: nil *gorm.DB", ErrNoTransaction)}
	}
	var pool gorm.ConnPool
	switch {
	case tx.Statement != nil && tx.Statement.ConnPool != nil:
		pool = tx.Statement.ConnPool
	case tx.Config != nil:
		pool = tx.ConnPool
	}
	switch p := pool.(type) {
	case nil:
		return failedPool{fmt.Errorf("%w: SQL: the *gorm.DB has no connection", ErrNoTransaction)}
	case *gorm.PreparedStmtTX:
		return p.Tx
	case *gorm.PreparedStmtDB:
		return p.ConnPool
	}
	return pool
}

// Tx returns a gorm handle on tx, a transaction the caller began with
// database/sql on the Locker's database, for the calls that take a
// caller's transaction: LockTx(ctx, l.Tx(tx), key), WithTx(ctx, l.Tx(tx)).
// It behaves as a gorm transaction of the caller's does: the lock is
// released when tx commits or rolls back, keys held are remembered per
// *sql.Tx whatever handle or context reaches it, and a transaction that
// read before its lock is refused (ErrStaleSnapshot). Statements through
// the handle (or SQL of it) run in tx. A nil tx gives a handle whose
// acquisitions and statements fail with ErrNoTransaction; a nil Locker
// gives nil.
func (l *Locker) Tx(tx *sql.Tx) *gorm.DB {
	if l == nil {
		return nil
	}
	var pool gorm.ConnPool = tx
	if tx == nil {
		pool = failedPool{fmt.Errorf("%w: Locker.Tx: nil *sql.Tx", ErrNoTransaction)}
	}
	// A Context makes Session clone the Statement: without one, the new
	// handle would share (and the assignment change) the Locker's.
	db := l.db.Session(&gorm.Session{NewDB: true, Context: context.Background()})
	db.Statement.ConnPool = pool
	return db
}

// failedPool is a connection whose every statement fails with err, for
// handles that have none (SQL of nil, Locker.Tx of nil).
type failedPool struct{ err error }

func (p failedPool) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	return nil, p.err
}

func (p failedPool) QueryContext(context.Context, string, ...any) (*sql.Rows, error) {
	return nil, p.err
}

func (p failedPool) QueryRowContext(context.Context, string, ...any) *sql.Row { return errorRow(p.err) }

func (p failedPool) PrepareContext(context.Context, string) (*sql.Stmt, error) {
	return nil, p.err
}

// errorRow returns a *sql.Row whose Scan and Err return err. database/sql
// builds a failed Row only from a failed query, so the query is sent to a
// pool of its own whose driver answers it with err, without any I/O. A
// refused statement is rare (the lock is lost): the pool lives for one
// call.
func errorRow(err error) *sql.Row {
	db := sql.OpenDB(errConnector{})
	defer db.Close()
	return db.QueryRowContext(context.Background(), "", errArg{err})
}

// errArg carries the error errorRow's query fails with.
type errArg struct{ err error }

// errConnector, errDriver and errConn are errorRow's driver: a query
// fails with the error its one errArg argument carries.
type (
	errConnector struct{}
	errDriver    struct{}
	errConn      struct{}
)

var errNoStatements = errors.New("dblock: internal error: errorRow's connection runs no statements")

func (errConnector) Connect(context.Context) (driver.Conn, error) { return errConn{}, nil }
func (errConnector) Driver() driver.Driver                        { return errDriver{} }
func (errDriver) Open(string) (driver.Conn, error)                { return errConn{}, nil }
func (errConn) Prepare(string) (driver.Stmt, error)               { return nil, errNoStatements }
func (errConn) Close() error                                      { return nil }
func (errConn) Begin() (driver.Tx, error)                         { return nil, errNoStatements }

// CheckNamedValue lets errArg through to QueryContext unconverted.
func (errConn) CheckNamedValue(*driver.NamedValue) error { return nil }

// QueryContext fails with the error of its errArg.
func (errConn) QueryContext(_ context.Context, _ string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) == 1 {
		if a, ok := args[0].Value.(errArg); ok {
			return nil, a.err
		}
	}
	return nil, errNoStatements
}
