package dblock

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/txlock/txlock/schema"
)

// MinInterval makes the key's runs at least d apart, start to start, by
// the server's clock, across every process: the acquisition records its
// run in the lock's transaction, and one granted less than d after the
// last committed run fails with ErrTooSoon without running fn. A run
// whose transaction rolled back does not count. One key per acquisition
// (not DoMulti); d is counted in whole microseconds, at least one. See
// "Scheduled jobs: MinInterval" in the package documentation.
func MinInterval(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d < time.Microsecond {
			return fmt.Errorf("dblock: MinInterval must be at least 1µs, got %v", d)
		}
		lc.minInterval = d.Truncate(time.Microsecond)
		return nil
	}
}

// errMinIntervalMulti refuses MinInterval with several keys.
var errMinIntervalMulti = errors.New("dblock: MinInterval applies to one key (a scheduled job's), not to DoMulti's several: " +
	"take the job's key with Do and MinInterval, and the other keys inside it")

// runTimeLayout is how the run table's DATETIME(6) reads as text.
const runTimeLayout = "2006-01-02 15:04:05.999999"

// recordRun records a run of key in the transaction on tx, which holds
// the key, if the last committed run is at least d old by the server's
// clock (UTC_TIMESTAMP, whatever the session's time zone); else it
// returns ErrTooSoon and writes nothing. One statement, an upsert of the
// key's row that takes only its record lock: its outcome comes back in
// the insert id (LAST_INSERT_ID(expr)), which clientFoundRows does not
// change as it does the affected-row count; 0 means too soon. A second
// statement, only then, reads the last run for the error. It returns the
// run's number (the key's count of runs, this one included), by which the
// transaction knows its run later (sameRun).
func (l *Locker) recordRun(ctx context.Context, tx stmtRunner, key Key, d time.Duration) (int64, error) {
	run := "`" + schema.RunTable(l.cfg.table) + "`"
	h := key.hash()
	hash := "X'" + hex.EncodeToString(h[:]) + "'"
	due := "last_run <= UTC_TIMESTAMP(6) - INTERVAL " + strconv.FormatInt(d.Microseconds(), 10) + " MICROSECOND"
	res, err := tx.ExecContext(ctx, "INSERT INTO "+run+" (key_hash, last_run, runs) VALUES ("+hash+", UTC_TIMESTAMP(6), LAST_INSERT_ID(1))"+
		" ON DUPLICATE KEY UPDATE runs = IF("+due+", LAST_INSERT_ID(runs + 1), runs + LAST_INSERT_ID(0)),"+
		" last_run = IF("+due+", UTC_TIMESTAMP(6), last_run)")
	if err != nil {
		return 0, l.runError(key, "recording the run of", err)
	}
	n, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("dblock: recording the run of %s: %w", key, err)
	}
	if n > 0 {
		return n, nil
	}
	var last string
	var ago int64
	err = tx.QueryRowContext(ctx, "SELECT CAST(last_run AS CHAR), TIMESTAMPDIFF(MICROSECOND, last_run, UTC_TIMESTAMP(6)) FROM "+run+
		" WHERE key_hash = "+hash+" LOCK IN SHARE MODE").Scan(&last, &ago)
	if err != nil {
		noteErr(tx, err)
		return 0, fmt.Errorf("%w: %s (MinInterval(%v)): %w", ErrTooSoon, key, d, l.runError(key, "reading the last run of", err))
	}
	at, perr := time.ParseInLocation(runTimeLayout, last, time.UTC)
	if perr != nil {
		return 0, fmt.Errorf("%w: %s last ran at %q (server time, UTC), less than MinInterval(%v) ago", ErrTooSoon, key, last, d)
	}
	wait := d - time.Duration(ago)*time.Microsecond
	return 0, fmt.Errorf("%w: %s last ran at %s (server time, UTC), less than MinInterval(%v) ago; the next run is allowed from %s (in %v)",
		ErrTooSoon, key, at.Format(runTimeLayout), d, at.Add(d).Format(runTimeLayout), wait.Round(time.Millisecond))
}

// sameRun reports whether the key's run table row still shows run n, the
// run this transaction recorded: a rollback to a savepoint taken before
// the record undoes it (and keeps the lock), and the key must then be
// judged again.
func (l *Locker) sameRun(ctx context.Context, tx stmtRunner, key Key, n int64) (bool, error) {
	h := key.hash()
	var runs int64
	err := tx.QueryRowContext(ctx, "SELECT runs FROM `"+schema.RunTable(l.cfg.table)+"` WHERE key_hash = X'"+hex.EncodeToString(h[:])+"' LOCK IN SHARE MODE").Scan(&runs)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		noteErr(tx, err)
		return false, l.runError(key, "reading the run of", err)
	}
	return runs == n, nil
}

// runError maps an error of a statement on the run table.
func (l *Locker) runError(key Key, step string, err error) error {
	switch mysqlErrorNumber(err) {
	case erNoSuchTable:
		return fmt.Errorf("%w: MinInterval needs %s, created by migration 2 (run migrations.Up or `txlock migrate up`): %s %s: %w",
			ErrTableMissing, schema.RunTable(l.cfg.table), step, key, err)
	case erLockDeadlock:
		return fmt.Errorf("%w: %w: %s %s: %w", ErrLockLost, ErrDeadlock, step, key, err)
	case erCheckRead:
		return fmt.Errorf("%w: %s %s: the transaction had read the run before its lock; the server rolled it back: %w", ErrStaleSnapshot, step, key, err)
	}
	if l.endsTransaction(err) {
		return fmt.Errorf("%w: %s %s: %w", ErrLockLost, step, key, err)
	}
	return fmt.Errorf("dblock: %s %s: %w", step, key, err)
}
