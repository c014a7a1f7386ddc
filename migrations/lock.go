package migrations

import (
	"context"
	"database/sql"
	"database/sql/driver"
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

	// ddlLockWait, when set, is the session's lock_wait_timeout while it
	// holds the lock (Down: how long its DROP waits for the tables'
	// metadata locks). SessionUnlock restores the session's own value,
	// kept in saved: goose locks one session at a time.
	ddlLockWait time.Duration
	saved       int64
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
			return l.setLockWait(ctx, conn)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("migration lock for %s: %w", l.table, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("migration lock for %s: another process held it for more than %v", l.table, l.timeout)
		}
	}
}

// setLockWait sets the session's lock_wait_timeout to ddlLockWait, if
// set, after saving its value. On failure it releases the named lock.
func (l *sessionLocker) setLockWait(ctx context.Context, conn *sql.Conn) error {
	if l.ddlLockWait <= 0 {
		return nil
	}
	err := conn.QueryRowContext(ctx, "SELECT @@SESSION.lock_wait_timeout").Scan(&l.saved)
	if err == nil {
		_, err = conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = ?", max(1, int64(l.ddlLockWait/time.Second)))
	}
	if err != nil {
		err = fmt.Errorf("migration lock for %s: setting lock_wait_timeout: %w", l.table, err)
		return errors.Join(err, l.release(context.WithoutCancel(ctx), conn))
	}
	return nil
}

// SessionUnlock restores what SessionLock changed in the session and
// releases the lock that it took on conn. A session whose lock_wait_timeout
// cannot be restored is discarded rather than returned to the pool.
func (l *sessionLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var restoreErr error
	if l.ddlLockWait > 0 {
		if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = ?", l.saved); err != nil {
			restoreErr = fmt.Errorf("migration lock for %s: restoring lock_wait_timeout: %w", l.table, err)
		}
	}
	err := errors.Join(restoreErr, l.release(ctx, conn))
	if restoreErr != nil {
		// Closes the session when conn is closed (the named lock goes with it).
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
	return err
}

// release releases the named lock held on conn.
func (l *sessionLocker) release(ctx context.Context, conn *sql.Conn) error {
	var released sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT RELEASE_LOCK("+lockNameExpr+")", l.table).Scan(&released); err != nil {
		return fmt.Errorf("releasing migration lock for %s: %w", l.table, err)
	}
	if released.Int64 != 1 {
		return errors.New("releasing migration lock for " + l.table + ": not held by this session")
	}
	return nil
}
