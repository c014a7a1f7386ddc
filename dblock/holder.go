package dblock

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A Session is a server connection as Holder reports it.
type Session struct {
	ConnID int64 // the server's connection id (CONNECTION_ID())
	// User and Host (the client's "host:port" as the server sees it) are
	// from PROCESSLIST: "" if the connection was gone when asked, or not
	// visible (another user's, without the PROCESS privilege).
	User string
	Host string
	// Label is the Label of the Locker that locks on the connection
	// (of Lockers sharing a pool, the last one to meet it), from the
	// session table; "" when it has no row of the server's current run
	// (not a txlock connection, or the table is missing).
	Label string
}

// A Holder is who held a key at a moment during the call that returned
// it: the holding connection, since when, and who waited for the key.
type Holder struct {
	Key Key
	Session
	// Since is when the holder's transaction began, on the server's
	// clock, to the second; zero when the server did not say.
	Since time.Time
	// Shared reports that the key is held in shared mode (Shared), which
	// several transactions may do at once: Session is then the holder
	// whose transaction began first, and SharedWith the others.
	Shared bool
	// SharedWith are the other holders of a key held shared, in the order
	// their transactions began. On MariaDB they are only those whose
	// transaction has written something or holds an exclusive lock: its
	// lock views give a transaction that has only read the id 0, like
	// every other such transaction, so it cannot be named (a key held
	// shared by such transactions only is ErrHolderUnknown).
	SharedWith []Session
	// Waiters are the connections queued for the key, longest waiting
	// first (MariaDB: those the holder lookup saw queued with its probe,
	// except shared requests of transactions that have written nothing,
	// which its views do not name).
	Waiters []Session
}

// holderWait bounds how long Holder waits on MariaDB for the server's
// lock views to show the holder; holderPoll is how often it reads them
// (the server refreshes them only after 100 ms without reads).
const (
	holderWait = 2 * time.Second
	holderPoll = 150 * time.Millisecond
)

// holderTag marks the probe of Holder in the process list and the lock
// views.
const holderTag = "txlock-holder"

// Holder returns who holds key: ErrNotHeld when nobody does (no row, or
// free when looked at, or released during the call). A key held shared
// may have several holders: see Holder.Shared and Holder.SharedWith. On MariaDB the
// server shows a holder only to a waiter, so Holder queues a probe behind
// it for a moment (a locking read on a connection of the Locker's pool,
// withdrawn at once: called while the caller holds every connection of
// the pool, it waits for one until ctx ends); it may return
// ErrHolderUnknown. Its look at a free key locks the row for one
// statement, which a TryLock at that instant sees as held. See "Who holds
// a lock" in the package documentation for what it costs and guarantees.
func (l *Locker) Holder(ctx context.Context, key Key) (Holder, error) {
	if err := l.checkInspect(ctx, "Holder"); err != nil {
		return Holder{}, err
	}
	if err := key.Validate(); err != nil {
		return Holder{}, fmt.Errorf("dblock: Holder: %w", err)
	}
	// The row's id is read, not taken from the cache: a row collected and
	// created again has another id.
	h := key.hash()
	id, err := l.lookupRow(ctx, h[:])
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return Holder{}, fmt.Errorf("%w: Holder: %s has no row: it was never locked (or its row was collected)", ErrNotHeld, key)
	case mysqlErrorNumber(err) == erNoSuchTable:
		return Holder{}, fmt.Errorf("%w: %w", ErrTableMissing, err)
	case err != nil:
		return Holder{}, fmt.Errorf("dblock: Holder(%s): finding the key's row: %w", key, withCause(ctx, err))
	}
	var f heldRow
	if l.srv.mariaDB {
		f, err = l.probeHolder(ctx, id)
	} else {
		var rows map[int64]*heldRow
		if rows, err = l.dataLocks(ctx, id); err == nil {
			if r, ok := rows[id]; ok {
				f = *r
			} else {
				err = errFree
			}
		}
	}
	if err != nil {
		return Holder{}, l.holderError(ctx, key, err)
	}
	switch {
	case f.conn == 0 && f.shared:
		return Holder{}, fmt.Errorf("%w: %s is held shared, but its holders cannot be named: %s", ErrHolderUnknown, key, f.why)
	case f.conn == 0:
		return Holder{}, fmt.Errorf("%w: %s is held, but the server's lock views did not name its holder within %v: %s",
			ErrHolderUnknown, key, holderWait, f.why)
	}
	out, err := l.describe(ctx, []Key{key}, []heldRow{f})
	if err != nil {
		return Holder{}, err
	}
	return out[0], nil
}

