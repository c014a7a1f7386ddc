package main

import (
	"context"
	"regexp"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/internal/serverinfo"
)

// TestKillHolderMySQL checks the statements of release's last check on
// MySQL (no MySQL server here): data_locks is read again right before the
// KILL, and the KILL is sent only if the same transaction of the same
// connection still holds the row.
func TestKillHolderMySQL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		trx      string // holding the row now
		conn     int64
		waiting  bool
		wantKill bool
	}{
		{"still held", "100", 42, false, true},
		{"another transaction of the connection", "101", 42, false, false},
		{"another connection", "100", 43, false, false},
		{"the connection now waits for it", "100", 42, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, mock, err := sqlmock.New()
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			in := &inspector{db: db, srv: serverInfo{Version: serverinfo.Version{Text: "8.0.36", Major: 8}}, table: "tb_lock"}
			mock.ExpectQuery(regexp.QuoteMeta("FROM performance_schema.data_locks d")).WithArgs("tb_lock").
				WillReturnRows(sqlmock.NewRows([]string{"LOCK_DATA", "trx", "conn", "waiting", "blocking"}).
					AddRow("7", tc.trx, tc.conn, tc.waiting, nil))
			if tc.wantKill {
				mock.ExpectExec("^KILL CONNECTION 42$").WillReturnResult(sqlmock.NewResult(0, 0))
			}
			killed, err := in.killHolder(context.Background(), 7, holding{held: true, conn: 42, trx: "100"})
			if err != nil || killed != tc.wantKill {
				t.Errorf("killHolder = %v, %v; want %v", killed, err, tc.wantKill)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestKillIfUnchangedSQL: the MariaDB statement checks QUERY_ID and
// COMMAND and kills in one go, and refuses what it cannot check.
func TestKillIfUnchangedSQL(t *testing.T) {
	q, ok := killIfUnchangedSQL(42, procInfo{cmd: "Sleep", queryID: 9001})
	want := "BEGIN NOT ATOMIC DECLARE q BIGINT UNSIGNED DEFAULT NULL; " +
		"SELECT QUERY_ID INTO q FROM information_schema.PROCESSLIST WHERE ID = 42 AND QUERY_ID = 9001 AND COMMAND = 'Sleep'; " +
		"IF q IS NOT NULL THEN KILL CONNECTION 42; END IF; SELECT q IS NOT NULL; END"
	if !ok || q != want {
		t.Errorf("killIfUnchangedSQL = %q, %v\nwant %q", q, ok, want)
	}
	for _, was := range []procInfo{
		{cmd: "Sleep"},                          // not in PROCESSLIST before it was named
		{cmd: "Sleep'; KILL 1; --", queryID: 1}, // not a command name
		{cmd: "", queryID: 1},
	} {
		if _, ok := killIfUnchangedSQL(42, was); ok {
			t.Errorf("killIfUnchangedSQL accepted %+v", was)
		}
	}
	if !sameTransaction(procInfo{cmd: "Sleep", queryID: 5}, procInfo{cmd: "Sleep", queryID: 5}) ||
		sameTransaction(procInfo{cmd: "Query", queryID: 5}, procInfo{cmd: "Sleep", queryID: 5}) || // its statement ended: committed in autocommit?
		sameTransaction(procInfo{cmd: "Sleep", queryID: 5}, procInfo{cmd: "Sleep", queryID: 6}) ||
		sameTransaction(procInfo{}, procInfo{}) {
		t.Error("sameTransaction")
	}
}
