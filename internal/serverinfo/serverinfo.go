// Package serverinfo reads what a MySQL or MariaDB server says of itself:
// its version number and flavour (VERSION() and @@version_comment), and
// its variables. The library (dblock) and the txlock command share it.
package serverinfo

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

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

// IsMariaDB reports whether a server is MariaDB from its VERSION() and
// @@version_comment (either may name it); otherwise it is MySQL.
func IsMariaDB(version, comment string) bool {
	return strings.Contains(strings.ToLower(version+" "+comment), "mariadb")
}

// Flavor returns "MariaDB" or "MySQL".
func Flavor(mariaDB bool) string {
	if mariaDB {
		return "MariaDB"
	}
	return "MySQL"
}

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