// checkInspect validates the receiver and context of an inspection.
func (l *Locker) checkInspect(ctx context.Context, what string) error {
	switch {
	case l == nil:
		return fmt.Errorf("dblock: %s: nil *Locker", what)
	case ctx == nil:
		return fmt.Errorf("dblock: %s: nil context", what)
	case l.closed.Load():
		return fmt.Errorf("dblock: %s: %w", what, errClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dblock: %s: %w", what, context.Cause(ctx))
	}
	return nil
}

// errFree and errGone say that a probe found the row free, or gone.
var (
	errFree = errors.New("free")
	errGone = errors.New("row gone")
)

// holderError maps what the lookup of key's holder failed with.
func (l *Locker) holderError(ctx context.Context, key Key, err error) error {
	switch {
	case errors.Is(err, errFree):
		return fmt.Errorf("%w: Holder: %s is free", ErrNotHeld, key)
	case errors.Is(err, errGone):
		return fmt.Errorf("%w: Holder: %s has no row any more", ErrNotHeld, key)
	case mysqlErrorNumber(err) == erNoSuchTable:
		return fmt.Errorf("%w: %w", ErrTableMissing, err)
	}
	return fmt.Errorf("dblock: Holder(%s): %w", key, withCause(ctx, err))
}

// heldRow is what the server's lock views showed of one held key row.
type heldRow struct {
	id      int64
	conn    int64 // 0: held, holder not named (why says why)
	since   int64 // Unix seconds of the holder's transaction start; 0: unknown
	shared  bool  // held in shared mode: others may hold it too
	others  []int64
	waiters []int64
	why     string
}

// grant is one granted lock on a key row: the holding connection (0: not
// named), its transaction's start, and whether the lock is shared.
type grant struct {
	conn, since int64
	shared      bool
}

// setHolders records the granted locks on f's row: an exclusive one if
// any (then no other transaction holds the row, and the unnamed shared
// requests are waiters'), else the shared ones, the earliest first. An
// unnamed shared lock with no named one leaves f.conn 0. It reports
// whether it found a holder, named or not.
func (f *heldRow) setHolders(gs []grant, unnamedShared bool) bool {
	for _, g := range gs {
		if !g.shared {
			f.conn, f.since, f.shared, f.others, f.why = g.conn, g.since, false, nil, ""
			return true
		}
	}
	if len(gs) == 0 {
		if unnamedShared {
			f.shared, f.why = true, sharedUnnamed
		}
		return unnamedShared
	}
	slices.SortFunc(gs, func(a, b grant) int {
		if a.since != b.since {
			return cmp.Compare(a.since, b.since)
		}
		return cmp.Compare(a.conn, b.conn)
	})
	f.conn, f.since, f.shared, f.why = gs[0].conn, gs[0].since, true, ""
	f.others = f.others[:0]
	for _, g := range gs[1:] {
		if g.conn != f.conn && !slices.Contains(f.others, g.conn) {
			f.others = append(f.others, g.conn)
		}
	}
	return true
}

// sharedUnnamed is why a key held shared has no named holder (MariaDB).
const sharedUnnamed = "they have written nothing, and MariaDB's lock views give every such transaction the id 0 (txlock locks lists the candidates)"

// describe completes the holders found for keys with their sessions
// (PROCESSLIST) and labels (the session table).
func (l *Locker) describe(ctx context.Context, keys []Key, found []heldRow) ([]Holder, error) {
	var ids []int64
	for _, f := range found {
		if f.conn != 0 {
			ids = append(ids, f.conn)
		}
		ids = append(ids, f.others...)
		ids = append(ids, f.waiters...)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	sess := make(map[int64]Session, len(ids))
	for _, id := range ids {
		sess[id] = Session{ConnID: id}
	}
	if len(ids) > 0 {
		rows, err := l.side.QueryContext(ctx, "SELECT ID, USER, COALESCE(HOST, '') FROM information_schema.PROCESSLIST WHERE ID IN ("+joinInts(ids)+")")
		if err != nil {
			return nil, fmt.Errorf("dblock: reading PROCESSLIST: %w", withCause(ctx, err))
		}
		for rows.Next() {
			var s Session
			if err := rows.Scan(&s.ConnID, &s.User, &s.Host); err != nil {
				rows.Close()
				return nil, fmt.Errorf("dblock: reading PROCESSLIST: %w", err)
			}
			sess[s.ConnID] = s
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("dblock: reading PROCESSLIST: %w", err)
		}
		l.flushLabels(ctx) // a lock this Locker just took shows its label
		labels, err := l.labels(ctx, ids)
		if err != nil {
			return nil, err
		}
		for id, label := range labels {
			s := sess[id]
			s.Label = label
			sess[id] = s
		}
	}
	out := make([]Holder, len(found))
	for i, f := range found {
		h := Holder{Key: keys[i], Shared: f.shared, Waiters: []Session{}}
		if f.conn != 0 {
			h.Session = sess[f.conn]
		}
		for _, o := range f.others {
			h.SharedWith = append(h.SharedWith, sess[o])
		}
		if f.since > 0 {
			h.Since = time.Unix(f.since, 0)
		}
		for _, w := range f.waiters {
			h.Waiters = append(h.Waiters, sess[w])
		}
		out[i] = h
	}
	return out, nil
}

// mySQLDataLocks lists the record locks (exclusive or shared, not gap
// locks) on the lock table's primary key, granted or waiting, with the
// holder's transaction start and a waiter's wait start (MySQL 8:
// performance_schema.data_locks lists every lock, each transaction with
// its own id). The parameter is the table's name.
const mySQLDataLocks = "SELECT d.LOCK_DATA, t.PROCESSLIST_ID, d.LOCK_STATUS = 'GRANTED', d.LOCK_MODE LIKE 'S%', " +
	"COALESCE(UNIX_TIMESTAMP(x.trx_started), 0), COALESCE(UNIX_TIMESTAMP(x.trx_wait_started), 0) " +
	"FROM performance_schema.data_locks d " +
	"JOIN performance_schema.threads t ON t.THREAD_ID = d.THREAD_ID " +
	"LEFT JOIN information_schema.INNODB_TRX x ON x.trx_id = d.ENGINE_TRANSACTION_ID " +
	"WHERE d.ENGINE = 'INNODB' AND d.OBJECT_SCHEMA = DATABASE() AND d.OBJECT_NAME = ? " +
	"AND d.INDEX_NAME = 'PRIMARY' AND d.LOCK_TYPE = 'RECORD' AND d.LOCK_MODE IN ('X', 'S', 'X,REC_NOT_GAP', 'S,REC_NOT_GAP') " +
	"AND d.LOCK_STATUS IN ('GRANTED', 'WAITING')"

// dataLocks reads the held rows of the lock table from MySQL's
// data_locks: row id (every row when 0).
func (l *Locker) dataLocks(ctx context.Context, id int64) (map[int64]*heldRow, error) {
	q, args := mySQLDataLocks, []any{l.cfg.table}
	if id != 0 {
		q += " AND d.LOCK_DATA = ?"
		args = append(args, strconv.FormatInt(id, 10))
	}
	rows, err := l.side.QueryContext(ctx, q+" ORDER BY x.trx_wait_started", args...)
	if err != nil {
		return nil, fmt.Errorf("reading performance_schema.data_locks (it needs performance_schema=ON and the PROCESS privilege): %w", err)
	}
	defer rows.Close()
	out := map[int64]*heldRow{}
	grants := map[int64][]grant{}
	for rows.Next() {
		var data sql.NullString
		var conn sql.NullInt64
		var granted, shared bool
		var since, waited int64
		if err := rows.Scan(&data, &conn, &granted, &shared, &since, &waited); err != nil {
			return nil, fmt.Errorf("reading performance_schema.data_locks: %w", err)
		}
		rowID, err := strconv.ParseInt(strings.TrimSpace(data.String), 10, 64)
		if err != nil || !conn.Valid {
			continue // a supremum pseudo-record, or a background thread
		}
		r := out[rowID]
		if r == nil {
			r = &heldRow{id: rowID, why: "data_locks shows only waiters"}
			out[rowID] = r
		}
		if granted {
			grants[rowID] = append(grants[rowID], grant{conn: conn.Int64, since: since, shared: shared})
		} else if !slices.Contains(r.waiters, conn.Int64) {
			r.waiters = append(r.waiters, conn.Int64)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading performance_schema.data_locks: %w", err)
	}
	for k, r := range out {
		if !r.setHolders(grants[k], false) {
			delete(out, k) // waiters only: the holder released as it was read
		}
	}
	return out, nil
}

// mariaDBLockWaits lists the lock waits on one row of the lock table:
// the waiting connection, the blocking one, whether the blocking lock is
// granted (not the blocker's own pending request), whether it is shared,
// the blocker's transaction start and the wait's start. MariaDB gives a
// transaction that has written nothing and holds no exclusive lock the
// id 0, which every such transaction shares: a waiter or blocker of id 0
// is not named (connection 0), and a blocking lock of id 0 may be
// granted or pending. Parameters: the table as INNODB_LOCKS names it
// ("`db`.`table`"), the row id.
const mariaDBLockWaits = `SELECT COALESCE(rt.trx_mysql_thread_id, 0), COALESCE(bt.trx_mysql_thread_id, 0),
  w.blocking_trx_id = 0 OR NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id), bl.lock_mode LIKE 'S%',
  COALESCE(UNIX_TIMESTAMP(bt.trx_started), 0), COALESCE(UNIX_TIMESTAMP(rt.trx_wait_started), 0)
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_LOCKS rl ON rl.lock_id = w.requested_lock_id
JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id
LEFT JOIN information_schema.INNODB_TRX rt ON rt.trx_id = w.requesting_trx_id AND w.requesting_trx_id <> 0
LEFT JOIN information_schema.INNODB_TRX bt ON bt.trx_id = w.blocking_trx_id AND w.blocking_trx_id <> 0
WHERE rl.lock_table = ? AND rl.lock_index = 'PRIMARY' AND rl.lock_type = 'RECORD' AND rl.lock_data = ?
ORDER BY rt.trx_wait_started`

// probeHolder finds who holds row id on MariaDB, whose lock views show a
// lock only while someone waits for it. On a connection of the Locker's
// pool, in a transaction that is always rolled back:
// a SKIP LOCKED read (the row is free or gone: errFree, errGone; it is
// held a moment, like any lock); else a locking read queued behind the
// holder, while the lock views are read every holderPoll until a fill
// shows the probe waiting and who blocks it; then the probe is withdrawn
// (KILL QUERY ID). If the probe was granted first, the holder released
// during the call (errFree): the probe was behind every earlier waiter in
// the queue, and it is rolled back at once.
func (l *Locker) probeHolder(ctx context.Context, id int64) (f heldRow, err error) {
	row := "FROM " + l.q.table + " WHERE id = " + strconv.FormatInt(id, 10) + " FOR UPDATE"
	var got int64
	// In autocommit on the side pool: a free row is locked for this
	// statement only.
	switch err := l.side.QueryRowContext(ctx, "SELECT id "+row+" SKIP LOCKED").Scan(&got); {
	case err == nil:
		return f, errFree
	case !errors.Is(err, sql.ErrNoRows):
		return f, fmt.Errorf("probing the key's row: %w", err)
	}
	conn, end, err := l.probeTx(ctx)
	if err != nil {
		return f, err
	}
	defer end()
	tag := l.seq.Add(1)
	mark := l.marker + strconv.FormatUint(tag, 10)
	limit := holderWait + killGrace
	stmt := "SET STATEMENT max_statement_time=" + strconv.FormatFloat(limit.Seconds(), 'f', 3, 64) +
		", innodb_lock_wait_timeout=" + strconv.Itoa(int(math.Ceil(limit.Seconds()))+1) +
		" FOR SELECT /*" + mark + "*/ /*" + holderTag + "*/ id " + row
	done := make(chan error, 1)
	go func() {
		var got int64
		done <- conn.QueryRowContext(context.WithoutCancel(ctx), stmt).Scan(&got)
	}()
	f, perr, ended, err := l.pollHolder(ctx, id, "%/*"+mark+"*/%", done)
	if !ended {
		l.killWaiting(ctx, tag)
		perr = <-done
	}
	switch {
	case perr == nil:
		return heldRow{}, errFree // granted: released during the call
	case errors.Is(perr, sql.ErrNoRows):
		return heldRow{}, errGone
	case err != nil:
		return heldRow{}, err
	case ended && mysqlErrorNumber(perr) != erStatementTimeout:
		return heldRow{}, fmt.Errorf("the probe's locking read: %w", perr)
	}
	if err := ctx.Err(); err != nil && f.conn == 0 {
		return heldRow{}, context.Cause(ctx)
	}
	return f, nil
}

// probeTx begins a transaction of a probe on a connection of the pool;
// end rolls it back and gives the connection back, or closes it (which
// ends the transaction) when the rollback fails: a probe leaves nothing
// held.
func (l *Locker) probeTx(ctx context.Context) (conn *sql.Conn, end func(), err error) {
	if conn, err = l.sqlDB.Conn(ctx); err != nil {
		return nil, nil, fmt.Errorf("a pool connection for the probe: %w", err)
	}
	end = func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if _, err := conn.ExecContext(rctx, "ROLLBACK"); err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}
	if _, err := conn.ExecContext(ctx, "START TRANSACTION"); err != nil {
		end()
		return nil, nil, fmt.Errorf("starting the probe's transaction: %w", err)
	}
	return conn, end, nil
}

// pollHolder reads the lock waits on row id every holderPoll, for up to
// holderWait, until a fill shows the probe (its connection is the one
// whose statement matches pattern, and of done) blocked by a granted lock. If the
// probe's statement ends first, it returns how (ended); err is a failure
// to read the views.
func (l *Locker) pollHolder(ctx context.Context, id int64, pattern string, done <-chan error) (f heldRow, perr error, ended bool, err error) {
	f = heldRow{id: id, why: "MariaDB's INNODB_* views, a cache refreshed only after 100 ms without reads, never showed the probe waiting: other clients read them more often"}
	var probe int64
	deadline := time.Now().Add(holderWait)
	wait := 20 * time.Millisecond // the first read: the probe is most likely queued by then
	table := "`" + l.srv.schema + "`.`" + l.cfg.table + "`"
	for time.Now().Before(deadline) {
		t := time.NewTimer(wait)
		select {
		case perr = <-done:
			t.Stop()
			return f, perr, true, nil
		case <-ctx.Done():
			t.Stop()
			return f, nil, false, nil
		case <-t.C:
		}
		wait = holderPoll
		if probe == 0 {
			// The probe's connection, by its tag (PROCESSLIST is live).
			var query int64
			err := l.side.QueryRowContext(ctx, l.q.processes, pattern).Scan(&probe, &query)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return f, nil, false, fmt.Errorf("reading PROCESSLIST: %w", err)
			}
		}
		rows, err := l.side.QueryContext(ctx, mariaDBLockWaits, table, strconv.FormatInt(id, 10))
		if err != nil {
			return f, nil, false, fmt.Errorf("reading INNODB_LOCK_WAITS (it needs the PROCESS privilege): %w", err)
		}
		var grants []grant
		var waiters []int64
		seen, unnamed := false, false
		for rows.Next() {
			var waiter, blocker, start, waited int64
			var granted, shared bool
			if err := rows.Scan(&waiter, &blocker, &granted, &shared, &start, &waited); err != nil {
				break
			}
			switch {
			case waiter == probe && probe != 0:
				seen = true
				switch {
				case !granted:
				case blocker != 0:
					grants = append(grants, grant{conn: blocker, since: start, shared: shared})
				case shared:
					unnamed = true
				}
			case waiter != 0 && !slices.Contains(waiters, waiter):
				waiters = append(waiters, waiter)
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return f, nil, false, fmt.Errorf("reading INNODB_LOCK_WAITS: %w", err)
		}
		if seen && f.setHolders(grants, unnamed) {
			f.waiters = waiters
			return f, nil, false, nil
		}
	}
	return f, nil, false, nil
}

// joinInts renders ids as a comma-separated list.
func joinInts(ids []int64) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	return b.String()
}
