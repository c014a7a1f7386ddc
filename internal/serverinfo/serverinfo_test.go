package serverinfo

import "testing"

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		v                   string
		major, minor, patch int
		ok                  bool
	}{
		{"10.11.19-MariaDB-0+deb12u1", 10, 11, 19, true},
		{"8.0.36", 8, 0, 36, true},
		{"11.4.2-MariaDB-log", 11, 4, 2, true},
		{"8.0", 8, 0, 0, true},
		{"8", 0, 0, 0, false},
		{"", 0, 0, 0, false},
		{"10.x.1", 0, 0, 0, false},
		{"v8.0.36", 0, 0, 0, false},
		{"8.0.36.1", 0, 0, 0, false},
	} {
		major, minor, patch, ok := ParseVersion(tc.v)
		if major != tc.major || minor != tc.minor || patch != tc.patch || ok != tc.ok {
			t.Errorf("ParseVersion(%q) = %d, %d, %d, %v; want %d, %d, %d, %v",
				tc.v, major, minor, patch, ok, tc.major, tc.minor, tc.patch, tc.ok)
		}
	}
}

func TestFlavor(t *testing.T) {
	for _, tc := range []struct {
		version, comment string
		want             string
	}{
		{"10.11.19-MariaDB-0+deb12u1", "Debian 12", "MariaDB"},
		{"10.6.5", "mariadb.org binary distribution", "MariaDB"},
		{"8.0.36", "MySQL Community Server - GPL", "MySQL"},
		{"8.0.36", "", "MySQL"},
	} {
		if got := Flavor(IsMariaDB(tc.version, tc.comment)); got != tc.want {
			t.Errorf("Flavor(IsMariaDB(%q, %q)) = %s, want %s", tc.version, tc.comment, got, tc.want)
		}
	}
}

func TestIsOn(t *testing.T) {
	for v, want := range map[string]bool{
		"ON": true, "on": true, "1": true, "TRUE": true, "yes": true, " ON ": true,
		"OFF": false, "0": false, "": false, "FORCE": false, "Primary": false,
	} {
		if got := IsOn(v); got != want {
			t.Errorf("IsOn(%q) = %v, want %v", v, got, want)
		}
	}
}
