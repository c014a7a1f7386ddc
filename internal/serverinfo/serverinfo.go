// Package serverinfo reads what a MySQL or MariaDB server says of itself
// (VERSION() and @@version_comment): its version number and its flavour.
// The library (dblock) and the txlock command share it.
package serverinfo

import (
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
