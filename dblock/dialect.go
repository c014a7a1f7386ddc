package dblock

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/txlock/txlock/internal/serverinfo"
)

// server is what the Locker learned about the server at New.
type server struct {
	version string // @@version, the same as VERSION()
	mariaDB bool
	// snapshotIsolation: MariaDB's innodb_snapshot_isolation exists, so a
	// joined transaction's stale write can be made to fail (1020) instead
	// of silently losing an update.
	snapshotIsolation bool
	// rollbackOnTimeout: innodb_rollback_on_timeout is ON (a startup
	// option, global only), so a lock-wait timeout (1205) rolls the whole
	// transaction back instead of the statement.
	rollbackOnTimeout bool
	// ident names the server and schema the Locker's pool reaches
	// ("host:port/schema"): two pools with the same ident lock the same
	// rows.
	ident string
	// lockWait is innodb_lock_wait_timeout as a session of the pool has it
	// (the DSN may set it): the server's own bound on a wait.
	lockWait time.Duration
	topology Topology
}

// A Topology is what New learned about the server's place in a
// replication setup, from its global variables and the account's grants
// (see Locker.Topology).
type Topology struct {
	// ReadOnly: read_only (or MySQL's super_read_only) is ON. The server is
	// most likely a replica: locks taken there are not seen by the holders
	// on the primary. New refuses such a server unless AllowReadOnly is
	// given.
	ReadOnly bool
	// SuperReadOnly: MySQL's super_read_only is ON; no account can write,
	// whatever its privileges.
	SuperReadOnly bool
	// ReadOnlyBypass: the account's global privileges let it write while
	// read_only is ON (MariaDB: READ_ONLY ADMIN, or SUPER before 10.11;
	// MySQL: SUPER or CONNECTION_ADMIN; ALL PRIVILEGES on both), so that
	// switching a primary to read_only does not stop its lock holders.
	// It is read from SHOW GRANTS of the current account: privileges that
	// come only through a role that SHOW GRANTS does not expand are not
	// seen (false), and so is everything when SHOW GRANTS fails.
	ReadOnlyBypass bool
	// Galera: the server is a Galera cluster node (wsrep_on=ON). See
	// GaleraSingleWriter and GaleraMultiWriter.
	Galera bool
	// SemiSyncSource: semi-synchronous replication is enabled on the
	// server as a source (rpl_semi_sync_master_enabled or
	// rpl_semi_sync_source_enabled).
	SemiSyncSource bool
	// SemiSyncReplica: semi-synchronous replication is enabled on the
	// server as a replica (rpl_semi_sync_slave_enabled or
	// rpl_semi_sync_replica_enabled).
	SemiSyncReplica bool
}

// The statements of New's detection: two round trips on both flavours.
// Variables that a server lacks (wsrep_on without Galera support, the
// semi-sync variables without their plugin, innodb_snapshot_isolation on
// MySQL and older MariaDB) are simply absent from the answer.
const (
	detectVariables = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', " +
		"'read_only', 'super_read_only', 'wsrep_on', 'innodb_snapshot_isolation', " +
		"'innodb_rollback_on_timeout', 'hostname', 'port', " +
		"'rpl_semi_sync_master_enabled', 'rpl_semi_sync_slave_enabled', " +
		"'rpl_semi_sync_source_enabled', 'rpl_semi_sync_replica_enabled')"
	detectGrants = "SHOW GRANTS"
	detectSchema = "SELECT DATABASE(), @@SESSION.innodb_lock_wait_timeout"
)

// detectServer queries the server's version, features, topology and the
// schema the pool uses (three round trips).
func detectServer(ctx context.Context, db *sql.DB) (server, error) {
	var s server
	vars, err := serverinfo.Variables(ctx, db, detectVariables)
	if err != nil {
		return s, fmt.Errorf("dblock: detecting the server: %w", err)
	}
	v, err := serverinfo.Identify(vars["version"], vars["version_comment"])
	if err != nil {
		return s, fmt.Errorf("dblock: %w", err)
	}
	if err := v.Supported(); err != nil {
		return s, fmt.Errorf("dblock: %w", err)
	}
	s.version, s.mariaDB = v.Text, v.MariaDB
	var schemaName sql.NullString
	var lockWait int64
	if err := db.QueryRowContext(ctx, detectSchema).Scan(&schemaName, &lockWait); err != nil {
		return s, fmt.Errorf("dblock: detecting the server's schema: %w", err)
	}
	s.lockWait = time.Duration(lockWait) * time.Second
	s.ident = vars["hostname"] + ":" + vars["port"] + "/" + schemaName.String
	s.rollbackOnTimeout = serverinfo.IsOn(vars["innodb_rollback_on_timeout"])
	_, s.snapshotIsolation = vars["innodb_snapshot_isolation"]
	s.snapshotIsolation = s.snapshotIsolation && s.mariaDB
	on := func(names ...string) bool {
		for _, n := range names {
			if serverinfo.IsOn(vars[n]) {
				return true
			}
		}
		return false
	}
	t := &s.topology
	t.SuperReadOnly = on("super_read_only")
	t.ReadOnly = t.SuperReadOnly || on("read_only")
	t.Galera = on("wsrep_on")
	t.SemiSyncSource = on("rpl_semi_sync_master_enabled", "rpl_semi_sync_source_enabled")
	t.SemiSyncReplica = on("rpl_semi_sync_slave_enabled", "rpl_semi_sync_replica_enabled")
	if grants, err := showGrants(ctx, db); err == nil {
		t.ReadOnlyBypass = !t.SuperReadOnly && bypassesReadOnly(grants, v.MariaDB && v.AtLeast(10, 11, 0))
	}
	return s, nil
}

// showGrants returns the lines of SHOW GRANTS for the current account.
func showGrants(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, detectGrants)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var grants []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		grants = append(grants, g)
	}
	return grants, rows.Err()
}

// bypassesReadOnly reports whether grants (lines of SHOW GRANTS) give a
// global privilege that lets the account write while read_only is ON.
// From MariaDB 10.11 SUPER no longer does (superNoBypass): only READ_ONLY
// ADMIN.
func bypassesReadOnly(grants []string, superNoBypass bool) bool {
	for _, g := range grants {
		rest, ok := strings.CutPrefix(strings.ToUpper(strings.TrimSpace(g)), "GRANT ")
		if !ok {
			continue
		}
		privs, _, ok := strings.Cut(rest, " ON *.* TO ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(privs, ",") {
			switch strings.Join(strings.Fields(p), " ") {
			case "ALL", "ALL PRIVILEGES", "READ_ONLY ADMIN", "READ ONLY ADMIN", "CONNECTION_ADMIN":
				return true
			case "SUPER":
				if !superNoBypass {
					return true
				}
			}
		}
	}
	return false
}
