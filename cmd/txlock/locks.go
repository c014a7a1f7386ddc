package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/serverinfo"
)

// newLocksCmd returns "txlock locks".
func newLocksCmd(opts *rootOptions) *cobra.Command {
	var (
		kf       keyFlags
		watch    bool
		interval time.Duration
		asJSON   bool
		probe    bool
		identify bool
	)
	cmd := &cobra.Command{
		Use:   "locks",
		Short: "Show the held locks and their waiters",
		Long: `locks shows every held key of the lock table and every connection waiting
for one: the key (its granularity columns), its row id, the holding
connection's id, user and host, how long its transaction has been open and
how long it has been idle, and each waiting connection with how long it has
waited.

What the server lets us see:

MySQL 8: performance_schema.data_locks lists every row lock, granted or
waiting, and data_lock_waits who blocks whom: holders are shown whether or
not someone waits for them (performance_schema must be ON).

MariaDB: information_schema.INNODB_LOCKS lists only the locks that someone
waits for or that block someone. A contended key therefore shows its
holder and its waiters (from INNODB_LOCK_WAITS, INNODB_TRX and PROCESSLIST),
but the holder of a key that nobody waits for is in none of these views.
Such keys are found by a probe (on by default, --probe=false turns it off):
"SELECT id ... FOR UPDATE SKIP LOCKED" over the key rows in a READ COMMITTED
transaction that is rolled back at once; a row it skips is held. The probe
row-locks the free rows for the duration of one statement (about a
millisecond per 500 rows), so a locker arriving then waits that long. Their
holder is shown as "?", and the open transactions that hold row locks and are
not otherwise accounted for are listed as candidates. --identify names the
holder: for each such key it queues a locking read behind the holder for at
most a second, reads the holder from INNODB_LOCK_WAITS, and withdraws (KILL
QUERY on its own connection). It becomes a waiter for that moment: if the
holder releases meanwhile, the probe gets the lock for a few milliseconds.

MariaDB's INNODB_TRX, INNODB_LOCKS and INNODB_LOCK_WAITS are a cache: the
server refreshes it at most every 100 ms, and only when nobody has read it
for 100 ms. A read less than 100 ms after the previous one (by anyone) gets
the old data, so while other clients poll these views more often than every
100 ms the cache is not refreshed at all. locks therefore reads them once
per snapshot, --identify polls every 150 ms, and --watch needs an --interval
of at least 200 ms on MariaDB. PROCESSLIST is live.

So that a holder that has released since is never named, locks opens a
transaction of its own (a consistent snapshot, which locks nothing) and uses
a fill of the cache that shows it, made after the snapshot began, waiting up
to 1 s for one; and it names a holder only if PROCESSLIST shows its
connection with the same QUERY_ID and COMMAND before that fill and after:
every statement gets a new QUERY_ID and a transaction ends only with a
statement, so it is still in the transaction that held the key. Otherwise
the key's holder is "?" and a note says why; with a cache that was not
refreshed in time no holder, waiter or candidate is taken from it at all.

A snapshot is assembled from several queries and is not atomic: a lock
released or taken during it may be shown or not. Needs the PROCESS
privilege (without it only your own connections show).`,
		Example: `  txlock locks
  txlock locks --key 'resource=order:42'
  txlock locks --key-user u-7 --watch --interval 500ms
  txlock locks --identify
  txlock locks --json | jq '.keys[] | select(.waiters | length > 0)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := kf.filter()
			if err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %v", interval)
			}
			ctx := cmd.Context()
			return opts.withServer(ctx, func(db *sql.DB, where string, srv serverInfo) error {
				if watch && srv.MariaDB && interval < minMariaDBInterval {
					return fmt.Errorf("--interval %v: on MariaDB it must be at least %v, or the INNODB_* cache, which the server refreshes only after 100 ms without reads, would never be refreshed", interval, minMariaDBInterval)
				}
				ins := &inspector{db: db, srv: srv, table: opts.table, where: where, probe: probe, identify: identify}
				out := cmd.OutOrStdout()
				for first := true; ; first = false {
					snap, err := ins.snapshot(ctx, filter)
					if err != nil {
						if !first && ctx.Err() != nil {
							return nil // interrupted while watching
						}
						return err
					}
					if asJSON {
						err = writeJSON(out, snap, !watch)
					} else {
						if !first {
							fmt.Fprintln(out)
						}
						err = writeLocksTable(out, snap)
					}
					if err != nil || !watch {
						return err
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(interval):
					}
				}
			})
		},
	}
	f := cmd.Flags()
	kf.register(f, "show only the keys whose", "show only the keys that have these fields (the others may be anything)")
	f.BoolVar(&watch, "watch", false, "print a new snapshot every --interval until interrupted (with --json: one JSON object per line)")
	f.DurationVar(&interval, "interval", time.Second, "time between snapshots with --watch (MariaDB: at least 200ms)")
	f.BoolVar(&asJSON, "json", false, "print JSON for scripts instead of a table")
	f.BoolVar(&probe, "probe", true, "MariaDB: find held keys that nobody waits for with a SKIP LOCKED probe (takes short row locks on free key rows)")
	f.BoolVar(&identify, "identify", false, "MariaDB: name the holder of keys that nobody waits for by queueing briefly behind it")
	return cmd
}

// ---------------------------------------------------------------------------
// Keys on the command line.

// keyFlags are the flags that name a key: --key "resource=order:42,user=u-7"
// and one flag per field.
type keyFlags struct {
	spec                              string
	resource, operation, method, user string
	global                            bool
}

func (kf *keyFlags) register(f *pflag.FlagSet, what, keyHelp string) {
	f.StringVar(&kf.spec, "key", "", keyHelp+`, e.g. "resource=order:42,user=u-7" (fields: resource, operation, method, user, global)`)
	f.StringVar(&kf.resource, "key-resource", "", what+" resource is this (e.g. order:42)")
	f.StringVar(&kf.operation, "key-operation", "", what+" operation is this (e.g. refund)")
	f.StringVar(&kf.method, "key-method", "", what+" method is this (e.g. OrderService.Refund)")
	f.StringVar(&kf.user, "key-user", "", what+" user is this (e.g. u-7)")
	f.BoolVar(&kf.global, "key-global", false, "the global key")
}

// key merges --key and the --key-* flags. set reports whether any was given.
func (kf *keyFlags) key() (k dblock.Key, set bool, err error) {
	k, err = parseKeySpec(kf.spec)
	if err != nil {
		return k, false, err
	}
	for _, f := range []struct {
		name string
		v    string
		dst  *string
	}{
		{"resource", kf.resource, &k.Resource},
		{"operation", kf.operation, &k.Operation},
		{"method", kf.method, &k.Method},
		{"user", kf.user, &k.User},
	} {
		if f.v == "" {
			continue
		}
		if *f.dst != "" && *f.dst != f.v {
			return k, false, fmt.Errorf("--key sets %s=%q but --key-%s says %q", f.name, *f.dst, f.name, f.v)
		}
		*f.dst = f.v
	}
	k.Global = k.Global || kf.global
	return k, !k.IsZero(), nil
}

// filter returns the key whose set fields the shown keys must match.
func (kf *keyFlags) filter() (dblock.Key, error) {
	k, _, err := kf.key()
	return k, err
}

// exact returns the one key the flags name, validated.
func (kf *keyFlags) exact() (dblock.Key, error) {
	k, set, err := kf.key()
	if err != nil {
		return k, err
	}
	if !set {
		return k, errors.New("name the key with --key, e.g. --key 'resource=order:42', or the --key-* flags")
	}
	if err := k.Validate(); err != nil {
		return k, err
	}
	return k, nil
}

// parseKeySpec parses "resource=order:42,user=u-7" (a field per comma;
// "global" alone, or global=true, for the global key).
func parseKeySpec(spec string) (dblock.Key, error) {
	var k dblock.Key
	if strings.TrimSpace(spec) == "" {
		return k, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		name, value, hasValue := strings.Cut(part, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "user_id" {
			name = "user"
		}
		if seen[name] {
			return k, fmt.Errorf("--key %q: %s given twice", spec, name)
		}
		seen[name] = true
		var dst *string
		switch name {
		case "resource":
			dst = &k.Resource
		case "operation":
			dst = &k.Operation
		case "method":
			dst = &k.Method
		case "user":
			dst = &k.User
		case "global":
			if !hasValue {
				k.Global = true
				continue
			}
			b, err := strconv.ParseBool(strings.TrimSpace(value))
			if err != nil {
				return k, fmt.Errorf("--key %q: global=%q: want true or false", spec, value)
			}
			k.Global = b
			continue
		default:
			return k, fmt.Errorf("--key %q: unknown field %q (want resource, operation, method, user or global)", spec, name)
		}
		if !hasValue || value == "" {
			return k, fmt.Errorf("--key %q: %s needs a value, e.g. %s=x", spec, name, name)
		}
		*dst = value
	}
	return k, nil
}

// matches reports whether k has every field that filter sets.
func matches(k, filter dblock.Key) bool {
	return (filter.Resource == "" || k.Resource == filter.Resource) &&
		(filter.Operation == "" || k.Operation == filter.Operation) &&
		(filter.Method == "" || k.Method == filter.Method) &&
		(filter.User == "" || k.User == filter.User) &&
		(!filter.Global || k.Global)
}

// filterSQL returns the WHERE conditions (with a leading " AND ") and
// arguments that select the key rows matching filter.
func filterSQL(filter dblock.Key) (string, []any) {
	var b strings.Builder
	var args []any
	for _, c := range []struct{ col, v string }{
		{"resource", filter.Resource}, {"operation", filter.Operation},
		{"method", filter.Method}, {"user_id", filter.User},
	} {
		if c.v != "" {
			b.WriteString(" AND " + c.col + " = ?")
			args = append(args, c.v)
		}
	}
	if filter.Global {
		b.WriteString(" AND is_global = 1")
	}
	return b.String(), args
}

// keyJSON is a key in JSON output: the fields that are set.
type keyJSON struct {
	Resource  string `json:"resource,omitempty"`
	Operation string `json:"operation,omitempty"`
	Method    string `json:"method,omitempty"`
	User      string `json:"user,omitempty"`
	Global    bool   `json:"global,omitempty"`
}

func toKeyJSON(k dblock.Key) keyJSON {
	return keyJSON{Resource: k.Resource, Operation: k.Operation, Method: k.Method, User: k.User, Global: k.Global}
}

// ---------------------------------------------------------------------------
// The server.

// serverInfo is what detectServer learned.
type serverInfo struct {
	serverinfo.Version
	DB string // DATABASE()
}

// detectServer asks the server for its version, flavour and database.
func detectServer(ctx context.Context, db *sql.DB) (serverInfo, error) {
	var version, comment string
	var dbName sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@version_comment, DATABASE()").Scan(&version, &comment, &dbName); err != nil {
		return serverInfo{}, fmt.Errorf("detecting the server: %w", err)
	}
	v, err := serverinfo.Identify(version, comment)
	return serverInfo{Version: v, DB: dbName.String}, err
}

// ---------------------------------------------------------------------------
// What the server shows of the locks.

// Lock views, per flavour. Each returns, for the record locks on the lock
// table's primary key: the row id (LOCK_DATA), the transaction, its
// connection, whether it waits, and (for a waiter) a transaction that
// blocks it. The one parameter is the table: '`db`.`table`' on MariaDB,
// the bare name on MySQL.
const (
	// mariaDBLocksSQL: INNODB_LOCKS holds only locks involved in a wait, so
	// only contended rows appear. A waiter's request blocks later waiters
	// too: the blocking lock is a holder's only when it is not the blocking
	// transaction's own pending request.
	mariaDBLocksSQL = `SELECT rl.lock_data, CAST(w.requesting_trx_id AS CHAR), rt.trx_mysql_thread_id, 1, CAST(w.blocking_trx_id AS CHAR)
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_LOCKS rl ON rl.lock_id = w.requested_lock_id
JOIN information_schema.INNODB_TRX rt ON rt.trx_id = w.requesting_trx_id
WHERE rl.lock_table = ? AND rl.lock_index = 'PRIMARY' AND rl.lock_type = 'RECORD'
UNION ALL
SELECT bl.lock_data, CAST(w.blocking_trx_id AS CHAR), bt.trx_mysql_thread_id, 0, NULL
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id
JOIN information_schema.INNODB_TRX bt ON bt.trx_id = w.blocking_trx_id
WHERE bl.lock_table = ? AND bl.lock_index = 'PRIMARY' AND bl.lock_type = 'RECORD'
  AND NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id)`

	// mySQLLocksSQL: data_locks lists every lock, granted or waiting;
	// threads maps performance_schema's thread to the connection id.
	mySQLLocksSQL = `SELECT d.LOCK_DATA, CAST(d.ENGINE_TRANSACTION_ID AS CHAR), t.PROCESSLIST_ID, d.LOCK_STATUS = 'WAITING', CAST(w.BLOCKING_ENGINE_TRANSACTION_ID AS CHAR)
FROM performance_schema.data_locks d
JOIN performance_schema.threads t ON t.THREAD_ID = d.THREAD_ID
LEFT JOIN performance_schema.data_lock_waits w ON w.ENGINE = d.ENGINE AND w.REQUESTING_ENGINE_LOCK_ID = d.ENGINE_LOCK_ID
WHERE d.ENGINE = 'INNODB' AND d.OBJECT_SCHEMA = DATABASE() AND d.OBJECT_NAME = ?
  AND d.INDEX_NAME = 'PRIMARY' AND d.LOCK_TYPE = 'RECORD' AND d.LOCK_STATUS IN ('GRANTED', 'WAITING')`

	// trxSQL: every open InnoDB transaction, with ages computed by the
	// server (no clock skew). Both flavours have INNODB_TRX.
	trxSQL = `SELECT CAST(trx_id AS CHAR), trx_mysql_thread_id, trx_state,
  TIMESTAMPDIFF(SECOND, trx_started, NOW()), trx_rows_locked, trx_tables_locked,
  COALESCE(trx_query, '') LIKE '%` + probeTag + `%'
FROM information_schema.INNODB_TRX`

	// processSQL: the connections; MariaDB has milliseconds and QUERY_ID
	// (see liveness.go).
	mariaDBProcessSQL = `SELECT ID, USER, HOST, COALESCE(DB, ''), COMMAND, TIME_MS / 1000, COALESCE(STATE, ''), QUERY_ID FROM information_schema.PROCESSLIST`
	mySQLProcessSQL   = `SELECT ID, USER, HOST, COALESCE(DB, ''), COMMAND, TIME, COALESCE(STATE, ''), 0 FROM information_schema.PROCESSLIST`
)

// cacheNote is printed with every MariaDB table snapshot.
const cacheNote = "MariaDB's information_schema INNODB_TRX, INNODB_LOCKS and INNODB_LOCK_WAITS are a cache refreshed at most every 100 ms, and only after 100 ms without reads: " +
	"this view is at least that old, and stale for as long as other clients read those views more often than every 100 ms (PROCESSLIST is live)"

// cacheQuiet is how long to leave MariaDB's INNODB_* cache unread so that
// the next read refreshes it: the server refreshes the cache only when it
// has not been read for 100 ms.
const cacheQuiet = 150 * time.Millisecond

// minMariaDBInterval is the shortest --watch interval on MariaDB.
const minMariaDBInterval = 200 * time.Millisecond

// A Conn is a connection that holds or waits for a key.
type Conn struct {
	ID    int64  `json:"connection_id"`
	User  string `json:"user"`
	Host  string `json:"host"`
	DB    string `json:"db,omitempty"`
	TrxID string `json:"trx_id,omitempty"`
	Cmd   string `json:"command,omitempty"` // PROCESSLIST COMMAND: Sleep (idle), Query...
	State string `json:"state,omitempty"`
	// TrxAge is how long its transaction has been open, in whole seconds
	// (INNODB_TRX.trx_started has no fraction); nil: unknown.
	TrxAge *int64 `json:"trx_open_seconds,omitempty"`
	// Idle is how long a holder has been idle (COMMAND Sleep), seconds.
	Idle *float64 `json:"idle_seconds,omitempty"`
	// Waited is how long a waiter has waited (its statement's time), seconds.
	Waited *float64 `json:"waited_seconds,omitempty"`
	// Rows is the number of rows its transaction has locked (candidates only).
	Rows int64 `json:"rows_locked,omitempty"`
}

// A HeldKey is one key of the table that is held or waited for.
type HeldKey struct {
	Key    keyJSON `json:"key"`
	KeyStr string  `json:"key_string"`
	RowID  int64   `json:"row_id"`
	// Holder is nil when the key is held but its holder is not visible, or
	// not proven to hold it still (MariaDB's cached views may be old).
	Holder *Conn `json:"holder"`
	// Source says how the holding was seen: "lock_waits" (MariaDB, someone
	// waits), "probe" (MariaDB, SKIP LOCKED probe: holder unknown),
	// "identify" (MariaDB, --identify), "data_locks" (MySQL).
	Source  string `json:"source"`
	Waiters []Conn `json:"waiters"`
}

// A Snapshot is what locks prints.
type Snapshot struct {
	Table  string    `json:"table"`
	Server string    `json:"server"`
	Flavor string    `json:"flavor"`
	Where  string    `json:"where"`
	At     time.Time `json:"at"`
	Keys   []HeldKey `json:"keys"`
	// Candidates are open transactions with row locks that are neither a
	// shown holder nor a waiter: one of them may hold a key shown with an
	// unknown holder (MariaDB).
	Candidates []Conn   `json:"candidates,omitempty"`
	Notes      []string `json:"notes"`
	// ProbeSeconds is how long the SKIP LOCKED probe took (MariaDB).
	ProbeSeconds *float64 `json:"probe_seconds,omitempty"`
}

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
	conn     int64
	waiting  bool
	blocking string
}

type trxInfo struct {
	conn   int64
	state  string
	age    int64
	rows   int64
	tables int64
	probe  bool // a probe of txlock itself (its statement carries probeTag)
}

type procInfo struct {
	user, host, db, cmd, state string
	secs                       float64
	queryID                    int64 // MariaDB's QUERY_ID: new with every statement (0 on MySQL)
}

// lockTableName is the table as the flavour's lock view names it.
func (in *inspector) lockTableName() string {
	if in.srv.MariaDB {
		return "`" + in.srv.DB + "`.`" + in.table + "`"
	}
	return in.table
}

// entries reads the flavour's lock view.
func (in *inspector) entries(ctx context.Context) ([]lockEntry, error) {
	q, args := mySQLLocksSQL, []any{in.lockTableName()}
	if in.srv.MariaDB {
		q, args = mariaDBLocksSQL, []any{in.lockTableName(), in.lockTableName()}
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
		if err := rows.Scan(&data, &e.trx, &conn, &e.waiting, &blocking); err != nil {
			return nil, fmt.Errorf("reading the lock view: %w", err)
		}
		id, err := strconv.ParseInt(strings.TrimSpace(data.String), 10, 64)
		if err != nil {
			continue // a gap or supremum lock: not a key row
		}
		e.rowID, e.conn, e.blocking = id, conn.Int64, blocking.String
		out = append(out, e)
	}
	return out, rows.Err()
}

// transactions reads INNODB_TRX by transaction id.
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
		t.age = age.Int64
		out[id] = t
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
		rows, err := in.db.QueryContext(ctx, q, int64Args(chunk)...)
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

// probeBatch is how many key rows one probe statement locks.
const probeBatch = 500

// probeHeld returns the ids of the key rows matching filter that another
// transaction holds: a READ COMMITTED transaction locks the free ones with
// FOR UPDATE SKIP LOCKED and rolls back at once, batch by batch; the rows
// it skips are held.
func (in *inspector) probeHeld(ctx context.Context, filter dblock.Key) ([]int64, error) {
	cond, fargs := filterSQL(filter)
	var held []int64
	var after int64
	for {
		ids, err := queryIDs(ctx, in.db, "SELECT id FROM `"+in.table+"` WHERE id > ?"+cond+" ORDER BY id LIMIT "+strconv.Itoa(probeBatch),
			append([]any{after}, fargs...)...)
		if err != nil {
			return nil, fmt.Errorf("probing %s: %w", in.table, err)
		}
		if len(ids) == 0 {
			return held, nil
		}
		free, err := in.lockFree(ctx, ids)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if !free[id] {
				held = append(held, id)
			}
		}
		after = ids[len(ids)-1]
	}
}

// lockFree locks ids with SKIP LOCKED in a transaction that it rolls back,
// and returns those it could lock.
func (in *inspector) lockFree(ctx context.Context, ids []int64) (map[int64]bool, error) {
	tx, err := in.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", in.table, err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, "SELECT id FROM `"+in.table+"` WHERE id IN ("+placeholders(len(ids))+") FOR UPDATE SKIP LOCKED", int64Args(ids)...)
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", in.table, err)
	}
	free := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		free[id] = true
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	return free, rows.Err()
}

// rowState is what a snapshot knows of one key row.
type rowState struct {
	holders map[string]int64 // trx -> conn, each proven to hold the row now
	waiters map[string]int64
	source  string
	live    bool // the SKIP LOCKED probe found it held
}

// rowStates are the key rows a snapshot knows of, by id.
type rowStates map[int64]*rowState

func (r rowStates) state(id int64) *rowState {
	s := r[id]
	if s == nil {
		s = &rowState{holders: map[string]int64{}, waiters: map[string]int64{}}
		r[id] = s
	}
	return s
}

// rowsFromCache keeps the entries of the lock view that still hold now,
// and returns how many it left out. procs is PROCESSLIST read after the
// cache. On MariaDB a holder is kept only if the fill was made after
// before was read and the holder's connection provably stayed in one
// transaction from before to procs (liveness.go): a cached holder that may
// have released since is never named. A waiter is kept if its connection
// still runs a statement (and, on MariaDB, the fill is fresh). Probes of
// txlock itself (--identify, release) are not waiters anyone needs to see.
func (in *inspector) rowsFromCache(c cacheRead, before, procs map[int64]procInfo) (rowStates, int) {
	rows := rowStates{}
	source := "lock_waits"
	if !in.srv.MariaDB {
		source = "data_locks"
	}
	left := 0
	for _, e := range c.entries {
		if t, ok := c.trxs[e.trx]; ok && t.probe {
			continue
		}
		p, alive := procs[e.conn]
		keep := alive && c.fresh
		switch {
		case e.waiting:
			keep = keep && (p.cmd == "Query" || p.cmd == "Execute")
		case in.srv.MariaDB:
			keep = keep && sameTransaction(before[e.conn], p)
		}
		if !keep {
			left++
			continue
		}
		s := rows.state(e.rowID)
		s.source = source
		if e.waiting {
			s.waiters[e.trx] = e.conn
		} else {
			s.holders[e.trx] = e.conn
		}
	}
	return rows, left
}

// snapshot assembles the held keys matching filter.
func (in *inspector) snapshot(ctx context.Context, filter dblock.Key) (*Snapshot, error) {
	snap := &Snapshot{
		Table:  in.table,
		Server: in.srv.String(),
		Flavor: in.srv.Flavor(),
		Where:  in.where,
		At:     time.Now().UTC(),
		Keys:   []HeldKey{},
		Notes:  []string{},
	}
	// The baseline that cached holders are checked against (MariaDB).
	var before map[int64]procInfo
	if in.srv.MariaDB {
		var err error
		if before, err = in.processes(ctx); err != nil {
			return nil, err
		}
	}
	cache, err := in.readCache(ctx)
	if err != nil {
		return nil, err
	}
	probed := in.srv.MariaDB && in.probe
	var held []int64
	if probed {
		start := time.Now()
		if held, err = in.probeHeld(ctx, filter); err != nil {
			return nil, err
		}
		d := time.Since(start).Seconds()
		snap.ProbeSeconds = &d
	}
	procs, err := in.processes(ctx)
	if err != nil {
		return nil, err
	}
	// Which rows are held, by whom, and who waits. A transaction waiting
	// for one row may hold another: it is listed under each.
	rowsByID, left := in.rowsFromCache(cache, before, procs)
	if probed {
		for _, id := range held {
			s := rowsByID.state(id)
			s.live = true
			if s.source == "" {
				s.source = "probe"
			}
		}
		// The probe is live, the cache is not: a row that the cache shows
		// held but the probe could lock was released since the cache was
		// filled. (A row outside filter was not probed, and is not shown.)
		var released []int64
		for id, s := range rowsByID {
			if !s.live {
				released = append(released, id)
			}
		}
		keys, err := in.keyRows(ctx, released)
		if err != nil {
			return nil, err
		}
		for _, id := range released {
			if k, ok := keys[id]; ok && matches(k, filter) {
				left += len(rowsByID[id].holders) + len(rowsByID[id].waiters)
			}
			delete(rowsByID, id)
		}
	}
	// --identify: ask who holds the probed rows without a proven holder.
	staleCache, moved := false, 0
	if in.srv.MariaDB && in.identify {
		found := map[int64]holderOf{}
		for id, s := range rowsByID {
			if len(s.holders) > 0 || !s.live {
				continue
			}
			h, err := in.identifyHolder(ctx, id, time.Second)
			if err != nil {
				return nil, err
			}
			if h.found {
				found[id] = h
			}
			staleCache = staleCache || h.stale
		}
		if procs, err = in.processes(ctx); err != nil { // fresh, for the identified
			return nil, err
		}
		for id, h := range found {
			if !sameTransaction(h.base, procs[h.conn]) {
				moved++ // it ran a statement since it was named: it may have released
				continue
			}
			rowsByID[id].holders[h.trx] = h.conn
			rowsByID[id].source = "identify"
		}
	}
	candidates := cache.trxs
	if !cache.fresh {
		candidates = nil // what it shows may have ended long ago
	}
	unknownHolder, err := in.addKeys(ctx, snap, rowsByID, filter, cache.trxs, candidates, procs)
	if err != nil {
		return nil, err
	}
	if in.srv.MariaDB {
		snap.Notes = append(snap.Notes, cacheNote)
		if !cache.fresh {
			snap.Notes = append(snap.Notes, fmt.Sprintf("the INNODB_* cache was not refreshed within %v of this snapshot's start (other clients read it more often than every 100 ms), so it may show holders that have released since: its %d entr(y/ies) are left out, and no holder, waiter or candidate is named from it (held keys come from the probe, holder \"?\")", cacheFreshWait, left))
		} else if left > 0 {
			snap.Notes = append(snap.Notes, fmt.Sprintf("%d entr(y/ies) of the INNODB_* cache left out: PROCESSLIST shows the connection gone, no longer waiting, or (a holder) running statements since this snapshot began, so it may have released", left))
		}
		switch {
		case !in.probe:
			snap.Notes = append(snap.Notes, "without --probe, a held key that nobody waits for is not shown: MariaDB's INNODB_LOCKS lists only locks that someone waits for")
		case unknownHolder && !in.identify:
			snap.Notes = append(snap.Notes, `holder "?": the key is held (the SKIP LOCKED probe skipped its row) but its holder is not in INNODB_LOCKS (nobody waits for it) or not proven to hold it still; --identify names it (by waiting behind it for a moment)`)
		case unknownHolder && staleCache:
			snap.Notes = append(snap.Notes, `holder "?": --identify queued behind the holder but never appeared in INNODB_TRX: the INNODB_* cache was not refreshed for 1 s, so other clients read it more often than every 100 ms`)
		case unknownHolder && moved > 0:
			snap.Notes = append(snap.Notes, fmt.Sprintf(`holder "?": %d holder(s) that --identify named ran statements right after, so may have released: not named`, moved))
		case unknownHolder:
			snap.Notes = append(snap.Notes, `holder "?": --identify did not see the holder within 1 s (it may have released meanwhile)`)
		}
	} else if left > 0 {
		snap.Notes = append(snap.Notes, fmt.Sprintf("%d lock entr(y/ies) left out: their connection ended meanwhile", left))
	}
	return snap, nil
}

// addKeys adds to snap the rows of rowsByID whose keys match filter, and,
// when a key's holder is unknown (which it reports), the transactions of
// candidates that may hold it. trxs and procs describe the connections.
func (in *inspector) addKeys(ctx context.Context, snap *Snapshot, rowsByID rowStates, filter dblock.Key, trxs, candidates map[string]trxInfo, procs map[int64]procInfo) (unknownHolder bool, err error) {
	ids := make([]int64, 0, len(rowsByID))
	for id := range rowsByID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	keys, err := in.keyRows(ctx, ids)
	if err != nil {
		return false, err
	}
	conn := func(trx string, connID int64, waiting bool) Conn {
		c := Conn{ID: connID, TrxID: trx}
		if t, ok := trxs[trx]; ok {
			age := t.age
			c.TrxAge = &age
		}
		if p, ok := procs[connID]; ok {
			c.User, c.Host, c.DB, c.Cmd, c.State = p.user, p.host, p.db, p.cmd, p.state
			secs := p.secs
			switch {
			case waiting && (p.cmd == "Query" || p.cmd == "Execute"):
				c.Waited = &secs
			case !waiting && p.cmd == "Sleep":
				c.Idle = &secs
			}
		}
		return c
	}
	shown := map[string]bool{}
	for _, id := range ids {
		k, ok := keys[id]
		if !ok || !matches(k, filter) {
			continue // the row is gone, or not asked for
		}
		s := rowsByID[id]
		if len(s.holders) == 0 && len(s.waiters) == 0 && !s.live {
			continue
		}
		hk := HeldKey{Key: toKeyJSON(k), KeyStr: k.String(), RowID: id, Source: s.source, Waiters: []Conn{}}
		if holderTrx := sortedKeys(s.holders); len(holderTrx) > 0 {
			c := conn(holderTrx[0], s.holders[holderTrx[0]], false)
			hk.Holder = &c
			shown[holderTrx[0]] = true
		} else {
			unknownHolder = true
		}
		for _, trx := range sortedKeys(s.waiters) {
			hk.Waiters = append(hk.Waiters, conn(trx, s.waiters[trx], true))
			shown[trx] = true
		}
		slices.SortStableFunc(hk.Waiters, func(a, b Conn) int { return cmpWaited(b, a) })
		snap.Keys = append(snap.Keys, hk)
	}
	if unknownHolder {
		for _, trx := range sortedKeys(candidates) {
			t := candidates[trx]
			if _, alive := procs[t.conn]; shown[trx] || !alive || t.probe || t.rows == 0 || t.tables == 0 || t.state == "LOCK WAIT" {
				continue
			}
			c := conn(trx, t.conn, false)
			c.Rows = t.rows
			snap.Candidates = append(snap.Candidates, c)
		}
		slices.SortStableFunc(snap.Candidates, func(a, b Conn) int { return cmpInt64(a.ID, b.ID) })
	}
	return unknownHolder, nil
}

// cmpWaited orders by waited time, unknown first.
func cmpWaited(a, b Conn) int {
	av, bv := -1.0, -1.0
	if a.Waited != nil {
		av = *a.Waited
	}
	if b.Waited != nil {
		bv = *b.Waited
	}
	switch {
	case av < bv:
		return -1
	case av > bv:
		return 1
	}
	return 0
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b string) int {
		if len(a) != len(b) { // numeric strings
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	return out
}

// ---------------------------------------------------------------------------
// Naming the holder of an uncontended key (MariaDB).

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
func (in *inspector) identifyHolder(ctx context.Context, id int64, maxWait time.Duration) (h holderOf, err error) {
	db, lockTable, table := in.db, in.lockTableName(), in.table
	probe, probeID, err := ownSession(ctx, db)
	if err != nil {
		return h, fmt.Errorf("identifying the holder: %w", err)
	}
	// Leave no transaction behind.
	defer discardOnFailedRollback(ctx, probe)
	before, err := in.processes(ctx)
	if err != nil {
		return h, err
	}
	if _, err := probe.ExecContext(ctx, "START TRANSACTION"); err != nil {
		return h, fmt.Errorf("identifying the holder: %w", err)
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
	// ended reports how the probe's statement ended on its own: granted
	// (nobody holds the row any more), no row, or an error (timeout).
	ended := func(perr error) holderOf {
		switch {
		case perr == nil:
			return holderOf{notHeld: true}
		case errors.Is(perr, sql.ErrNoRows):
			return holderOf{rowGone: true}
		}
		return holderOf{probeErr: perr}
	}
	// Reads closer together than 100 ms would keep the cache from being
	// refreshed: poll every cacheQuiet.
	deadline := time.Now().Add(maxWait)
	tick := time.NewTicker(cacheQuiet)
	defer tick.Stop()
	polls, seen := 0, false
	for ctx.Err() == nil && time.Now().Before(deadline) && !h.found && err == nil {
		select {
		case perr := <-done:
			return ended(perr), nil
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		polls++
		var inTrx int
		qerr := db.QueryRowContext(ctx, identifyQuerySQL, probeID, probeID, lockTable).Scan(&h.trx, &h.conn, &inTrx)
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
	// Found, failed, out of time or interrupted: withdraw the probe.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_, kerr := db.ExecContext(kctx, "KILL QUERY "+strconv.FormatInt(probeID, 10))
	cancel()
	perr := <-done
	if perr == nil || errors.Is(perr, sql.ErrNoRows) {
		// The probe got the row (or found it gone) before the kill: whoever
		// held it has released it.
		return ended(perr), nil
	}
	if kerr != nil && err == nil {
		err = fmt.Errorf("identifying the holder: withdrawing the probe: %w", kerr)
	}
	if err == nil {
		err = ctx.Err()
	}
	return h, err
}

// ---------------------------------------------------------------------------
// Output.

func writeJSON(out io.Writer, v any, indent bool) error {
	enc := json.NewEncoder(out)
	if indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// writeLocksTable prints a snapshot for people.
func writeLocksTable(out io.Writer, s *Snapshot) error {
	fmt.Fprintf(out, "%s on %s (%s), %s UTC\n", s.Table, s.Where, s.Server, s.At.Format("2006-01-02 15:04:05.000"))
	if len(s.Keys) == 0 {
		fmt.Fprintln(out, "no held key")
	} else {
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "KEY\tROW\tROLE\tCONN\tUSER\tHOST\tTRX OPEN\tIDLE\tWAITED")
		for _, k := range s.Keys {
			first := k.KeyStr
			row := strconv.FormatInt(k.RowID, 10)
			if k.Holder != nil {
				h := k.Holder
				fmt.Fprintf(w, "%s\t%s\tholder\t%d\t%s\t%s\t%s\t%s\t-\n", first, row, h.ID, dash(h.User), dash(h.Host), secs(h.TrxAge), fsecs(h.Idle))
			} else {
				fmt.Fprintf(w, "%s\t%s\tholder\t?\t-\t-\t-\t-\t-\n", first, row)
			}
			for _, c := range k.Waiters {
				fmt.Fprintf(w, "\t\twaiter\t%d\t%s\t%s\t%s\t-\t%s\n", c.ID, dash(c.User), dash(c.Host), secs(c.TrxAge), fsecs(c.Waited))
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(s.Candidates) > 0 {
		fmt.Fprintln(out, "\nopen transactions holding row locks, not shown above (one of them may be a \"?\" holder):")
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "CONN\tUSER\tHOST\tDB\tTRX OPEN\tIDLE\tROWS LOCKED")
		for _, c := range s.Candidates {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", c.ID, dash(c.User), dash(c.Host), dash(c.DB), secs(c.TrxAge), fsecs(c.Idle), c.Rows)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintln(out, "note:", n)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func secs(v *int64) string {
	if v == nil {
		return "-"
	}
	return (time.Duration(*v) * time.Second).String()
}

func fsecs(v *float64) string {
	if v == nil {
		return "-"
	}
	return time.Duration(*v * float64(time.Second)).Round(time.Millisecond).String()
}

// ---------------------------------------------------------------------------
// Small helpers.

func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}

func int64Args(ids []int64) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// queryer is a *sql.DB or *sql.Tx.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryIDs(ctx context.Context, q queryer, query string, args ...any) ([]int64, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
