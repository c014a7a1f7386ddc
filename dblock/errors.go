package dblock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Sentinel errors. Match them with errors.Is; errors that come from the
// server also wrap the driver's *mysql.MySQLError, reachable with errors.As.
var (
	// ErrNotAcquired means the key is held by someone else and the caller
	// asked not to wait (TryLock, NoWait) or its wait timed out. The
	// transaction it was asked in is still open and keeps its other locks.
	ErrNotAcquired = errors.New("dblock: lock not acquired")

	// ErrLockLost means the lock can no longer be vouched for: the
	// connection or the transaction holding it ended before the caller
	// released it (server restart, network failure, a killed session, a
	// failed COMMIT). The business writes of that transaction were not
	// committed, or their fate is unknown; the caller must treat them as
	// not done.
	ErrLockLost = errors.New("dblock: lock lost")

	// ErrDeadlock means the server chose this transaction as the victim of a
	// deadlock (error 1213) and rolled the whole transaction back, including
	// every lock and write it held. Running the work again from the start
	// is safe.
	ErrDeadlock = errors.New("dblock: deadlock, transaction rolled back")

	// ErrInvalidKey means a Key cannot name a lock: it is empty, combines
	// Global with another field, holds invalid UTF-8 or is too long for its
	// column.
	ErrInvalidKey = errors.New("dblock: invalid key")

	// ErrTableMissing means the lock table does not exist: run the
	// migrations (migrations.Up, or `make migrate`).
	ErrTableMissing = errors.New("dblock: lock table missing, run the migrations (migrations.Up or `txlock migrate up`)")

	// ErrStaleSnapshot means a transaction that had already read data
	// before it took a lock tried to write rows that another holder changed
	// meanwhile (MariaDB error 1020 with innodb_snapshot_isolation). Its
	// reads were stale; roll back and run the work again.
	ErrStaleSnapshot = errors.New("dblock: transaction snapshot predates the lock, retry the transaction")

	// ErrReadOnly means New found the server read-only (read_only or
	// super_read_only ON), most likely a replica: locks taken there are
	// not seen by the holders on the primary. AllowReadOnly lifts the
	// check. An acquisition that the server refuses because it is
	// read-only (error 1290: MariaDB refuses SELECT ... FOR UPDATE to
	// accounts that cannot bypass read_only) returns it too.
	ErrReadOnly = errors.New("dblock: server is read-only (a replica?): locks taken there are not seen by the primary's holders")

	// ErrNotPrimary means the server is a Galera node outside the
	// cluster's primary component (error 1047: cut off by a partition, or
	// still joining), so it refuses to run transactions: a lock taken there
	// would not be seen by the rest of the cluster. Send lock traffic to a
	// synced node (a load balancer's Galera health check does) and try
	// again. A holder whose node leaves the primary component gets
	// ErrLockLost instead; an acquisition in a transaction that already
	// holds locks returns both.
	ErrNotPrimary = errors.New("dblock: Galera node is not in the cluster's primary component")

	// ErrNoTransaction means LockTx was given nil, a *gorm.DB that is not
	// inside a transaction, or a transaction that has already ended.
	ErrNoTransaction = errors.New("dblock: not an open transaction")
)

// MySQL and MariaDB error numbers the library maps.
const (
	erLockWaitTimeout     = 1205 // innodb_lock_wait_timeout; MariaDB NOWAIT and WAIT n
	erLockDeadlock        = 1213
	erNoSuchTable         = 1146
	erCheckRead           = 1020 // "Record has changed since last read" (snapshot isolation)
	erStatementTimeout    = 1969 // MariaDB max_statement_time
	erQueryTimeout        = 3024 // MySQL max_execution_time
	erLockNowait          = 3572 // MySQL NOWAIT
	erOptionPreventsStmt  = 1290 // read_only server
	erUnknownCommand      = 1047 // Galera: node not ready
	erQueryInterrupted    = 1317
	erConnectionWasKilled = 1927 // MariaDB
)

// mysqlErrorNumber returns the server error number err wraps, or 0.
func mysqlErrorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// isConnectionLoss reports whether err means the connection (and with it
// the transaction) is gone.
func isConnectionLoss(err error) bool {
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, sql.ErrConnDone) {
		return true
	}
	switch mysqlErrorNumber(err) {
	case erConnectionWasKilled, erOptionPreventsStmt, erUnknownCommand:
		return true
	}
	return false
}

