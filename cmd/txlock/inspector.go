package main

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// Lock views, per flavour. Each returns, for the record locks on the
// primary keys of the lock table and of its permit table: the row id
// (LOCK_DATA), the transaction, its connection, whether it waits, (for a
// waiter) a transaction that blocks it, the lock's mode (X, S; MySQL adds
// ",REC_NOT_GAP") and the table. The parameters are the two tables (twice
// on MariaDB): '`db`.`table`' on MariaDB, the bare name on MySQL.
const (
	// mariaDBLocksSQL: INNODB_LOCKS holds only locks involved in a wait, so
	// only contended rows appear. A waiter's request blocks later waiters
	// too: the blocking lock is a holder's only when it is not the blocking
	// transaction's own pending request. MariaDB gives a transaction that
	// has written nothing and holds no exclusive lock the id 0, which every
	// such transaction shares (their locks on a row are one entry): an
	// entry of transaction 0 names no connection (0), and its blocking lock
	// may be granted or pending.
	mariaDBLocksSQL = `SELECT rl.lock_data, CAST(w.requesting_trx_id AS CHAR), COALESCE(rt.trx_mysql_thread_id, 0), 1, CAST(w.blocking_trx_id AS CHAR), rl.lock_mode, rl.lock_table
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_LOCKS rl ON rl.lock_id = w.requested_lock_id
LEFT JOIN information_schema.INNODB_TRX rt ON rt.trx_id = w.requesting_trx_id AND w.requesting_trx_id <> 0
WHERE rl.lock_table IN (?, ?) AND rl.lock_index = 'PRIMARY' AND rl.lock_type = 'RECORD'
UNION ALL
SELECT bl.lock_data, CAST(w.blocking_trx_id AS CHAR), COALESCE(bt.trx_mysql_thread_id, 0), 0, NULL, bl.lock_mode, bl.lock_table
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id
LEFT JOIN information_schema.INNODB_TRX bt ON bt.trx_id = w.blocking_trx_id AND w.blocking_trx_id <> 0
WHERE bl.lock_table IN (?, ?) AND bl.lock_index = 'PRIMARY' AND bl.lock_type = 'RECORD'
  AND (w.blocking_trx_id = 0 OR NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id))`

	// mySQLLocksSQL: data_locks lists every lock, granted or waiting, each
	// transaction with an id of its own; threads maps performance_schema's
	// thread to the connection id. Gap locks are no holding.
	mySQLLocksSQL = `SELECT d.LOCK_DATA, CAST(d.ENGINE_TRANSACTION_ID AS CHAR), t.PROCESSLIST_ID, d.LOCK_STATUS = 'WAITING', CAST(w.BLOCKING_ENGINE_TRANSACTION_ID AS CHAR), d.LOCK_MODE, d.OBJECT_NAME
FROM performance_schema.data_locks d
JOIN performance_schema.threads t ON t.THREAD_ID = d.THREAD_ID
LEFT JOIN performance_schema.data_lock_waits w ON w.ENGINE = d.ENGINE AND w.REQUESTING_ENGINE_LOCK_ID = d.ENGINE_LOCK_ID
WHERE d.ENGINE = 'INNODB' AND d.OBJECT_SCHEMA = DATABASE() AND d.OBJECT_NAME IN (?, ?)
  AND d.INDEX_NAME = 'PRIMARY' AND d.LOCK_TYPE = 'RECORD' AND d.LOCK_MODE IN ('X', 'S', 'X,REC_NOT_GAP', 'S,REC_NOT_GAP')
  AND d.LOCK_STATUS IN ('GRANTED', 'WAITING')`

	// trxSQL: every open InnoDB transaction, with ages computed by the
	// server (no clock skew). Both flavours have INNODB_TRX.
	trxSQL = `SELECT CAST(trx_id AS CHAR), trx_mysql_thread_id, trx_state,
  TIMESTAMPDIFF(SECOND, trx_started, NOW()), trx_rows_locked, trx_tables_locked,
  COALESCE(trx_query, '') LIKE '%` + probeTag + `%' OR COALESCE(trx_query, '') LIKE '%txlock-holder%'
FROM information_schema.INNODB_TRX`

	// processSQL: the connections; MariaDB has milliseconds and QUERY_ID
	// (see liveness.go).
	mariaDBProcessSQL = `SELECT ID, USER, HOST, COALESCE(DB, ''), COMMAND, TIME_MS / 1000, COALESCE(STATE, ''), QUERY_ID FROM information_schema.PROCESSLIST`
	mySQLProcessSQL   = `SELECT ID, USER, HOST, COALESCE(DB, ''), COMMAND, TIME, COALESCE(STATE, ''), 0 FROM information_schema.PROCESSLIST`
)

// inspector reads the locks of one table.
type inspector struct {
	db       *sql.DB
	srv      serverInfo
	table    string
	where    string
	probe    bool
	identify bool
}

// lockEntry is one row of the flavour's lock view.
type lockEntry struct {
	rowID    int64
	trx      string
	conn     int64 // 0: not named (MariaDB's transaction 0)
	waiting  bool
	blocking string
	mode     string // "X" or "S": held, or requested by a waiter
	permit   bool   // a row of the permit table, not of the lock table
}

// unnamedTrx is the id MariaDB's lock views give every transaction that
// has written nothing and holds no exclusive lock.
const unnamedTrx = "0"

// lockMode returns the mode of a lock view's LOCK_MODE ("X", "S",
// "S,REC_NOT_GAP"): "X" or "S".
func lockMode(m string) string {
	m, _, _ = strings.Cut(m, ",")
	return m
}

