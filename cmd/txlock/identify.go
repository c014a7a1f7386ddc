package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// holderOf is what identifyHolder found.
type holderOf struct {
	found bool // the probe was seen blocked by the row's holders
	// holders are the holders named: one exclusive, or the shared ones
	// whose transactions have an id (MariaDB).
	holders []blocker
	// unnamedShared: the row is held shared by one or more transactions
	// that have written nothing, which MariaDB's views give the id 0 that
	// all of them share: they cannot be named.
	unnamedShared bool
	notHeld       bool  // the probe got the row: nobody held it any more
	rowGone       bool  // the row no longer exists
	probeErr      error // how the probe's statement ended, if it did
	// stale: the probe waited (PROCESSLIST) but never appeared in the
	// INNODB_* cache: other clients keep it from being refreshed.
	stale bool
}

// A blocker is a named holder of the row the probe waits for.
type blocker struct {
	conn   int64  // its connection
	trx    string // its transaction
	shared bool   // it holds the row shared
	// base is the connection as PROCESSLIST showed it before the probe
	// began (zero if it was not there yet): if it still shows the same,
	// the holder is still in the transaction that held the row
	// (liveness.go).
	base procInfo
}

// mode is the blocker's lock mode, "X" or "S".
func (b blocker) mode() string {
	if b.shared {
		return "S"
	}
	return "X"
}

// probeTag marks the locking read of identifyHolder, so that views can
// leave it out.
const probeTag = "txlock-cli-identify"

// identifyQuerySQL reads, in one read of the cache, whether the probe's
// transaction is in it at all (a first row, 'n', with the count), and what
// blocks the probe connection's lock request: granted locks, not another
// waiter's pending request (a row 'b' each: the blocker's connection,
// transaction and whether its lock is shared). A blocking transaction of
// id 0 is every transaction that has written nothing (MariaDB): it names
// no connection (0), and its lock may be granted or pending. The probe
// waits with FOR UPDATE, so it has an id of its own. Parameters: the
// probe's connection id, the probe's connection id, the INNODB_LOCKS
// table name.
const identifyQuerySQL = `SELECT 'n', COUNT(*), '', 0 FROM information_schema.INNODB_TRX p WHERE p.trx_mysql_thread_id = ?
UNION ALL
SELECT 'b', COALESCE(bt.trx_mysql_thread_id, 0), CAST(w.blocking_trx_id AS CHAR), bl.lock_mode LIKE 'S%'
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_TRX rt ON rt.trx_id = w.requesting_trx_id
JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id
LEFT JOIN information_schema.INNODB_TRX bt ON bt.trx_id = w.blocking_trx_id AND w.blocking_trx_id <> 0
WHERE rt.trx_mysql_thread_id = ? AND bl.lock_table = ? AND bl.lock_index = 'PRIMARY'
  AND (w.blocking_trx_id = 0 OR NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id))`

// identifyHolder finds who holds row id of table (the lock table, or its
// permit table) on MariaDB: a
// probe connection queues "SELECT id ... FOR UPDATE" behind the holder for
// at most maxWait, which makes the holder appear in INNODB_LOCK_WAITS as
// the probe's blocker (every holder of a row held shared); then the probe
// is withdrawn (KILL QUERY) and rolled back. The cache fill that names the
// holders shows the probe waiting, so it was made after the probe began,
// and after PROCESSLIST was read into their base. While it waits, the
// probe's exclusive request also holds up shared requests that arrive
// after it.
func (in *inspector) identifyHolder(ctx context.Context, table string, id int64, maxWait time.Duration) (holderOf, error) {
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
		" FOR SELECT /*" + probeTag + "*/ id FROM `" + table + "` WHERE id = " + strconv.FormatInt(id, 10) + " FOR UPDATE"
	done := make(chan error, 1)
	go func() {
		var got int64
		done <- probe.QueryRowContext(context.WithoutCancel(ctx), stmt).Scan(&got)
	}()
	h, ended, err := in.pollBlocker(ctx, table, probeID, before, done, maxWait)
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
func (in *inspector) pollBlocker(ctx context.Context, table string, probeID int64, before map[int64]procInfo, done <-chan error, maxWait time.Duration) (h holderOf, ended bool, err error) {
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
		inTrx, qerr := in.readBlockers(ctx, table, probeID, before, &h)
		switch {
		case qerr != nil:
			err = fmt.Errorf("identifying the holder: reading INNODB_LOCK_WAITS: %w", qerr)
		case !h.found:
			seen = seen || inTrx
		}
	}
	h.stale = !h.found && err == nil && polls >= 2 && !seen
	return h, false, err
}

// readBlockers reads once what blocks the probe connection probeID into
// h (found, holders, unnamedShared), and whether the probe's transaction
// is in the cache. An exclusive holder excludes every other: beside one,
// a lock of transaction 0 is a pending shared request.
func (in *inspector) readBlockers(ctx context.Context, table string, probeID int64, before map[int64]procInfo, h *holderOf) (inTrx bool, err error) {
	rows, err := in.db.QueryContext(ctx, identifyQuerySQL, probeID, probeID, in.viewName(table))
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var named []blocker
	unnamed := false
	for rows.Next() {
		var kind, trx string
		var n int64
		var shared bool
		if err := rows.Scan(&kind, &n, &trx, &shared); err != nil {
			return false, err
		}
		switch {
		case kind == "n":
			inTrx = n > 0
		case trx == unnamedTrx:
			unnamed = unnamed || shared
		case n != 0 && !slices.ContainsFunc(named, func(b blocker) bool { return b.trx == trx }):
			named = append(named, blocker{conn: n, trx: trx, shared: shared, base: before[n]})
		}
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	if i := slices.IndexFunc(named, func(b blocker) bool { return !b.shared }); i >= 0 {
		named, unnamed = named[i:i+1], false
	}
	slices.SortFunc(named, func(a, b blocker) int { return cmp.Compare(a.conn, b.conn) })
	h.holders, h.unnamedShared = named, unnamed
	h.found = len(named) > 0 || unnamed
	return inTrx, nil
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

// A rowSet is the rows of one table a snapshot knows of.
type rowSet struct {
	table string
	rows  rowStates
}

// identifyHolders names, with identifyHolder, the holders of the probed
// rows of sets that have none proven, and keeps those that a fresh
// PROCESSLIST, which it returns, shows still in the same transaction.
func (in *inspector) identifyHolders(ctx context.Context, sets ...rowSet) (identified, map[int64]procInfo, error) {
	var res identified
	type foundRow struct {
		s *rowState
		h holderOf
	}
	var found []foundRow
	for _, set := range sets {
		for id, s := range set.rows {
			if len(s.holders) > 0 || s.unnamedShared || !s.live {
				continue // the cache showed its holders (those it can name)
			}
			h, err := in.identifyHolder(ctx, set.table, id, time.Second)
			if err != nil {
				return res, nil, err
			}
			if h.found {
				found = append(found, foundRow{s, h})
			}
			res.staleCache = res.staleCache || h.stale
		}
	}
	procs, err := in.processes(ctx) // fresh, for the identified
	if err != nil {
		return res, nil, err
	}
	for _, f := range found {
		s, h := f.s, f.h
		s.source = "identify"
		s.unnamedShared = h.unnamedShared
		for _, b := range h.holders {
			if !sameTransaction(b.base, procs[b.conn]) {
				res.moved++ // it ran a statement since it was named: it may have released
				continue
			}
			s.holders[b.trx] = connMode{b.conn, b.mode()}
		}
	}
	return res, procs, nil
}
