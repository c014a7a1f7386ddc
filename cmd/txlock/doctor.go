package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// Check outcomes.
const (
	statusOK   = "OK"
	statusWarn = "WARN"
	statusFail = "FAIL"
)

// A check is one line of the doctor's report.
type check struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Advice  string `json:"advice,omitempty"`
}

// doctorReport is the doctor's JSON output.
type doctorReport struct {
	Server string  `json:"server"`
	Where  string  `json:"where"`
	Table  string  `json:"table"`
	Checks []check `json:"checks"`
	Fails  int     `json:"fails"`
	Warns  int     `json:"warns"`
}

// errChecksFailed makes the command exit non-zero after its report.
var errChecksFailed = errors.New("doctor found problems")

// newDoctorCmd returns "txlock doctor".
func newDoctorCmd(opts *rootOptions) *cobra.Command {
	var (
		asJSON                    bool
		singleWriter, multiWriter bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the server and the lock table, and say what to change",
		Long: `doctor checks that the server suits txlock and prints one line per check:
OK, WARN (works, but read the advice) or FAIL (txlock will not work right),
with what to change. It only reads: server variables, the lock table and its
migration version.

Checks: server version and flavour (MariaDB >= 10.6, MySQL >= 8.0),
isolation level, innodb_snapshot_isolation (MariaDB), innodb_lock_wait_timeout
(0 FAILs: blocking lock calls would give up at once), max_statement_time
(MariaDB), innodb_rollback_on_timeout, autocommit (OFF FAILs), wait_timeout (how long a silently cut-off holder keeps its lock),
idle_transaction_timeout (MariaDB), innodb_deadlock_detect, read_only,
super_read_only and innodb_read_only (a replica), Galera (wsrep_on, and
whether the node is synced in the cluster's primary component),
performance_schema (MySQL, for "txlock locks"), the PROCESS privilege (for
"txlock locks" and "txlock release"), and the lock table: present, InnoDB,
and at the latest migration.

Variables are read with SHOW GLOBAL VARIABLES: they are the defaults new
sessions get; a service can override some per session (e.g. DSN parameters).
The exit status is 1 when a check FAILs, 0 when all are OK or WARN.`,
		Example: `  txlock doctor
  txlock doctor --table billing_locks --json
  txlock doctor --galera-single-writer
  txlock doctor --galera-multi-writer`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			mode := serverinfo.GaleraUnset
			switch {
			case singleWriter:
				mode = serverinfo.GaleraSingleWriter
			case multiWriter:
				mode = serverinfo.GaleraMultiWriter
			}
			return opts.withDB(ctx, func(db *sql.DB, where string) error {
				rep, err := diagnose(ctx, db, opts.table, mode)
				if err != nil {
					return err
				}
				rep.Where = where
				out := cmd.OutOrStdout()
				if asJSON {
					err = writeJSON(out, rep, true)
				} else {
					err = writeDoctor(out, rep)
				}
				if err != nil {
					return err
				}
				if rep.Fails > 0 {
					return fmt.Errorf("%w: %d check(s) failed", errChecksFailed, rep.Fails)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON for scripts")
	f.BoolVar(&singleWriter, "galera-single-writer", false, "on Galera: the services use dblock.GaleraSingleWriter (every locker goes through the same node)")
	f.BoolVar(&multiWriter, "galera-multi-writer", false, "on Galera: the services use dblock.GaleraMultiWriter (lockers on several nodes, certification settles overlaps)")
	cmd.MarkFlagsMutuallyExclusive("galera-single-writer", "galera-multi-writer")
	return cmd
}

func writeDoctor(out io.Writer, rep *doctorReport) error {
	fmt.Fprintf(out, "%s on %s (%s):\n", rep.Table, rep.Where, rep.Server)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, c := range rep.Checks {
		line := c.Message
		if c.Advice != "" {
			line += ". " + strings.ToUpper(c.Advice[:1]) + c.Advice[1:]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", c.Status, c.Name, line)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "%d check(s): %d FAIL, %d WARN\n", len(rep.Checks), rep.Fails, rep.Warns)
	return err
}

// globalVars reads the named global variables that exist on this server.
func globalVars(ctx context.Context, db *sql.DB, names ...string) (map[string]string, error) {
	return showGlobal(ctx, db, "VARIABLES", names)
}

// showGlobal reads the named rows of SHOW GLOBAL what (VARIABLES or
// STATUS), keyed by lower-case name. The names are constants of this
// file, quoted into the statement.
func showGlobal(ctx context.Context, db *sql.DB, what string, names []string) (map[string]string, error) {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = "'" + strings.ReplaceAll(n, "'", "''") + "'"
	}
	vars, err := serverinfo.Variables(ctx, db, "SHOW GLOBAL "+what+" WHERE Variable_name IN ("+strings.Join(quoted, ", ")+")")
	if err != nil {
		return nil, fmt.Errorf("reading server %s: %w", strings.ToLower(what), err)
	}
	return vars, nil
}

// humanSeconds renders a count of seconds, e.g. "28800 s (8h0m0s)".
func humanSeconds(n int64) string {
	if n < 60 {
		return fmt.Sprintf("%d s", n)
	}
	return fmt.Sprintf("%d s (%s)", n, time.Duration(n)*time.Second)
}

// diagnose runs every check.
func diagnose(ctx context.Context, db *sql.DB, table string, mode serverinfo.GaleraMode) (*doctorReport, error) {
	srv, err := detectServer(ctx, db)
	if err != nil {
		return nil, err
	}
	vars, err := globalVars(ctx, db,
		"tx_isolation", "transaction_isolation", "innodb_snapshot_isolation",
		"innodb_lock_wait_timeout", "innodb_rollback_on_timeout", "max_statement_time", "autocommit",
		"wait_timeout", "idle_transaction_timeout",
		"innodb_deadlock_detect", "read_only", "super_read_only", "innodb_read_only",
		"wsrep_on", "performance_schema")
	if err != nil {
		return nil, err
	}
	if serverinfo.IsOn(vars["wsrep_on"]) {
		// Galera's state is in status variables (names that no system
		// variable has): merge them in for serverChecks.
		st, err := showGlobal(ctx, db, "STATUS", []string{"wsrep_cluster_status", "wsrep_ready", "wsrep_local_state_comment", "wsrep_cluster_size"})
		if err != nil {
			return nil, err
		}
		maps.Copy(vars, st)
	}
	rep := &doctorReport{Server: srv.String(), Table: table, Checks: []check{}}
	add := func(name, status, msg, advice string) {
		rep.Checks = append(rep.Checks, check{Name: name, Status: status, Message: msg, Advice: advice})
	}
	for _, c := range serverChecks(srv, vars, mode) {
		add(c.Name, c.Status, c.Message, c.Advice)
	}

	if st := vars["wsrep_cluster_status"]; serverinfo.IsOn(vars["wsrep_on"]) && (st != "Primary" || !serverinfo.IsOn(vars["wsrep_ready"])) {
		// The node refuses queries on tables (1047): the checks below
		// would only repeat galera_state.
		add("table", statusWarn, "not checked: this Galera node refuses queries until it is back in the primary component", "run doctor against a synced node")
		return rep.count(), nil
	}

	// The PROCESS privilege, for locks and release.
	var n int64
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.INNODB_TRX").Scan(&n); err != nil {
		add("privileges", statusWarn, "cannot read information_schema.INNODB_TRX: "+err.Error(), "txlock locks and release need the PROCESS privilege (and CONNECTION ADMIN or SUPER to kill other users' connections)")
	} else {
		add("privileges", statusOK, "PROCESS: txlock locks can read INNODB_TRX", "")
	}

	// The table.
	tableCheck(ctx, db, table, add)
	return rep.count(), nil
}

// count sets Fails and Warns from the checks, and returns rep.
func (rep *doctorReport) count() *doctorReport {
	for _, c := range rep.Checks {
		switch c.Status {
		case statusFail:
			rep.Fails++
		case statusWarn:
			rep.Warns++
		}
	}
	return rep
}

// minLockWait is the innodb_lock_wait_timeout below which doctor warns
// that blocking lock calls give up early.
const minLockWait = 5

// serverChecks judges the server from its version and global variables
// (lower-case names; a variable missing from vars does not exist on the
// server), and on Galera its wsrep_* status variables.
func serverChecks(srv serverInfo, vars map[string]string, mode serverinfo.GaleraMode) []check {
	var checks []check
	add := func(name, status, msg, advice string) {
		checks = append(checks, check{Name: name, Status: status, Message: msg, Advice: advice})
	}

	// Version and flavour.
	if err := srv.Supported(); err != nil {
		add("version", statusFail, err.Error(), "upgrade the server (txlock relies on SKIP LOCKED, NOWAIT and the lock behaviour it was measured on)")
	} else {
		add("version", statusOK, srv.String(), "")
	}

	// Isolation level: MariaDB before 11.1 has tx_isolation, MySQL 8 only
	// transaction_isolation.
	iso, ok := vars["transaction_isolation"]
	if !ok {
		iso, ok = vars["tx_isolation"]
	}
	switch iso = strings.ToUpper(strings.ReplaceAll(iso, " ", "-")); {
	case !ok:
		add("isolation", statusWarn, "neither @@transaction_isolation nor @@tx_isolation found", "check the server's default isolation level: txlock expects REPEATABLE READ or READ COMMITTED")
	case iso == "REPEATABLE-READ" || iso == "READ-COMMITTED":
		add("isolation", statusOK, iso+" (default for new sessions)", "")
	case iso == "SERIALIZABLE":
		add("isolation", statusWarn, iso+": every plain read in a lock's transaction takes a shared lock", "expect more lock waits and deadlocks; REPEATABLE READ (the default) or READ COMMITTED is enough with txlock")
	default:
		add("isolation", statusWarn, iso+": a lock's transaction can read other transactions' uncommitted writes", "use REPEATABLE READ (the default) or READ COMMITTED")
	}

	// Stale snapshots of joined transactions (MariaDB only).
	if srv.MariaDB {
		if v, ok := vars["innodb_snapshot_isolation"]; ok {
			add("snapshot_isolation", statusOK, "innodb_snapshot_isolation available (global "+v+"): txlock turns it on in a joined transaction that read before its lock, so a stale write fails instead of losing an update", "")
		} else {
			add("snapshot_isolation", statusWarn, "innodb_snapshot_isolation is missing (MariaDB before 10.6.18/10.11.8): a transaction that reads, then joins a lock (LockTx, Do inside WithTx) can compute from stale reads",
				"take locks first in a transaction, or upgrade MariaDB")
		}
	}

	// Lock waits.
	if v, ok := vars["innodb_lock_wait_timeout"]; ok {
		n, _ := strconv.ParseInt(v, 10, 64)
		switch {
		case n <= 0:
			add("innodb_lock_wait_timeout", statusFail, v+": a lock call without WaitTimeout or context deadline gives up at once when the key is held: Lock and Do fail like TryLock",
				"SET GLOBAL innodb_lock_wait_timeout = 50 (the default), or set it in the services' DSN (innodb_lock_wait_timeout=50)")
		case n < minLockWait:
			add("innodb_lock_wait_timeout", statusWarn, humanSeconds(n)+": a lock call without WaitTimeout or context deadline gives up after that, even on a key held only briefly by others",
				"if that is not meant, SET GLOBAL innodb_lock_wait_timeout = 50 (the default), or give lock calls a WaitTimeout or deadline")
		case n > 120:
			add("innodb_lock_wait_timeout", statusWarn, humanSeconds(n)+": a waiter without WaitTimeout or context deadline queues that long",
				"give lock calls a WaitTimeout or deadline, or lower it: SET GLOBAL innodb_lock_wait_timeout = 50")
		default:
			add("innodb_lock_wait_timeout", statusOK, humanSeconds(n)+": the longest wait of a lock call without WaitTimeout or deadline", "")
		}
	}
	if v, ok := vars["max_statement_time"]; ok {
		if f, _ := strconv.ParseFloat(v, 64); f > 0 {
			add("max_statement_time", statusWarn, v+" s: every statement, a lock wait included, is ended after that (error 1969): a lock call without WaitTimeout or context deadline gives up then, whatever innodb_lock_wait_timeout says",
				"SET GLOBAL max_statement_time = 0, or give lock calls a WaitTimeout or deadline (txlock then sets it per statement)")
		} else {
			add("max_statement_time", statusOK, "0 (off): statements are not cut short", "")
		}
	}
	if serverinfo.IsOn(vars["innodb_rollback_on_timeout"]) {
		add("innodb_rollback_on_timeout", statusWarn, "ON: a lock-wait timeout (error 1205, which MariaDB also returns for TryLock and NoWait) rolls back the whole transaction, not only the statement: "+
			"in a transaction of your own (LockTx, Do inside WithTx) a failed TryLock or wait also undoes the writes and the locks taken before it, and the statements after it run in autocommit",
			"take locks first in such transactions and end the transaction on ErrNotAcquired, or turn the option off in the server configuration (it needs a restart)")
	} else if _, ok := vars["innodb_rollback_on_timeout"]; ok {
		add("innodb_rollback_on_timeout", statusOK, "OFF: a lock-wait timeout ends only its statement; the transaction and its other locks stay", "")
	}
	if v, ok := vars["autocommit"]; ok {
		if serverinfo.IsOn(v) {
			add("autocommit", statusOK, "ON (default for new sessions)", "")
		} else {
			add("autocommit", statusFail, "OFF: a new session's first statement opens a transaction that stays open until COMMIT; "+
				"the key rows and fencing counters that txlock writes beside the lock transaction (in autocommit) would stay uncommitted, their row locks held",
				"SET GLOBAL autocommit = 1, or set autocommit=1 in every service's DSN")
		}
	}

	// Silent partitions.
	if v, ok := vars["wait_timeout"]; ok {
		n, _ := strconv.ParseInt(v, 10, 64)
		if n >= 3600 {
			add("wait_timeout", statusWarn, humanSeconds(n)+": locks taken with LockTx or WithTx in your own transactions, whose holder is cut off without a FIN or RST (a partition, a frozen VM), stay held that long (the transactions Do and Lock open are bounded by their Lease instead)",
				"lower it for the services' sessions, e.g. the DSN parameter wait_timeout=60 (keep the pool's SetConnMaxIdleTime below it), or SET GLOBAL wait_timeout = 600")
		} else {
			add("wait_timeout", statusOK, humanSeconds(n)+": the longest a silently cut-off holder keeps its lock", "")
		}
	}
	if srv.MariaDB {
		if v, ok := vars["idle_transaction_timeout"]; ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			if n == 0 {
				add("idle_transaction_timeout", statusOK, "supported (global 0, off): txlock sets it to the Lease on the sessions of the transactions it opens", "for locks in your own transactions (LockTx, WithTx), set it per session, e.g. DSN parameter idle_transaction_timeout=60")
			} else {
				add("idle_transaction_timeout", statusOK, "supported, global "+humanSeconds(n)+": a transaction idle that long is ended and its locks released", "")
			}
		} else {
			add("idle_transaction_timeout", statusWarn, "idle_transaction_timeout is missing", "a holder idle in its transaction is only bounded by wait_timeout: upgrade to MariaDB 10.3+")
		}
	} else {
		add("idle_transaction_timeout", statusWarn, "MySQL has no idle_transaction_timeout: a holder idle in its transaction is bounded only by wait_timeout and TCP keepalive",
			"keep wait_timeout low for the lock connections (DSN parameter wait_timeout=60)")
	}

	// Deadlocks.
	if v, ok := vars["innodb_deadlock_detect"]; ok {
		if serverinfo.IsOn(v) {
			add("innodb_deadlock_detect", statusOK, "ON: deadlocks are broken at once (ErrDeadlock, retried by the Retry option)", "")
		} else {
			add("innodb_deadlock_detect", statusWarn, "OFF: a deadlock between lock holders lasts until innodb_lock_wait_timeout and surfaces as ErrNotAcquired, not ErrDeadlock",
				"SET GLOBAL innodb_deadlock_detect = ON, or keep innodb_lock_wait_timeout short and take keys in one order (DoMulti)")
		}
	}

	// Replicas.
	var ro []string
	for _, n := range []string{"read_only", "super_read_only", "innodb_read_only"} {
		if serverinfo.IsOn(vars[n]) {
			ro = append(ro, n)
		}
	}
	if len(ro) > 0 {
		add("read_only", statusFail, strings.Join(ro, ", ")+" is ON: this server is a replica or read-only; key rows cannot be created and locks would not be seen by writers on the primary",
			"point the DSN at the primary")
	} else {
		add("read_only", statusOK, "writable (read_only OFF)", "")
	}

	// Galera.
	switch {
	case !serverinfo.IsOn(vars["wsrep_on"]):
		add("galera", statusOK, "not a Galera node (wsrep_on OFF or absent)", "")
	case mode == serverinfo.GaleraSingleWriter:
		add("galera", statusOK, "Galera node; --galera-single-writer: all lockers use one node at a time (dblock.GaleraSingleWriter)", "")
	case mode == serverinfo.GaleraMultiWriter:
		add("galera", statusOK, "Galera node; --galera-multi-writer: holders on several nodes write their lock row, and certification commits at most one of two overlapping holders (dblock.GaleraMultiWriter); their work outside the database is not protected", "")
	default:
		add("galera", statusWarn, "Galera node (wsrep_on ON): row locks are local to a node, so dblock.New requires dblock.GaleraSingleWriter() (every locker through one node) or dblock.GaleraMultiWriter() (holders on several nodes; the later of two overlapping holders fails at COMMIT)",
			"pick one (docs/HA.md) and run doctor with --galera-single-writer or --galera-multi-writer")
	}
	if serverinfo.IsOn(vars["wsrep_on"]) {
		cluster, ready, state := vars["wsrep_cluster_status"], vars["wsrep_ready"], vars["wsrep_local_state_comment"]
		desc := fmt.Sprintf("wsrep_cluster_status %s, wsrep_ready %s, state %s, cluster size %s", cluster, ready, state, vars["wsrep_cluster_size"])
		switch {
		case cluster != "Primary" || !serverinfo.IsOn(ready):
			add("galera_state", statusFail, desc+": this node is not in the cluster's primary component (partitioned or joining); acquisitions fail with ErrNotPrimary, holders lose their locks",
				"send lock traffic to a synced node of the primary component; check the cluster's network and wsrep_cluster_address")
		case state != "Synced":
			add("galera_state", statusWarn, desc+": the node is not synced (a donor or catching up)", "keep lock traffic off it until it is Synced (a Galera health check does)")
		default:
			add("galera_state", statusOK, desc, "")
		}
	}

	// MySQL: "txlock locks" reads performance_schema.
	if !srv.MariaDB {
		if serverinfo.IsOn(vars["performance_schema"]) {
			add("performance_schema", statusOK, "ON: txlock locks can list every row lock (data_locks)", "")
		} else {
			add("performance_schema", statusWarn, "OFF: txlock locks and release cannot see row locks on MySQL", "set performance_schema=ON in the server configuration (needs a restart)")
		}
	}

	return checks
}

// tableCheck checks the lock table: present, InnoDB, migrated.
func tableCheck(ctx context.Context, db *sql.DB, table string, add func(name, status, msg, advice string)) {
	rows, err := db.QueryContext(ctx, `SELECT table_name, COALESCE(engine, '') FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name IN (?, ?)`, table, schema.FenceTable(table))
	if err != nil {
		add("table", statusFail, "cannot look up "+table+": "+err.Error(), "check the DSN's database")
		return
	}
	engines := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			rows.Close()
			add("table", statusFail, "cannot look up "+table+": "+err.Error(), "")
			return
		}
		engines[name] = engine
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		add("table", statusFail, "cannot look up "+table+": "+err.Error(), "")
		return
	}
	var missing []string
	for _, name := range []string{table, schema.FenceTable(table)} {
		if _, ok := engines[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		add("table", statusFail, strings.Join(missing, " and ")+" missing in this database",
			"run txlock migrate up --table "+table+": it creates what is missing, whatever the version table records")
		return
	}
	for _, name := range []string{table, schema.FenceTable(table)} {
		if !strings.EqualFold(engines[name], "InnoDB") {
			add("table", statusFail, name+" uses engine "+engines[name]+": row locks need InnoDB", "ALTER TABLE `"+name+"` ENGINE=InnoDB")
			return
		}
	}
	st, err := migrations.Status(ctx, db, migrations.Table(table))
	if err != nil {
		add("table", statusFail, "cannot read the migration status: "+err.Error(), "")
		return
	}
	latest := migrations.Latest()
	_, version := appliedCount(st)
	switch {
	case version >= latest:
		add("table", statusOK, fmt.Sprintf("%s and %s present (InnoDB), at migration %d (latest)", table, schema.FenceTable(table), version), "")
	case version == 0:
		add("table", statusWarn, fmt.Sprintf("%s exists but %s records no migration: created by another tool?", table, migrations.VersionTable(table)),
			fmt.Sprintf("if it matches migration %d of this txlock (migrations/sql), record it with txlock migrate up --table %s (it keeps existing tables)", latest, table))
	default:
		add("table", statusFail, fmt.Sprintf("%s is at migration %d, this txlock needs %d", table, version, latest),
			"txlock migrate up --table "+table)
	}
}
