package gooselock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"

	"github.com/txlock/txlock/dblock"
)

// openSQLLocker returns a dblock.Locker on db, a pool goose opened, and the
// side pool it uses, which the caller closes after the Locker. A *sql.DB
// does not give its DSN back, so dblock.NewSQL needs a side pool: this one
// borrows its connections from db (see borrowConnector).
func openSQLLocker(db *sql.DB, opts ...dblock.Option) (*dblock.Locker, *sql.DB, error) {
	side := sql.OpenDB(borrowConnector{db: db})
	// No idle connections: each statement of the side pool borrows one of
	// db's connections and gives it back at once, so that the side pool
	// keeps nothing of db's when the Locker is not using it.
	side.SetMaxIdleConns(0)
	l, err := dblock.NewSQL(db, append([]dblock.Option{dblock.SideDB(side)}, opts...)...)
	if err != nil {
		_ = side.Close()
		return nil, nil, err
	}
	return l, side, nil
}

// borrowConnector is a driver.Connector whose connections are borrowed
// from another pool: each is one *sql.Conn of db, given back when the
// connection is closed. It gives the Locker a side pool of its own (a
// *sql.DB other than the one its gorm handle uses) when the only way to
// the server is a *sql.DB, whose DSN cannot be read back. The side pool
// runs a few short autocommit statements (creating a key's row,
// interrupting an abandoned wait); they take a connection of db beside the
// lock's.
type borrowConnector struct{ db *sql.DB }

// Connect borrows a connection of the underlying pool.
func (c borrowConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return &borrowedConn{conn: conn}, nil
}

// Driver returns the underlying pool's driver.
func (c borrowConnector) Driver() driver.Driver { return c.db.Driver() }

// borrowedConn is a driver.Conn over a borrowed *sql.Conn. Arguments are
// passed through as they are (NamedValueChecker), for the underlying
// driver to convert.
type borrowedConn struct{ conn *sql.Conn }

var (
	_ driver.ExecerContext      = (*borrowedConn)(nil)
	_ driver.QueryerContext     = (*borrowedConn)(nil)
	_ driver.ConnPrepareContext = (*borrowedConn)(nil)
	_ driver.ConnBeginTx        = (*borrowedConn)(nil)
	_ driver.Pinger             = (*borrowedConn)(nil)
	_ driver.NamedValueChecker  = (*borrowedConn)(nil)
)

func (c *borrowedConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *borrowedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return borrowedStmt{st: st}, nil
}

// Close gives the connection back to the underlying pool.
func (c *borrowedConn) Close() error { return c.conn.Close() }

func (c *borrowedConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *borrowedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.IsolationLevel(opts.Isolation), ReadOnly: opts.ReadOnly})
}

func (c *borrowedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.conn.ExecContext(ctx, query, values(args)...)
}

func (c *borrowedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := c.conn.QueryContext(ctx, query, values(args)...)
	return wrapRows(rows, err)
}

func (c *borrowedConn) Ping(ctx context.Context) error { return c.conn.PingContext(ctx) }

// CheckNamedValue accepts every argument: the underlying driver converts
// it when the statement runs.
func (c *borrowedConn) CheckNamedValue(*driver.NamedValue) error { return nil }

// borrowedStmt is a driver.Stmt over a statement of a borrowed connection.
type borrowedStmt struct{ st *sql.Stmt }

var (
	_ driver.StmtExecContext  = borrowedStmt{}
	_ driver.StmtQueryContext = borrowedStmt{}
)

func (s borrowedStmt) Close() error  { return s.st.Close() }
func (s borrowedStmt) NumInput() int { return -1 }

func (s borrowedStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), named(args))
}

func (s borrowedStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), named(args))
}

func (s borrowedStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.st.ExecContext(ctx, values(args)...)
}

func (s borrowedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := s.st.QueryContext(ctx, values(args)...)
	return wrapRows(rows, err)
}

// borrowedRows is driver.Rows over the *sql.Rows of a borrowed connection.
type borrowedRows struct {
	rows *sql.Rows
	cols []string
}

func wrapRows(rows *sql.Rows, err error) (driver.Rows, error) {
	if err != nil {
		return nil, err
	}
	cols, err := rows.Columns()
	if err != nil {
		return nil, errors.Join(err, rows.Close())
	}
	return &borrowedRows{rows: rows, cols: cols}, nil
}

func (r *borrowedRows) Columns() []string { return r.cols }
func (r *borrowedRows) Close() error      { return r.rows.Close() }

// Next scans the next row as the underlying driver returned it (a scan
// into *any copies without conversion).
func (r *borrowedRows) Next(dest []driver.Value) error {
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	vals := make([]any, len(dest))
	ptrs := make([]any, len(dest))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := r.rows.Scan(ptrs...); err != nil {
		return err
	}
	for i, v := range vals {
		dest[i] = v
	}
	return nil
}

// values returns args as the arguments of a database/sql call.
func values(args []driver.NamedValue) []any {
	out := make([]any, len(args))
	for i, a := range args {
		if a.Name != "" {
			out[i] = sql.Named(a.Name, a.Value)
		} else {
			out[i] = a.Value
		}
	}
	return out
}

// named returns positional driver values as named values.
func named(args []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(args))
	for i, v := range args {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}
