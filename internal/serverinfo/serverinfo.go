// Package serverinfo holds what txlock knows of a MySQL or MariaDB server
// as such: its version and flavour (from VERSION() and @@version_comment)
// and the oldest versions txlock supports, its variables, and the Galera
// modes a service can declare. The library (dblock) and the txlock command
// share it, so that both judge a server the same way.
package serverinfo

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

// The oldest servers txlock supports: SKIP LOCKED, NOWAIT and the lock
// behaviour it was measured on.
const (
	minMariaDBMajor, minMariaDBMinor = 10, 6
	minMySQLMajor, minMySQLMinor     = 8, 0
)

// A Version is a server's version and flavour.
type Version struct {
	Text    string // VERSION(), e.g. "10.11.19-MariaDB-0+deb12u1"
	MariaDB bool   // else MySQL
	Major   int
	Minor   int
	Patch   int
}

// Identify returns the Version of a server from its VERSION() and
// @@version_comment (either may name MariaDB). It fails when the version
// is not major.minor[.patch].
func Identify(version, comment string) (Version, error) {
	v := Version{Text: version, MariaDB: strings.Contains(strings.ToLower(version+" "+comment), "mariadb")}
	var ok bool
	if v.Major, v.Minor, v.Patch, ok = ParseVersion(version); !ok {
		return v, fmt.Errorf("cannot parse the server version %q", version)
	}
	return v, nil
}

// ParseVersion reads the number of a VERSION() string,
// "10.11.19-MariaDB-0+deb12u1" or "8.0.36"; the patch may be missing
// ("8.0" is 8.0.0). ok is false when it is not major.minor[.patch].
func ParseVersion(v string) (major, minor, patch int, ok bool) {
	core, _, _ := strings.Cut(v, "-")
	parts := strings.SplitN(core, ".", 3)
	if len(parts) < 2 {
		return 0, 0, 0, false
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, 0, 0, false
		}
		nums[i] = n
	}
	return nums[0], nums[1], nums[2], true
}

// Flavor returns "MariaDB" or "MySQL".
func (v Version) Flavor() string {
	if v.MariaDB {
		return "MariaDB"
	}
	return "MySQL"
}

// String returns the flavour and VERSION(), e.g.
// "MariaDB 10.11.19-MariaDB-0+deb12u1".
func (v Version) String() string { return v.Flavor() + " " + v.Text }

// AtLeast reports whether the version is major.minor.patch or later.
func (v Version) AtLeast(major, minor, patch int) bool {
	if v.Major != major {
		return v.Major > major
	}
	if v.Minor != minor {
		return v.Minor > minor
	}
	return v.Patch >= patch
}

// Supported returns nil if txlock supports the server (MariaDB 10.6 or
// MySQL 8.0, or later), else an error that says what it needs.
func (v Version) Supported() error {
	switch {
	case v.MariaDB && !v.AtLeast(minMariaDBMajor, minMariaDBMinor, 0):
		return fmt.Errorf("%s is too old: txlock needs MariaDB %d.%d or later (or MySQL %d.%d)", v, minMariaDBMajor, minMariaDBMinor, minMySQLMajor, minMySQLMinor)
	case !v.MariaDB && !v.AtLeast(minMySQLMajor, minMySQLMinor, 0):
		return fmt.Errorf("%s is too old: txlock needs MySQL %d.%d or later (or MariaDB %d.%d)", v, minMySQLMajor, minMySQLMinor, minMariaDBMajor, minMariaDBMinor)
	}
	return nil
}

// A GaleraMode is how the services on a Galera cluster make their locks
// hold across its nodes (dblock.GaleraSingleWriter, GaleraMultiWriter).
type GaleraMode uint8

// The Galera modes.
const (
	GaleraUnset        GaleraMode = iota // not declared
	GaleraSingleWriter                   // all lock traffic goes to one node at a time
	GaleraMultiWriter                    // holders write their lock row: certification decides
)

// A Querier runs a query: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Variables runs query, a SHOW [GLOBAL] VARIABLES or STATUS statement
// (two columns: name and value), and returns its rows keyed by lower-case
// name. SHOW is sent as text: not every server prepares it, so query
// carries no placeholders.
func Variables(ctx context.Context, q Querier, query string) (map[string]string, error) {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	vars := make(map[string]string, 16)
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, err
		}
		vars[strings.ToLower(name)] = value
	}
	return vars, rows.Err()
}

// IsOn reports whether a boolean variable's value is true: ON, 1, TRUE or
// YES, in any case.
func IsOn(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "ON", "1", "TRUE", "YES":
		return true
	}
	return false
}
