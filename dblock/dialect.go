package dblock

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/txlock/txlock/internal/serverinfo"
)

// server is what the Locker learned about the server at New.
type server struct {
	version string // VERSION()
	comment string // @@version_comment
	mariaDB bool
	major   int
	minor   int
	patch   int
	// snapshotIsolation: MariaDB's innodb_snapshot_isolation exists, so a
	// joined transaction's stale write can be made to fail (1020) instead
	// of silently losing an update.
	snapshotIsolation bool
}

// flavor returns "MariaDB" or "MySQL".
func (s server) flavor() string { return serverinfo.Flavor(s.mariaDB) }

// atLeast reports whether the server version is >= major.minor.patch.
func (s server) atLeast(major, minor, patch int) bool {
	if s.major != major {
		return s.major > major
	}
	if s.minor != minor {
		return s.minor > minor
	}
	return s.patch >= patch
}

// detectServer queries the server's version and features.
func detectServer(ctx context.Context, db *sql.DB) (server, error) {
	var s server
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@version_comment").Scan(&s.version, &s.comment); err != nil {
		return s, fmt.Errorf("dblock: detecting the server: %w", err)
	}
	var ok bool
	s.major, s.minor, s.patch, ok = serverinfo.ParseVersion(s.version)
	if !ok {
		return s, fmt.Errorf("dblock: cannot parse server version %q", s.version)
	}
	s.mariaDB = serverinfo.IsMariaDB(s.version, s.comment)
	switch {
	case s.mariaDB && !s.atLeast(10, 6, 0):
		return s, fmt.Errorf("dblock: MariaDB %s is too old: txlock needs MariaDB 10.6 or later (or MySQL 8.0)", s.version)
	case !s.mariaDB && !s.atLeast(8, 0, 0):
		return s, fmt.Errorf("dblock: MySQL %s is too old: txlock needs MySQL 8.0 or later (or MariaDB 10.6)", s.version)
	}
	if s.mariaDB {
		rows, err := db.QueryContext(ctx, "SHOW VARIABLES LIKE 'innodb_snapshot_isolation'")
		if err != nil {
			return s, fmt.Errorf("dblock: detecting the server: %w", err)
		}
		s.snapshotIsolation = rows.Next()
		if err := rows.Close(); err != nil {
			return s, fmt.Errorf("dblock: detecting the server: %w", err)
		}
	}
	return s, nil
}