type trxInfo struct {
	id     string // the transaction's id: 0 for every transaction that has written nothing (MariaDB)
	conn   int64
	state  string
	age    int64
	rows   int64
	tables int64
	probe  bool // a probe of txlock itself (its statement carries probeTag, or Holder's "txlock-holder")
}

type procInfo struct {
	user, host, db, cmd, state string
	secs                       float64
	queryID                    int64 // MariaDB's QUERY_ID: new with every statement (0 on MySQL)
}

// lockTableName is the lock table as the flavour's lock view names it.
func (in *inspector) lockTableName() string { return in.viewName(in.table) }

// viewName is table as the flavour's lock view names it.
func (in *inspector) viewName(table string) string {
	if in.srv.MariaDB {
		return "`" + in.srv.DB + "`.`" + table + "`"
	}
	return table
}

// permitTable is the name of the lock table's permit table.
func (in *inspector) permitTable() string { return schema.PermitTable(in.table) }

// entries reads the flavour's lock view: the lock table's and the permit
// table's row locks.
func (in *inspector) entries(ctx context.Context) ([]lockEntry, error) {
	tables := []any{in.lockTableName(), in.viewName(in.permitTable())}
	q, args := mySQLLocksSQL, tables
	if in.srv.MariaDB {
		q, args = mariaDBLocksSQL, append(tables, tables...)
	}
	rows, err := in.db.QueryContext(ctx, q, args...)
	if err != nil {
		if !in.srv.MariaDB {
			return nil, fmt.Errorf("reading performance_schema.data_locks (MySQL needs performance_schema=ON and the PROCESS privilege): %w", err)
		}
		return nil, fmt.Errorf("reading information_schema.INNODB_LOCK_WAITS (needs the PROCESS privilege): %w", err)
	}
	defer rows.Close()
	var out []lockEntry
	for rows.Next() {
		var (
			data     sql.NullString
			e        lockEntry
			conn     sql.NullInt64
			blocking sql.NullString
		)
		var mode, table sql.NullString
		if err := rows.Scan(&data, &e.trx, &conn, &e.waiting, &blocking, &mode, &table); err != nil {
			return nil, fmt.Errorf("reading the lock view: %w", err)
		}
		id, err := strconv.ParseInt(strings.TrimSpace(data.String), 10, 64)
		if err != nil {
			continue // a gap or supremum lock: not a key row
		}
		e.rowID, e.conn, e.blocking, e.mode = id, conn.Int64, blocking.String, lockMode(mode.String)
		e.permit = table.String == tables[1]
		out = append(out, e)
	}
	return out, rows.Err()
}

// trxKey is the key of transaction id of connection conn in the map that
// transactions returns: its id, unless MariaDB gave it the id 0 that every
// transaction that has written nothing shares.
func trxKey(id string, conn int64) string {
	if id == unnamedTrx {
		return id + "/" + strconv.FormatInt(conn, 10)
	}
	return id
}

// transactions reads INNODB_TRX by transaction id (trxKey).
func (in *inspector) transactions(ctx context.Context) (map[string]trxInfo, error) {
	rows, err := in.db.QueryContext(ctx, trxSQL)
	if err != nil {
		return nil, fmt.Errorf("reading information_schema.INNODB_TRX (needs the PROCESS privilege): %w", err)
	}
	defer rows.Close()
	out := map[string]trxInfo{}
	for rows.Next() {
		var (
			id  string
			t   trxInfo
			age sql.NullInt64
		)
		if err := rows.Scan(&id, &t.conn, &t.state, &age, &t.rows, &t.tables, &t.probe); err != nil {
			return nil, fmt.Errorf("reading INNODB_TRX: %w", err)
		}
		t.age, t.id = age.Int64, id
		out[trxKey(id, t.conn)] = t
	}
	return out, rows.Err()
}

// processes reads PROCESSLIST by connection id.
func (in *inspector) processes(ctx context.Context) (map[int64]procInfo, error) {
	q := mySQLProcessSQL
	if in.srv.MariaDB {
		q = mariaDBProcessSQL
	}
	rows, err := in.db.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("reading information_schema.PROCESSLIST: %w", err)
	}
	defer rows.Close()
	out := map[int64]procInfo{}
	for rows.Next() {
		var (
			id   int64
			p    procInfo
			secs sql.NullFloat64
		)
		if err := rows.Scan(&id, &p.user, &p.host, &p.db, &p.cmd, &secs, &p.state, &p.queryID); err != nil {
			return nil, fmt.Errorf("reading PROCESSLIST: %w", err)
		}
		p.secs = secs.Float64
		out[id] = p
	}
	return out, rows.Err()
}

// keyRows reads the key rows with the given ids.
func (in *inspector) keyRows(ctx context.Context, ids []int64) (map[int64]dblock.Key, error) {
	out := map[int64]dblock.Key{}
	for chunk := range slices.Chunk(ids, 500) {
		q := "SELECT id, resource, operation, method, user_id, is_global FROM `" + in.table + "` WHERE id IN (" + placeholders(len(chunk)) + ")"
		rows, err := in.db.QueryContext(ctx, q, args(chunk)...)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", in.table, err)
		}
		for rows.Next() {
			var id int64
			var k dblock.Key
			if err := rows.Scan(&id, &k.Resource, &k.Operation, &k.Method, &k.User, &k.Global); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading %s: %w", in.table, err)
			}
			out[id] = k
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