// notPrimary returns err, an error of step ("acquiring", ...) for key,
// wrapped with ErrNotPrimary when it is Galera's 1047 on a Galera node
// (elsewhere 1047 is ER_UNKNOWN_COM_ERROR); else nil.
func (l *Locker) notPrimary(step string, key Key, err error) error {
	if !l.srv.topology.Galera || mysqlErrorNumber(err) != erUnknownCommand {
		return nil
	}
	return fmt.Errorf("%w: %s %s: %w", ErrNotPrimary, step, key, err)
}

// acquireError maps an error of the locking statement to the library's
// sentinels, keeping the original in the chain.
func (l *Locker) acquireError(key Key, err error, waitFromCtx error) error {
	if e := l.notPrimary("acquiring", key, err); e != nil {
		return e
	}
	switch n := mysqlErrorNumber(err); n {
	case erLockWaitTimeout, erStatementTimeout, erQueryTimeout, erLockNowait, erQueryInterrupted:
		if waitFromCtx != nil {
			// The wait was bounded by the context's deadline: say both.
			return fmt.Errorf("%w: %s: %w (%w)", ErrNotAcquired, key, waitFromCtx, err)
		}
		return fmt.Errorf("%w: %s: %w", ErrNotAcquired, key, err)
	case erLockDeadlock:
		return fmt.Errorf("%w: acquiring %s: %w", ErrDeadlock, key, err)
	case erNoSuchTable:
		return fmt.Errorf("%w: %w", ErrTableMissing, err)
	case erOptionPreventsStmt:
		return fmt.Errorf("%w: acquiring %s: %w", ErrReadOnly, key, err)
	}
	if errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("%w: acquiring %s: %w", ErrNoTransaction, key, err)
	}
	return fmt.Errorf("dblock: acquiring %s: %w", key, err)
}

// releaseError maps an error of COMMIT. A commit that fails leaves the
// writes not committed (or in doubt), so the lock the transaction held
// cannot be vouched for. A deadlock at COMMIT (on Galera, a certification
// failure: another node's holder committed first) means the transaction
// did not commit: it is both ErrLockLost and ErrDeadlock (Retry runs the
// work again).
func releaseError(key Key, err error) error {
	if err == nil {
		return nil
	}
	switch mysqlErrorNumber(err) {
	case erLockDeadlock:
		return fmt.Errorf("%w: %w: commit of %s, the transaction did not commit: %w", ErrLockLost, ErrDeadlock, key, err)
	case erCheckRead:
		return fmt.Errorf("%w: commit of %s: %w", ErrStaleSnapshot, key, err)
	}
	if errors.Is(err, sql.ErrTxDone) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || isConnectionLoss(err) {
		return fmt.Errorf("%w: commit of %s failed, writes not committed: %w", ErrLockLost, key, err)
	}
	return fmt.Errorf("dblock: commit of %s: %w", key, err)
}

// fnError maps the error fn returned so that server outcomes the caller can
// act on are recognisable, without hiding the caller's own errors: errors
// that are not the server's are returned unchanged.
func fnError(err error) error {
	if err == nil {
		return nil
	}
	switch mysqlErrorNumber(err) {
	case erLockDeadlock:
		if !errors.Is(err, ErrDeadlock) {
			return fmt.Errorf("%w: %w", ErrDeadlock, err)
		}
	case erCheckRead:
		if !errors.Is(err, ErrStaleSnapshot) {
			return fmt.Errorf("%w: %w", ErrStaleSnapshot, err)
		}
	}
	return err
}

// withCause adds ctx's cause to err when ctx has ended, so that an error
// the driver reports in its own words (a dial "i/o timeout", "invalid
// connection") still matches context.Canceled or DeadlineExceeded.
func withCause(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if dl, ok := ctx.Deadline(); cause == nil && ok && !time.Now().Before(dl) {
		cause = context.DeadlineExceeded // passed, the context's timer not run yet
	}
	if cause == nil || errors.Is(err, cause) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, cause)
}
