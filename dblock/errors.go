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
	// asked not to wait (TryLock, NoWait) or its wait ran out (WaitTimeout,
	// the context's deadline, the lease of the transaction's other locks,
	// or the server's innodb_lock_wait_timeout). The transaction it was
	// asked in is still open and keeps its other locks, unless the error
	// also matches ErrLockLost (a server with innodb_rollback_on_timeout
	// rolls the whole transaction back when innodb_lock_wait_timeout runs
	// out).
	ErrNotAcquired = errors.New("dblock: lock not acquired")

	// ErrLockLost means the lock can no longer be vouched for: the
	// connection or the transaction holding it ended before the caller
	// released it (server restart, network failure, a killed session, the
	// lease ran out, a statement that rolled the transaction back). The
	// business writes of that transaction were not committed; when it also
	// matches ErrCommitUnknown, their fate is unknown.
	ErrLockLost = errors.New("dblock: lock lost")

	// ErrCommitUnknown means COMMIT was sent and the connection was lost
	// before the server answered: the transaction may or may not have
	// committed. It also matches ErrLockLost. Do not run the work again
	// blindly: check whether its writes are there.
	ErrCommitUnknown = errors.New("dblock: commit outcome unknown")

	// ErrNotHeld means a lock was released or committed already: Commit
	// or Rollback cannot act on it again. Holder returns it for a key that
	// nobody holds.
	ErrNotHeld = errors.New("dblock: lock not held")

	// ErrHolderUnknown means Holder found the key held but the server's
	// lock views did not name the holder in time (MariaDB shows a holder
	// only to a waiter, through a cache that other clients' frequent reads
	// keep from being refreshed). Asking again may succeed.
	ErrHolderUnknown = errors.New("dblock: lock holder unknown")

	// ErrDeadlock means the server chose this transaction as the victim of a
	// deadlock (error 1213) and rolled the whole transaction back, including
	// every lock and write it held. Running the work again from the start
	// is safe (Retry does).
	ErrDeadlock = errors.New("dblock: deadlock, transaction rolled back")

	// ErrInvalidKey means a Key cannot name a lock: it is empty, combines
	// Global with another field, holds invalid UTF-8 or is too long for its
	// column.
	ErrInvalidKey = errors.New("dblock: invalid key")

	// ErrTableMissing means the lock table, or a table or column this
	// version of the library needs, does not exist: run the migrations
	// (migrations.Up, or `txlock migrate up`).
	ErrTableMissing = errors.New("dblock: lock table missing, run the migrations (migrations.Up or `txlock migrate up`)")

	// ErrStaleSnapshot means a transaction had read before it took a lock,
	// so its reads may predate the previous holder's commit (REPEATABLE
	// READ), or it wrote rows changed since its snapshot (MariaDB error
	// 1020). The server rolled the transaction back; run the work again,
	// taking the lock before reading (Retry does, for Do).
	ErrStaleSnapshot = errors.New("dblock: transaction snapshot predates the lock, retry the transaction")

	// ErrReadOnly means New found the server read-only (read_only or
	// super_read_only ON), most likely a replica: locks taken there are
	// not seen by the holders on the primary. AllowReadOnly lifts the
	// check. An acquisition that the server refuses because it is
	// read-only (error 1290) returns it too.
	ErrReadOnly = errors.New("dblock: server is read-only (a replica?): locks taken there are not seen by the primary's holders")

	// ErrNotPrimary means the server is a Galera node outside the
	// cluster's primary component (error 1047: cut off by a partition, or
	// still joining), so it refuses to run transactions. Send lock traffic
	// to a synced node and try again. A holder whose node leaves the
	// primary component gets ErrLockLost instead.
	ErrNotPrimary = errors.New("dblock: Galera node is not in the cluster's primary component")

	// ErrNoTransaction means LockTx was given nil, a *gorm.DB that is not
	// inside a transaction, or a transaction that has already ended (also
	// through a context that still carries it).
	ErrNoTransaction = errors.New("dblock: not an open transaction")

	// ErrTooSoon means an acquisition with MinInterval was granted less
	// than the interval after the key's last committed run (by the
	// server's clock): fn did not run. A transaction the Locker opened was
	// rolled back; a caller's keeps the key until it ends. Match it to
	// skip the turn.
	ErrTooSoon = errors.New("dblock: too soon after the key's last run (MinInterval)")

	// ErrUpgrade means an exclusive acquisition of a key that its
	// transaction holds shared was refused: the transaction keeps the key
	// shared and is still open. Take the key exclusively from the start.
	ErrUpgrade = errors.New("dblock: shared lock cannot be upgraded to exclusive")

	// ErrPermits means an acquisition with Permits(n) named a key whose
	// semaphore has another number of permits: the first user's n is the
	// key's, and every user must pass the same.
	ErrPermits = errors.New("dblock: the key's semaphore has another number of permits")

	// ErrHierarchyChanged means the lock table's hierarchy setting was
	// switched (txlock hierarchy) while the acquisition took its keys in a
	// transaction of the caller's: roll it back and try again. Acquisitions
	// in transactions the Locker opens start over by themselves.
	ErrHierarchyChanged = errors.New("dblock: the lock table's hierarchy setting changed")

	// ErrNoLeader means nobody leads the election (Election.Leader): no
	// campaigner holds its named lock, or the one that just won has not
	// written its value yet.
	ErrNoLeader = errors.New("dblock: the election has no leader")
)

