package dblock

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
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

// Flavor returns "MariaDB" or "MySQL".
func (s server) flavor() string {
	if s.mariaDB {
		return "MariaDB"
	}
	return "MySQL"
}

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

// parseVersion reads "10.11.19-MariaDB-0+deb12u1" or "8.0.36".
func parseVersion(v string) (major, minor, patch int, ok bool) {
	core, _, _ := strings.Cut(v, "-")
	parts := strings.SplitN(core, ".", 3)
	if len(parts) < 2 {
		return 0, 0, 0, false
	}
	nums := [3]int{}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, 0, 0, false
		}
		nums[i] = n
	}
	return nums[0], nums[1], nums[2], true
}

// detectServer queries the server's version and features.
func detectServer(ctx context.Context, db *sql.DB) (server, error) {
	var s server
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@version_comment").Scan(&s.version, &s.comment); err != nil {
		return s, fmt.Errorf("dblock: detecting the server: %w", err)
	}
	var ok bool
	s.major, s.minor, s.patch, ok = parseVersion(s.version)
	if !ok {
		return s, fmt.Errorf("dblock: cannot parse server version %q", s.version)
	}
	s.mariaDB = strings.Contains(strings.ToLower(s.version+" "+s.comment), "mariadb")
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
