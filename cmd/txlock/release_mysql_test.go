package main

import (
	"bufio"
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/serverinfo"
)

// entryCols are the columns of the lock view (inspector.entries).
var entryCols = []string{"LOCK_DATA", "trx", "conn", "waiting", "blocking", "mode", "table"}

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
			mock.ExpectQuery(regexp.QuoteMeta("FROM performance_schema.data_locks d")).WithArgs("tb_lock", "tb_lock_permit").
				WillReturnRows(sqlmock.NewRows(entryCols).
					AddRow("7", tc.trx, tc.conn, tc.waiting, nil, "X,REC_NOT_GAP", "tb_lock"))
			if tc.wantKill {
				mock.ExpectExec("^KILL CONNECTION 42$").WillReturnResult(sqlmock.NewResult(0, 0))
			}
			killed, err := in.killHolder(context.Background(), holding{conn: 42, trx: "100", row: 7})
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

// TestReleaseSharedMySQL: on MySQL (no MySQL server here: the statements'
// shapes only), data_locks names every shared holder of a key with its own
// transaction: release lists them, checks each right before its KILL,
// kills both, and leaves the writer waiting for the key alone.
func TestReleaseSharedMySQL(t *testing.T) {
	db, mock, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	in := &inspector{db: db, srv: serverInfo{Version: serverinfo.Version{Text: "8.0.36", Major: 8}}, table: "tb_lock", where: "db"}
	locks := func() {
		mock.ExpectQuery(regexp.QuoteMeta("FROM performance_schema.data_locks d")).WithArgs("tb_lock", "tb_lock_permit").
			WillReturnRows(sqlmock.NewRows(entryCols).
				AddRow("7", "100", 41, false, nil, "S,REC_NOT_GAP", "tb_lock").
				AddRow("7", "101", 42, false, nil, "S,REC_NOT_GAP", "tb_lock").
				AddRow("7", "102", 43, true, "100", "X,REC_NOT_GAP", "tb_lock"))
	}
	mock.ExpectQuery(regexp.QuoteMeta("SELECT id FROM `tb_lock` WHERE key_hash = ?")).WillReturnRows(sqlmock.NewRows([]string{"id"}).AddRow(7))
	locks()
	for _, c := range []struct {
		trx  string
		conn int64
	}{{"100", 41}, {"101", 42}} {
		expectDescribe(mock, c.trx, c.conn)
	}
	for _, conn := range []string{"41", "42"} {
		locks()
		mock.ExpectExec("^KILL CONNECTION " + conn + "$").WillReturnResult(sqlmock.NewResult(0, 0))
	}
	for range 2 {
		mock.ExpectQuery(regexp.QuoteMeta("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")).WillReturnRows(sqlmock.NewRows([]string{"n"}).AddRow(0))
	}
	var out, log bytes.Buffer
	r := &releaser{&console{in: in, out: &out, log: &log, stdin: bufio.NewReader(strings.NewReader(""))}}
	if err := r.release(context.Background(), dblock.Resource("doc:1"), true, 0); err != nil {
		t.Fatalf("release: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), log.String())
	}
	t.Logf("stdout:\n%sstderr:\n%s", out.String(), log.String())
	for _, want := range []string{"is held shared by 2 transaction(s); found through performance_schema.data_locks", "connection 41 is gone", "connection 42 is gone"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if strings.Count(log.String(), "txlock: killed connection") != 2 || strings.Contains(log.String(), "connection 43") {
		t.Errorf("stderr: want the kills of 41 and 42 only")
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestRowsFromMySQLSharedLocks: data_locks' modes (S,REC_NOT_GAP) make a
// key held shared by each of its holders, in mode S, with the waiting
// writer in mode X; a transaction holding the row both ways holds it X.
func TestRowsFromMySQLSharedLocks(t *testing.T) {
	in := &inspector{srv: serverInfo{Version: serverinfo.Version{Text: "8.0.36", Major: 8}}}
	c := cacheRead{fresh: true, trxs: map[string]trxInfo{}, entries: []lockEntry{
		{rowID: 7, trx: "100", conn: 41, mode: lockMode("S,REC_NOT_GAP")},
		{rowID: 7, trx: "101", conn: 42, mode: lockMode("S")},
		{rowID: 7, trx: "102", conn: 43, waiting: true, blocking: "100", mode: lockMode("X,REC_NOT_GAP")},
		{rowID: 8, trx: "103", conn: 44, mode: lockMode("S,REC_NOT_GAP")},
		{rowID: 8, trx: "103", conn: 44, mode: lockMode("X,REC_NOT_GAP")},
	}}
	procs := map[int64]procInfo{41: {cmd: "Sleep"}, 42: {cmd: "Sleep"}, 43: {cmd: "Query"}, 44: {cmd: "Sleep"}}
	rows, left := in.rowsFromCache(c, nil, procs, false)
	if left != 0 {
		t.Errorf("%d entries left out", left)
	}
	v := connViews{procs: procs}
	shown := map[string]bool{}
	k := v.heldKey(7, dblock.Resource("doc:1"), rows[7], shown)
	if k.Mode != "S" || len(k.Holders) != 2 || k.Holders[0].ID != 41 || k.Holders[1].ID != 42 || k.Holders[0].Mode != "S" || k.Holders[1].Mode != "S" ||
		k.Holder.ID != 41 || len(k.Waiters) != 1 || k.Waiters[0].Mode != "X" {
		t.Errorf("key held shared by two: %+v", k)
	}
	k = v.heldKey(8, dblock.Resource("doc:2"), rows[8], shown)
	if k.Mode != "X" || len(k.Holders) != 1 || k.Holders[0].Mode != "X" {
		t.Errorf("key held both ways by one transaction: %+v, want X", k)
	}
}
