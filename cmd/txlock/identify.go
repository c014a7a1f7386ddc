package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// holderOf is what identifyHolder found.
type holderOf struct {
	found    bool   // the holder was seen
	conn     int64  // its connection
	trx      string // its transaction
	notHeld  bool   // the probe got the row: nobody held it any more
	rowGone  bool   // the row no longer exists
	probeErr error  // how the probe's statement ended, if it did
	// stale: the probe waited (PROCESSLIST) but never appeared in the
	// INNODB_* cache: other clients keep it from being refreshed.
	stale bool
	// base is the holder's connection as PROCESSLIST showed it before the
	// probe began (zero if it was not there yet): if it still shows the
	// same, the holder is still in the transaction that held the row
	// (liveness.go).
	base procInfo
}

// probeTag marks the locking read of identifyHolder, so that views can
// leave it out.
const probeTag = "txlock-cli-identify"

// identifyQuerySQL finds what blocks the probe connection's lock request,
// a granted lock (not another waiter's pending request), and whether the
// probe's transaction is in the cache at all (in one read of the cache).
// Parameters: the probe's connection id, the INNODB_LOCKS table name, the
// probe's connection id.
const identifyQuerySQL = `SELECT COALESCE(MAX(CAST(w.blocking_trx_id AS CHAR)), ''), COALESCE(MAX(bt.trx_mysql_thread_id), 0),
  (SELECT COUNT(*) FROM information_schema.INNODB_TRX p WHERE p.trx_mysql_thread_id = ?)
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_TRX rt ON rt.trx_id = w.requesting_trx_id
JOIN information_schema.INNODB_TRX bt ON bt.trx_id = w.blocking_trx_id
JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id
WHERE rt.trx_mysql_thread_id = ? AND bl.lock_table = ? AND bl.lock_index = 'PRIMARY'
  AND NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id)`

// identifyHolder finds who holds row id of the lock table on MariaDB: a
// probe connection queues "SELECT id ... FOR UPDATE" behind the holder for
// at most maxWait, which makes the holder appear in INNODB_LOCK_WAITS as
// the probe's blocker; then the probe is withdrawn (KILL QUERY) and rolled
// back. The cache fill that names the holder shows the probe waiting, so it
// was made after the probe began, and after PROCESSLIST was read into
// h.base.
func (in *inspector) identifyHolder(ctx context.Context, id int64, maxWait time.Duration) (holderOf, error) {
	probe, probeID, err := ownSession(ctx, in.db)
	if err != nil {
		return holderOf{}, fmt.Errorf("identifying the holder: %w", err)
	}
	// Leave no transaction behind.
	defer discardOnFailedRollback(ctx, probe)
	before, err := in.processes(ctx)
	if err != nil {
		return holderOf{}, err
	}
	if _, err := probe.ExecContext(ctx, "START TRANSACTION"); err != nil {
		return holderOf{}, fmt.Errorf("identifying the holder: %w", err)
	}
	// The server ends the wait itself after maxWait plus a margin, should
	// the KILL QUERY below not happen.
	limit := (maxWait + time.Second).Seconds()
	stmt := "SET STATEMENT max_statement_time=" + strconv.FormatFloat(limit, 'f', 3, 64) +
		" FOR SELECT /*" + probeTag + "*/ id FROM `" + in.table + "` WHERE id = " + strconv.FormatInt(id, 10) + " FOR UPDATE"
	done := make(chan error, 1)
	go func() {
		var got int64
		done <- probe.QueryRowContext(context.WithoutCancel(ctx), stmt).Scan(&got)
	}()
	h, ended, err := in.pollBlocker(ctx, probeID, before, done, maxWait)
	if ended {
		return h, nil
	}
	// Found, failed, out of time or interrupted: withdraw the probe.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_, kerr := in.db.ExecContext(kctx, "KILL QUERY "+strconv.FormatInt(probeID, 10))
	cancel()
	perr := <-done
	if perr == nil || errors.Is(perr, sql.ErrNoRows) {
		// The probe got the row (or found it gone) before the kill: whoever
		// held it has released it.
		return probeEnded(perr), nil
	}
	if kerr != nil && err == nil {
		err = fmt.Errorf("identifying the holder: withdrawing the probe: %w", kerr)
	}
	if err == nil {
		err = ctx.Err()
	}
	return h, err
}

// pollBlocker reads who blocks the lock request of the probe connection
// probeID, every cacheQuiet for up to maxWait (reads closer together than
// 100 ms would keep the cache from being refreshed), until it is named.
// before is PROCESSLIST from before the probe began. If the probe's
// statement ends on its own first (done), it returns how, with ended set.
func (in *inspector) pollBlocker(ctx context.Context, probeID int64, before map[int64]procInfo, done <-chan error, maxWait time.Duration) (h holderOf, ended bool, err error) {
	deadline := time.Now().Add(maxWait)
	tick := time.NewTicker(cacheQuiet)
	defer tick.Stop()
	polls, seen := 0, false
	for ctx.Err() == nil && time.Now().Before(deadline) && !h.found && err == nil {
		select {
		case perr := <-done:
			return probeEnded(perr), true, nil
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		polls++
		var inTrx int
		qerr := in.db.QueryRowContext(ctx, identifyQuerySQL, probeID, probeID, in.lockTableName()).Scan(&h.trx, &h.conn, &inTrx)
		switch {
		case qerr == nil && h.conn != 0:
			h.found, h.base = true, before[h.conn]
		case qerr == nil:
			seen = seen || inTrx > 0
		default:
			err = fmt.Errorf("identifying the holder: reading INNODB_LOCK_WAITS: %w", qerr)
		}
	}
	h.stale = !h.found && err == nil && polls >= 2 && !seen
	return h, false, err
}

// probeEnded reports how the probe's statement ended on its own: granted
// (nobody holds the row any more), no row, or an error (timeout).
func probeEnded(perr error) holderOf {
	switch {
	case perr == nil:
		return holderOf{notHeld: true}
	case errors.Is(perr, sql.ErrNoRows):
		return holderOf{rowGone: true}
	}
	return holderOf{probeErr: perr}
}

// identified is what --identify learned beside the holders it named.
type identified struct {
	staleCache bool // a probe never appeared in the INNODB_* cache
	moved      int  // holders named but running statements right after: not named
}

// identifyHolders names, with identifyHolder, the holders of the probed
// rows of rowsByID that have none proven, and keeps those that a fresh
// PROCESSLIST, which it returns, shows still in the same transaction.
func (in *inspector) identifyHolders(ctx context.Context, rowsByID rowStates) (identified, map[int64]procInfo, error) {
	var res identified
	found := map[int64]holderOf{}
	for id, s := range rowsByID {
		if len(s.holders) > 0 || !s.live {
			continue
		}
		h, err := in.identifyHolder(ctx, id, time.Second)
		if err != nil {
			return res, nil, err
		}
		if h.found {
			found[id] = h
		}
		res.staleCache = res.staleCache || h.stale
	}
	procs, err := in.processes(ctx) // fresh, for the identified
	if err != nil {
		return res, nil, err
	}
	for id, h := range found {
		if !sameTransaction(h.base, procs[h.conn]) {
			res.moved++ // it ran a statement since it was named: it may have released
			continue
		}
		rowsByID[id].holders[h.trx] = h.conn
		rowsByID[id].source = "identify"
	}
	return res, procs, nil
}
