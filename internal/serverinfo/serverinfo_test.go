package serverinfo

import (
	"fmt"
	"strings"
	"testing"
)

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

func TestIdentify(t *testing.T) {
	for _, tc := range []struct {
		version, comment string
		want             string // String(); "" when Identify fails
	}{
		{"10.11.19-MariaDB-0+deb12u1", "Debian 12", "MariaDB 10.11.19-MariaDB-0+deb12u1"},
		{"10.6.5", "mariadb.org binary distribution", "MariaDB 10.6.5"},
		{"8.0.36", "MySQL Community Server - GPL", "MySQL 8.0.36"},
		{"8.0.36", "", "MySQL 8.0.36"},
		{"x.y", "", ""},
	} {
		v, err := Identify(tc.version, tc.comment)
		switch {
		case tc.want == "" && (err == nil || !strings.Contains(err.Error(), `cannot parse the server version "x.y"`)):
			t.Errorf("Identify(%q, %q) = %v, %v; want a parse error", tc.version, tc.comment, v, err)
		case tc.want != "" && (err != nil || v.String() != tc.want):
			t.Errorf("Identify(%q, %q) = %v, %v; want %s", tc.version, tc.comment, v, err, tc.want)
		}
	}
}

// TestSupported pins the oldest supported versions and the error that
// both dblock.New and txlock doctor give for an older server.
func TestSupported(t *testing.T) {
	for _, tc := range []struct {
		version, comment string
		wantErr          string // "" when supported
	}{
		{"10.6.0-MariaDB", "", ""},
		{"10.11.19-MariaDB-0+deb12u1", "", ""},
		{"11.4.2-MariaDB-log", "", ""},
		{"8.0.0", "", ""},
		{"8.4.1", "", ""},
		{"9.0.1", "", ""},
		{"10.5.25-MariaDB", "", "MariaDB 10.5.25-MariaDB is too old: txlock needs MariaDB 10.6 or later (or MySQL 8.0)"},
		{"10.5.2", "mariadb.org binary distribution", "MariaDB 10.5.2 is too old: txlock needs MariaDB 10.6 or later (or MySQL 8.0)"},
		{"5.7.44", "MySQL Community Server - GPL", "MySQL 5.7.44 is too old: txlock needs MySQL 8.0 or later (or MariaDB 10.6)"},
	} {
		v, err := Identify(tc.version, tc.comment)
		if err != nil {
			t.Fatal(err)
		}
		err = v.Supported()
		if got := fmt.Sprint(err); (tc.wantErr == "" && err != nil) || (tc.wantErr != "" && got != tc.wantErr) {
			t.Errorf("%s: Supported() = %v, want %q", v, err, tc.wantErr)
		}
	}
}

func TestAtLeast(t *testing.T) {
	v := Version{Major: 10, Minor: 11, Patch: 8}
	for _, tc := range []struct {
		major, minor, patch int
		want                bool
	}{
		{10, 11, 8, true}, {10, 11, 7, true}, {10, 6, 99, true}, {9, 99, 99, true},
		{10, 11, 9, false}, {10, 12, 0, false}, {11, 0, 0, false},
	} {
		if got := v.AtLeast(tc.major, tc.minor, tc.patch); got != tc.want {
			t.Errorf("10.11.8 AtLeast(%d, %d, %d) = %v, want %v", tc.major, tc.minor, tc.patch, got, tc.want)
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
