package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/migrations"
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
"txlock locks" and "txlock release"), the lock table and the tables beside
it (fence, run, leader, session, permit): present, InnoDB, and at the latest
migration; and the hierarchy setting (migration 4's column on the lock and
permit tables; on or off, see "txlock hierarchy").

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
	vars, err := doctorVars(ctx, db)
	if err != nil {
		return nil, err
	}
	cs := checks(serverChecks(srv, vars, mode))
	if st := vars["wsrep_cluster_status"]; serverinfo.IsOn(vars["wsrep_on"]) && (st != "Primary" || !serverinfo.IsOn(vars["wsrep_ready"])) {
		// The node refuses queries on tables (1047): the checks below
		// would only repeat galera_state.
		cs.add("table", statusWarn, "not checked: this Galera node refuses queries until it is back in the primary component", "run doctor against a synced node")
	} else {
		cs.privileges(ctx, db)
		if cs.table(ctx, db, table) {
			cs.hierarchy(ctx, db, table)
		}
	}
	rep := &doctorReport{Server: srv.String(), Table: table, Checks: cs}
	return rep.count(), nil
}

// doctorVars reads the global variables that serverChecks judges, and on
// Galera the wsrep_* status variables.
func doctorVars(ctx context.Context, db *sql.DB) (map[string]string, error) {
	vars, err := globalVars(ctx, db,
		"tx_isolation", "transaction_isolation", "innodb_snapshot_isolation",
		"innodb_lock_wait_timeout", "innodb_rollback_on_timeout", "max_statement_time", "autocommit",
		"wait_timeout", "idle_transaction_timeout",
		"innodb_deadlock_detect", "read_only", "super_read_only", "innodb_read_only",
		"wsrep_on", "performance_schema")
	if err != nil || !serverinfo.IsOn(vars["wsrep_on"]) {
		return vars, err
	}
	// Galera's state is in status variables (names that no system
	// variable has): merge them in for serverChecks.
	st, err := showGlobal(ctx, db, "STATUS", []string{"wsrep_cluster_status", "wsrep_ready", "wsrep_local_state_comment", "wsrep_cluster_size"})
	if err != nil {
		return nil, err
	}
	maps.Copy(vars, st)
	return vars, nil
}

// privileges checks the PROCESS privilege, for locks and release.
func (cs *checks) privileges(ctx context.Context, db *sql.DB) {
	var n int64
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.INNODB_TRX").Scan(&n); err != nil {
		cs.add("privileges", statusWarn, "cannot read information_schema.INNODB_TRX: "+err.Error(), "txlock locks and release need the PROCESS privilege (and CONNECTION ADMIN or SUPER to kill other users' connections)")
	} else {
		cs.add("privileges", statusOK, "PROCESS: txlock locks can read INNODB_TRX", "")
	}
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

// table checks the lock table: present, InnoDB, migrated. It reports
// whether every table is present, in InnoDB.
func (cs *checks) table(ctx context.Context, db *sql.DB, table string) bool {
	names := migrations.Tables(table)
	rows, err := db.QueryContext(ctx, `SELECT table_name, COALESCE(engine, '') FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name IN (`+placeholders(len(names))+`)`, args(names)...)
	if err != nil {
		cs.add("table", statusFail, "cannot look up "+table+": "+err.Error(), "check the DSN's database")
		return false
	}
	engines := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			rows.Close()
			cs.add("table", statusFail, "cannot look up "+table+": "+err.Error(), "")
			return false
		}
		engines[name] = engine
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		cs.add("table", statusFail, "cannot look up "+table+": "+err.Error(), "")
		return false
	}
	var missing []string
	for _, name := range names {
		if _, ok := engines[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		cs.add("table", statusFail, listed(missing)+" missing in this database",
			"run txlock migrate up --table "+table+": it creates what is missing, whatever the version table records")
		return false
	}
	for _, name := range names {
		if !strings.EqualFold(engines[name], "InnoDB") {
			cs.add("table", statusFail, name+" uses engine "+engines[name]+": row locks need InnoDB", "ALTER TABLE `"+name+"` ENGINE=InnoDB")
			return false
		}
	}
	st, err := migrations.Status(ctx, db, migrations.Table(table))
	if err != nil {
		cs.add("table", statusFail, "cannot read the migration status: "+err.Error(), "")
		return true
	}
	latest := migrations.Latest()
	_, version := appliedCount(st)
	switch {
	case version >= latest:
		cs.add("table", statusOK, fmt.Sprintf("%s present (InnoDB), at migration %d (latest)", listed(names), version), "")
	case version == 0:
		cs.add("table", statusWarn, fmt.Sprintf("%s exists but %s records no migration: created by another tool?", table, migrations.VersionTable(table)),
			fmt.Sprintf("if it matches migration %d of this txlock (migrations/sql), record it with txlock migrate up --table %s (it keeps existing tables)", latest, table))
	default:
		cs.add("table", statusFail, fmt.Sprintf("%s is at migration %d, this txlock needs %d", table, version, latest),
			"txlock migrate up --table "+table)
	}
	return true
}
