package dblock_test

// New's judgement of the server's version (internal/serverinfo, shared
// with the txlock command): the oldest supported servers are accepted, an
// older or unreadable version is refused after the first round trip.

import (
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
)

func TestSQLServerVersion(t *testing.T) {
	for _, c := range []struct {
		version, comment string
		wantErr          string // empty: accepted
	}{
		{"10.6.0-MariaDB", "", ""},
		{"10.6.5", "mariadb.org binary distribution", ""},
		{"8.0.0", mysqlComment, ""},
		{"10.5.25-MariaDB", "", "dblock: MariaDB 10.5.25-MariaDB is too old: txlock needs MariaDB 10.6 or later (or MySQL 8.0)"},
		{"10.5.2", "mariadb.org binary distribution", "dblock: MariaDB 10.5.2 is too old: txlock needs MariaDB 10.6 or later (or MySQL 8.0)"},
		{"5.7.44", mysqlComment, "dblock: MySQL 5.7.44 is too old: txlock needs MySQL 8.0 or later (or MariaDB 10.6)"},
		{"x.y", "", `dblock: cannot parse the server version "x.y"`},
	} {
		t.Run(c.version, func(t *testing.T) {
			m := newMocked(t)
			if c.wantErr == "" {
				l := m.locker(t, c.version, c.comment, false)
				_ = l.Close()
				m.done(t)
				return
			}
			m.mock.ExpectQuery(qDetect).WillReturnRows(sqlmock.NewRows([]string{"Variable_name", "Value"}).
				AddRow("version", c.version).AddRow("version_comment", c.comment))
			l, err := m.newLocker()
			if err == nil {
				_ = l.Close()
				t.Fatalf("New on %s %q succeeded, want %q", c.version, c.comment, c.wantErr)
			}
			if !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("New on %s %q: %v, want %q", c.version, c.comment, err, c.wantErr)
			}
			m.done(t)
		})
	}
}