// MySQL and MariaDB error numbers the library maps.
const (
	erLockWaitTimeout     = 1205 // innodb_lock_wait_timeout
	erLockDeadlock        = 1213
	erNoSuchTable         = 1146
	erBadField            = 1054 // unknown column: a table from before a migration
	erCheckRead           = 1020 // "Record has changed since last read" (snapshot isolation): rolls the transaction back
	erStatementTimeout    = 1969 // MariaDB max_statement_time
	erQueryTimeout        = 3024 // MySQL max_execution_time
	erLockNowait          = 3572 // MySQL NOWAIT
	erOptionPreventsStmt  = 1290 // read_only server
	erUnknownCommand      = 1047 // Galera: node not ready
	erQueryInterrupted    = 1317
	erConnectionWasKilled = 1927 // MariaDB
	erUnknownThread       = 1094 // KILL of a connection that is gone
	erNoSuchQuery         = 1957 // MariaDB KILL QUERY ID of a query that ended
	erTableDefChanged     = 1412 // the table was recreated after the transaction's snapshot
	erDupEntry            = 1062 // a duplicate key (a committed election row: see Campaign)
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

// isBrokenConn reports whether err means the connection itself failed (not
// a server's refusal): an acquisition that met it before any grant may try
// again on another connection.
func isBrokenConn(err error) bool {
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, sql.ErrConnDone) || mysqlErrorNumber(err) == erConnectionWasKilled
}

// serverAnswered reports whether err came from the server (so the
// connection was alive when it answered).
func serverAnswered(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) || errors.Is(err, sql.ErrNoRows)
}

// endsTransaction reports whether a statement that failed with err has
// ended its transaction: the connection is gone, or the server rolled the
// whole transaction back (a deadlock, a stale snapshot, and with
// innodb_rollback_on_timeout a lock-wait timeout). Statements after it
// would run in autocommit.
func (l *Locker) endsTransaction(err error) bool {
	if err == nil {
		return false
	}
	if isConnectionLoss(err) || errors.Is(err, sql.ErrTxDone) {
		return true
	}
	switch mysqlErrorNumber(err) {
	case erLockDeadlock, erCheckRead:
		return true
	case erLockWaitTimeout:
		return l.srv.rollbackOnTimeout
	}
	return false
}

// notPrimary returns err, an error of step ("acquiring", ...) for key,
// wrapped with ErrNotPrimary when it is Galera's 1047 on a Galera node
// (elsewhere 1047 is ER_UNKNOWN_COM_ERROR); else nil.
func (l *Locker) notPrimary(step string, key Key, err error) error {
	if !l.srv.galera || mysqlErrorNumber(err) != erUnknownCommand {
		return nil
	}
	return fmt.Errorf("%w: %s %s: %w", ErrNotPrimary, step, key, err)
}

// commitError maps an error of COMMIT. Only an answer of the server, or a
// failure before COMMIT was written, is certain: a connection lost after
// COMMIT was sent leaves the outcome unknown (ErrCommitUnknown).
func commitError(key Key, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, errEndedUnseen) {
		// Whatever ended the transaction may have committed the writes
		// sent before it.
		return fmt.Errorf("%w: %w; commit of %s not sent: writes sent before the transaction ended may have been committed by what ended it, later ones were not",
			ErrCommitUnknown, err, key)
	}
	if errors.Is(err, errNotSent) {
		if !errors.Is(err, ErrLockLost) {
			err = fmt.Errorf("%w: %w", ErrLockLost, err)
		}
		return fmt.Errorf("%w; commit of %s not sent, writes not committed", err, key)
	}
	switch n := mysqlErrorNumber(err); {
	case n == erLockDeadlock:
		return fmt.Errorf("%w: %w: commit of %s, the transaction did not commit: %w", ErrLockLost, ErrDeadlock, key, err)
	case n == erCheckRead:
		return fmt.Errorf("%w: %w: commit of %s, the transaction did not commit: %w", ErrLockLost, ErrStaleSnapshot, key, err)
	case n != 0 && n != erConnectionWasKilled:
		return fmt.Errorf("%w: commit of %s refused by the server, writes not committed: %w", ErrLockLost, key, err)
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrTxDone) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// database/sql and the driver return these before COMMIT is
		// written: a transaction already ended, a context that ended first
		// (database/sql rolls back), a connection found dead before use.
		return fmt.Errorf("%w: commit of %s not sent, writes not committed: %w", ErrLockLost, key, err)
	}
	return fmt.Errorf("%w: %w: COMMIT of %s was sent and no answer came back (the connection failed or stalled): the writes may or may not be committed: %w",
		ErrCommitUnknown, ErrLockLost, key, err)
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
