package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// lockNameExpr computes the server-wide name of the named lock that
// serialises migrations of one lock table: the database and the table
// hashed, so it stays within the 64 characters MySQL allows. Its one
// parameter is the table name.
const lockNameExpr = `CONCAT('txlock:migrate:', LEFT(SHA2(CONCAT_WS('.', DATABASE(), ?), 256), 48))`

// lockPoll is the longest single GET_LOCK wait; between waits the context
// is checked, so cancelling it stops the wait within about this long.
const lockPoll = time.Second

// sessionLocker is a goose SessionLocker on MySQL's named locks: it keeps
// two processes from migrating the same table at the same time, for as long
// as goose holds the connection.
type sessionLocker struct {
	table   string
	timeout time.Duration
}

// SessionLock takes the table's migration lock on conn, waiting up to the
// configured timeout or until ctx is done.
func (l *sessionLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	deadline := time.Now().Add(l.timeout)
	for {
		wait := min(time.Until(deadline), lockPoll)
		secs := max(1, int64(wait.Round(time.Second)/time.Second))
		var got sql.NullInt64
		err := conn.QueryRowContext(ctx, "SELECT GET_LOCK("+lockNameExpr+", ?)", l.table, secs).Scan(&got)
		switch {
		case err != nil:
			return fmt.Errorf("migration lock for %s: %w", l.table, err)
		case !got.Valid:
			return fmt.Errorf("migration lock for %s: GET_LOCK returned NULL", l.table)
		case got.Int64 == 1:
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("migration lock for %s: %w", l.table, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("migration lock for %s: another process held it for more than %v", l.table, l.timeout)
		}
	}
}

// SessionUnlock releases the lock that SessionLock took on conn.
func (l *sessionLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var released sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT RELEASE_LOCK("+lockNameExpr+")", l.table).Scan(&released); err != nil {
		return fmt.Errorf("releasing migration lock for %s: %w", l.table, err)
	}
	if released.Int64 != 1 {
		return errors.New("releasing migration lock for " + l.table + ": not held by this session")
	}
	return nil
}
