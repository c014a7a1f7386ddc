package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// rowAttempts bounds the row step's retries: a concurrent creator, a gc
// deleting the row between two statements, or two creators of one key
// deadlocking on a deleted row's index entry.
const rowAttempts = 6

// rowIDs returns the row ids of keys (the row step of an acquisition).
func (l *Locker) rowIDs(ctx context.Context, keys []Key, ids []int64) ([]int64, error) {
	for _, key := range keys {
		id, err := l.findRow(ctx, key, false)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// findRow returns the id of key's row, creating the row when it is
// missing: a plain read, then INSERT IGNORE, both in autocommit on the
// side pool, never inside a lock transaction. inTx says the caller's open
// transaction has just found the row missing with a locking read, whose
// gap lock may block the insert: a lock wait then fails at once instead
// of being retried.
func (l *Locker) findRow(ctx context.Context, key Key, inTx bool) (int64, error) {
	if id, ok := l.cache.get(key); ok {
		return id, nil
	}
	h := key.hash()
	var err error
	for attempt := 0; attempt < rowAttempts; attempt++ {
		var id int64
		if id, err = l.lookupRow(ctx, h[:]); err == nil {
			l.cache.put(key, id)
			return id, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			break
		}
		if id, err = l.createRow(ctx, key, h[:]); err == nil {
			if id != 0 {
				l.cache.put(key, id)
				return id, nil
			}
			continue // a concurrent creator won: read its row
		}
		// Autocommit statements: safe to run again. Two creators of one
		// key can deadlock on a deleted row's index entry: back off apart.
		switch mysqlErrorNumber(err) {
		case erLockWaitTimeout, erStatementTimeout:
			if inTx {
				return 0, fmt.Errorf("%w: %s: its row was deleted (outside `txlock gc`, which keeps the newest row) and creating it again waits for this transaction's own gap lock: roll the transaction back and retry: %w",
					ErrNotAcquired, key, err)
			}
			fallthrough
		case erLockDeadlock:
			if err := sleepCtx(ctx, rowBackoff.pause(attempt+1)); err != nil {
				return 0, fmt.Errorf("dblock: finding the row of %s: %w", key, err)
			}
			continue
		}
		break
	}
	if mysqlErrorNumber(err) == erNoSuchTable {
		l.cache.clear()
		return 0, fmt.Errorf("%w: %w", ErrTableMissing, err)
	}
	if e := l.notPrimary("finding the row of", key, err); e != nil {
		return 0, e
	}
	return 0, fmt.Errorf("dblock: finding the row of %s in %s: %w", key, l.cfg.table, withCause(ctx, err))
}

// createRow inserts key's row and returns its id, or 0 when the row exists
// already. On MariaDB the insert waits at most a second: INSERT IGNORE of a
// row that a holder has locked waits for the holder, and the side pool is
// small.
func (l *Locker) createRow(ctx context.Context, key Key, hash []byte) (int64, error) {
	global := 0
	if key.Global {
		global = 1
	}
	res, err := l.side.ExecContext(ctx, l.q.insertRow, hash, key.Resource, key.Operation, key.Method, key.User, global)
	if err != nil {
		return 0, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return 0, nil
	}
	id, err := res.LastInsertId()
	if err == nil {
		l.log.DebugContext(ctx, "dblock: created key row", "granularity", key.granularity(), "id", id)
	}
	return id, err
}

func (l *Locker) lookupRow(ctx context.Context, hash []byte) (int64, error) {
	var id int64
	err := l.side.QueryRowContext(ctx, l.q.selectRow, hash).Scan(&id)
	return id, err
}

// rowExists reports whether row id of hash exists (outside any
// transaction): a locking read that skipped it found it held, not gone.
func (l *Locker) rowExists(ctx context.Context, id int64, hash []byte) (bool, error) {
	var one int
	err := l.side.QueryRowContext(ctx, l.q.rowExists, id, hash).Scan(&one)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	}
	return false, err
}
