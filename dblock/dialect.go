package dblock

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/txlock/txlock/internal/serverinfo"
)

// server is what the Locker learned about the server at New.
type server struct {
	version string // @@version, the same as VERSION()
	mariaDB bool
	// readOnly: read_only or super_read_only is ON: most likely a replica,
	// where locks are not seen by the primary's holders.
	readOnly bool
	// galera: the server is a Galera cluster node (wsrep_on=ON), where row
	// locks are local to a node.
	galera bool
	// snapshotIsolation: MariaDB's innodb_snapshot_isolation exists, so a
	// transaction whose snapshot predates a lock can be caught (1020).
	snapshotIsolation bool
	// rollbackOnTimeout: innodb_rollback_on_timeout is ON (a startup
	// option, global only), so a lock-wait timeout (1205) rolls the whole
	// transaction back instead of the statement.
	rollbackOnTimeout bool
	// ident names the server and schema the Locker's pool reaches
	// ("host:port/schema"): two pools with the same ident lock the same
	// rows.
	ident string
	// schema is the default schema of the Locker's pool (DATABASE()).
	schema string
	// lockWait is innodb_lock_wait_timeout as a session of the pool has it
	// (the DSN may set it): the server's own bound on a wait.
	lockWait time.Duration
}

// The statements of New's detection: two round trips on both flavours.
// Variables that a server lacks (wsrep_on without Galera support,
// innodb_snapshot_isolation on MySQL and older MariaDB) are simply absent
// from the answer.
const (
	detectVariables = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', " +
		"'read_only', 'super_read_only', 'wsrep_on', 'innodb_snapshot_isolation', " +
		"'innodb_rollback_on_timeout', 'hostname', 'port')"
	detectSchema = "SELECT DATABASE(), @@SESSION.innodb_lock_wait_timeout"
)

// detectServer queries the server's version, features and topology, and
// the schema the pool uses.
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
	s.schema = schemaName.String
	s.ident = vars["hostname"] + ":" + vars["port"] + "/" + s.schema
	s.readOnly = serverinfo.IsOn(vars["read_only"]) || serverinfo.IsOn(vars["super_read_only"])
	s.galera = serverinfo.IsOn(vars["wsrep_on"])
	s.rollbackOnTimeout = serverinfo.IsOn(vars["innodb_rollback_on_timeout"])
	_, s.snapshotIsolation = vars["innodb_snapshot_isolation"]
	s.snapshotIsolation = s.snapshotIsolation && s.mariaDB
	return s, nil
}
