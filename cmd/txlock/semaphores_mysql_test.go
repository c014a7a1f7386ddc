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
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/internal/serverinfo"
)

// mysqlInspector is an inspector of tb_lock on a MySQL 8 server mocked by
// sqlmock (no MySQL server here: the statements' shapes only).
func mysqlInspector(t *testing.T) (*inspector, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &inspector{db: db, srv: serverInfo{Version: serverinfo.Version{Text: "8.0.36", Major: 8}}, table: "tb_lock", where: "db"}, mock
}

// expectDescribe expects release's description of connection conn in
// transaction trx (releaser.describe): INNODB_TRX, then PROCESSLIST.
func expectDescribe(mock sqlmock.Sqlmock, trx string, conn int64) {
	mock.ExpectQuery(regexp.QuoteMeta("FROM information_schema.INNODB_TRX")).
		WillReturnRows(sqlmock.NewRows([]string{"trx_id", "thread", "state", "age", "rows", "tables", "probe"}).AddRow(trx, conn, "RUNNING", 5, 1, 1, false))
	mock.ExpectQuery(regexp.QuoteMeta("FROM information_schema.PROCESSLIST")).
		WillReturnRows(sqlmock.NewRows([]string{"ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "QUERY_ID"}).AddRow(conn, "app", "h", "test", "Sleep", 5, "", 0))
}

// permitRowCols are the columns of inspector.permitRows.
var permitRowCols = []string{"id", "key_hash", "slot", "permits", "key_id", "resource", "operation", "method", "user_id", "is_global"}

// TestSemaphoresMySQL: data_locks' entries on the permit table (row ids
// that the lock table's rows share) make a semaphore apart from the key's
// lock: mode SEM, n from slot 0, one held permit per row with a granted
// lock, each holder with its slot, the waiter of a permit, and the key
// read through the lock table's row of the same key_hash.
func TestSemaphoresMySQL(t *testing.T) {
	in, mock := mysqlInspector(t)
	key := dblock.Operation("export")
	hash := lockkey.Fields(key).Hash()
	c := cacheRead{fresh: true, trxs: map[string]trxInfo{}, entries: []lockEntry{
		{rowID: 7, trx: "100", conn: 41, mode: "X"},                              // the key's lock, row 7 of tb_lock
		{rowID: 7, trx: "101", conn: 42, mode: "X", permit: true},                // permit row 7
		{rowID: 8, trx: "102", conn: 43, mode: "X", permit: true},                // permit row 8
		{rowID: 8, trx: "103", conn: 44, mode: "X", permit: true, waiting: true}, // waits for permit row 8
		{rowID: 9, trx: "104", conn: 45, mode: "X", permit: true},                // a permit of a key without a row in tb_lock
	}}
	procs := map[int64]procInfo{41: {cmd: "Sleep"}, 42: {cmd: "Sleep"}, 43: {cmd: "Sleep"}, 44: {cmd: "Query"}, 45: {cmd: "Sleep"}}
	keys, _ := in.rowsFromCache(c, nil, procs, false)
	permits, left := in.rowsFromCache(c, nil, procs, true)
	if left != 0 || len(keys) != 1 || len(keys[7].holders) != 1 || len(permits) != 3 {
		t.Fatalf("key rows %v, permit rows %v, %d left out", keys, permits, left)
	}
	mock.ExpectQuery(regexp.QuoteMeta("FROM `tb_lock_permit` p LEFT JOIN `tb_lock_permit` z ON z.key_hash = p.key_hash AND z.slot = 0 LEFT JOIN `tb_lock` l ON l.key_hash = p.key_hash WHERE p.id IN (?, ?, ?)")).
		WithArgs(7, 8, 9).
		WillReturnRows(sqlmock.NewRows(permitRowCols).
			AddRow(7, hash[:], 0, 3, 12, "", "export", "", "", false).
			AddRow(8, hash[:], 2, 3, 12, "", "export", "", "", false).
			AddRow(9, []byte("other-key-hash-of-32-bytes......"), 0, 1, 0, "", "", "", "", false))
	shown := map[string]bool{}
	sems, err := in.semaphores(context.Background(), permits, dblock.Key{}, connViews{procs: procs}, shown)
	if err != nil {
		t.Fatal(err)
	}
	if len(sems) != 2 {
		t.Fatalf("semaphores %+v, want 2", sems)
	}
	k := sems[0]
	s, all := slots(k.Holders)
	if k.Mode != semMode || k.Permits != 3 || k.PermitsHeld != 2 || k.RowID != 12 || k.KeyStr != key.String() || len(k.Holders) != 2 ||
		k.Holders[0].ID != 42 || k.Holders[1].ID != 43 || !all || s[0] != 0 || s[1] != 2 || k.Source != "data_locks" {
		t.Errorf("semaphore of %s: %+v", key, k)
	}
	if len(k.Waiters) != 1 || k.Waiters[0].ID != 44 || k.Waiters[0].Mode != semMode || *k.Waiters[0].PermitSlot != 2 {
		t.Errorf("the waiter for slot 2: %+v", k.Waiters)
	}
	if o := sems[1]; !strings.HasPrefix(o.KeyStr, "key_hash=") || o.RowID != 0 || o.PermitsHeld != 1 || len(o.Holders) != 1 {
		t.Errorf("a semaphore whose key row is gone: %+v, want its key_hash", o)
	}
	// With a filter, a semaphore whose key is unknown is left out.
	mock.ExpectQuery(regexp.QuoteMeta("FROM `tb_lock_permit` p")).WillReturnRows(sqlmock.NewRows(permitRowCols).
		AddRow(9, []byte("other-key-hash-of-32-bytes......"), 0, 1, 0, "", "", "", "", false))
	if sems, err := in.semaphores(context.Background(), rowStates{9: permits[9]}, dblock.Operation("export"), connViews{procs: procs}, shown); err != nil || len(sems) != 0 {
		t.Errorf("filtered: %+v, %v; want none", sems, err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestReleasePermitHolderMySQL: release --permit-holder on MySQL reads the
// key's permit rows, finds the connection's permit in data_locks, checks it
// there again right before the KILL, and kills that connection only; a
// lock of tb_lock's row with the same id is not the permit.
func TestReleasePermitHolderMySQL(t *testing.T) {
	in, mock := mysqlInspector(t)
	key := dblock.Operation("export")
	locks := func() {
		mock.ExpectQuery(regexp.QuoteMeta("FROM performance_schema.data_locks d")).WithArgs("tb_lock", "tb_lock_permit").
			WillReturnRows(sqlmock.NewRows(entryCols).
				AddRow("7", "100", 41, false, nil, "X,REC_NOT_GAP", "tb_lock"). // the key row 7: not a permit
				AddRow("7", "101", 42, false, nil, "X,REC_NOT_GAP", "tb_lock_permit").
				AddRow("8", "102", 43, false, nil, "X,REC_NOT_GAP", "tb_lock_permit"))
	}
	mock.ExpectQuery(regexp.QuoteMeta("SELECT id, slot, permits FROM `tb_lock_permit` WHERE key_hash = ? ORDER BY slot")).
		WillReturnRows(sqlmock.NewRows([]string{"id", "slot", "permits"}).AddRow(7, 0, 2).AddRow(8, 1, 2))
	locks()
	expectDescribe(mock, "102", 43)
	locks()
	mock.ExpectExec("^KILL CONNECTION 43$").WillReturnResult(sqlmock.NewResult(0, 0))
	mock.ExpectQuery(regexp.QuoteMeta("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")).WillReturnRows(sqlmock.NewRows([]string{"n"}).AddRow(0))

	var out, log bytes.Buffer
	r := &releaser{&console{in: in, out: &out, log: &log, stdin: bufio.NewReader(strings.NewReader(""))}}
	if err := r.release(context.Background(), key, true, 43); err != nil {
		t.Fatalf("release: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), log.String())
	}
	t.Logf("stdout:\n%sstderr:\n%s", out.String(), log.String())
	for _, want := range []string{"a permit of operation=\"export\" (slot 1 of 2, row 8 of tb_lock_permit) is held by connection 43", "found through performance_schema.data_locks", "connection 43 is gone"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if strings.Count(log.String(), "txlock: killed connection") != 1 {
		t.Errorf("stderr: want the kill of 43 only")
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}

	// The key row 7 is held by 41 in tb_lock, the permit row 7 by 42: a
	// check of one is never satisfied by the other.
	for _, tc := range []struct {
		h    holding
		kill bool
	}{
		{holding{conn: 41, trx: "100", row: 7}, true},
		{holding{conn: 41, trx: "100", row: 7, permit: true}, false},
		{holding{conn: 42, trx: "101", row: 7}, false},
	} {
		locks()
		if tc.kill {
			mock.ExpectExec("^KILL CONNECTION 41$").WillReturnResult(sqlmock.NewResult(0, 0))
		}
		if killed, err := in.killHolder(context.Background(), tc.h); err != nil || killed != tc.kill {
			t.Errorf("killHolder(%+v) = %v, %v; want %v", tc.h, killed, err, tc.kill)
		}
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestReleaseSemaphoreRefusedMySQL: release --key of a key whose lock is
// free but whose permits are held (MySQL) lists the permit holders and
// refuses, with the --permit-holder to use; nothing is killed.
func TestReleaseSemaphoreRefusedMySQL(t *testing.T) {
	in, mock := mysqlInspector(t)
	key := dblock.Operation("export")
	locks := func() {
		mock.ExpectQuery(regexp.QuoteMeta("FROM performance_schema.data_locks d")).
			WillReturnRows(sqlmock.NewRows(entryCols).
				AddRow("7", "101", 42, false, nil, "X,REC_NOT_GAP", "tb_lock_permit"). // the permit row 7, not the key row 7
				AddRow("8", "103", 44, true, "101", "X,REC_NOT_GAP", "tb_lock_permit"))
	}
	mock.ExpectQuery(regexp.QuoteMeta("SELECT id FROM `tb_lock` WHERE key_hash = ?")).WillReturnRows(sqlmock.NewRows([]string{"id"}).AddRow(7))
	locks() // findHolders: nobody holds the key row 7
	mock.ExpectQuery(regexp.QuoteMeta("SELECT id, slot, permits FROM `tb_lock_permit` WHERE key_hash = ?")).
		WillReturnRows(sqlmock.NewRows([]string{"id", "slot", "permits"}).AddRow(7, 0, 2).AddRow(8, 1, 2))
	locks()
	expectDescribe(mock, "101", 42)

	var out, log bytes.Buffer
	r := &releaser{&console{in: in, out: &out, log: &log, stdin: bufio.NewReader(strings.NewReader(""))}}
	err := r.release(context.Background(), key, true, 0)
	t.Logf("stdout:\n%serror: %v", out.String(), err)
	if err == nil || !strings.Contains(err.Error(), "--key 'operation=export' --permit-holder CONN (holders: 42)") ||
		!strings.Contains(out.String(), "1 of the 2 permits of its semaphore") || !strings.Contains(out.String(), "connection 42 (user app") {
		t.Errorf("release of a semaphore on MySQL: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}
