package dblock_test

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/dblock"
)

// qDataLocks is the start of Holder's read of MySQL's data_locks (no MySQL
// server runs in the tests: its shape is checked here only).
var qDataLocks = regexPrefix + "^" + regexp.QuoteMeta("SELECT d.LOCK_DATA, t.PROCESSLIST_ID, d.LOCK_STATUS = 'GRANTED', d.LOCK_MODE LIKE 'S%', COALESCE(UNIX_TIMESTAMP(x.trx_started), 0), COALESCE(UNIX_TIMESTAMP(x.trx_wait_started), 0) FROM performance_schema.data_locks d JOIN performance_schema.threads t ON t.THREAD_ID = d.THREAD_ID LEFT JOIN information_schema.INNODB_TRX x ON x.trx_id = d.ENGINE_TRANSACTION_ID WHERE d.ENGINE = 'INNODB' AND d.OBJECT_SCHEMA = DATABASE() AND d.OBJECT_NAME = ? AND d.INDEX_NAME = 'PRIMARY' AND d.LOCK_TYPE = 'RECORD' AND d.LOCK_MODE IN ('X', 'S', 'X,REC_NOT_GAP', 'S,REC_NOT_GAP') AND d.LOCK_STATUS IN ('GRANTED', 'WAITING')")

// dataLockCols are the columns of Holder's read of data_locks.
var dataLockCols = []string{"LOCK_DATA", "PROCESSLIST_ID", "granted", "shared", "since", "waited"}

// TestSQLHolderMySQL: on MySQL, Holder reads the holder and the waiters
// from performance_schema.data_locks in one statement (no probe), then
// their sessions and their labels from rows of the server's current run
// (its start from performance_schema.global_status); a key with no
// granted lock is not held.
func TestSQLHolderMySQL(t *testing.T) {
	m := newMocked(t)
	l := m.locker(t, mysqlVersion, mysqlComment, false)
	defer l.Close()
	key := dblock.Resource("order:42")
	m.expectLookup(key, 7)
	m.side.mock.ExpectQuery(qDataLocks+regexp.QuoteMeta(" AND d.LOCK_DATA = ? ORDER BY x.trx_wait_started")+"$").
		WithArgs("tb_lock", "7").
		WillReturnRows(sqlmock.NewRows(dataLockCols).
			AddRow("7", 31, true, false, 1_700_000_000, 0).
			AddRow("7", 32, false, false, 0, 1_700_000_005))
	m.side.mock.ExpectQuery("SELECT ID, USER, COALESCE(HOST, '') FROM information_schema.PROCESSLIST WHERE ID IN (31, 32)").
		WillReturnRows(sqlmock.NewRows([]string{"ID", "USER", "HOST"}).AddRow(31, "app", "10.0.0.1:5000").AddRow(32, "app", "10.0.0.2:5000"))
	m.side.mock.ExpectQuery("SELECT conn_id, label FROM `tb_lock_session` WHERE conn_id IN (?, ?) AND seen >= UTC_TIMESTAMP(6) - INTERVAL (SELECT VARIABLE_VALUE FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Uptime') SECOND - INTERVAL 1 SECOND").
		WithArgs(31, 32).
		WillReturnRows(sqlmock.NewRows([]string{"conn_id", "label"}).AddRow(31, "pod-a"))
	h, err := l.Holder(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if h.ConnID != 31 || h.Label != "pod-a" || h.Host != "10.0.0.1:5000" || h.Since.Unix() != 1_700_000_000 || h.Shared || len(h.SharedWith) != 0 ||
		len(h.Waiters) != 1 || h.Waiters[0].ConnID != 32 || h.Waiters[0].Label != "" {
		t.Fatalf("Holder = %+v", h)
	}

	m.expectLookup(key, 7)
	m.side.mock.ExpectQuery(qDataLocks + ".*").WillReturnRows(sqlmock.NewRows(dataLockCols))
	if _, err := l.Holder(context.Background(), key); !errors.Is(err, dblock.ErrNotHeld) {
		t.Fatalf("Holder of a key without a granted lock = %v, want ErrNotHeld", err)
	}
	m.done(t)
}

// TestSQLHolderMySQLShared: on MySQL, every shared holder of a key is in
// data_locks with its own transaction: Holder reports the one whose
// transaction began first, the others in SharedWith, and the exclusive
// request queued behind them as a waiter.
func TestSQLHolderMySQLShared(t *testing.T) {
	m := newMocked(t)
	l := m.locker(t, mysqlVersion, mysqlComment, false)
	defer l.Close()
	key := dblock.Resource("doc:1")
	m.expectLookup(key, 9)
	m.side.mock.ExpectQuery(qDataLocks+regexp.QuoteMeta(" AND d.LOCK_DATA = ? ORDER BY x.trx_wait_started")+"$").
		WithArgs("tb_lock", "9").
		WillReturnRows(sqlmock.NewRows(dataLockCols).
			AddRow("9", 42, true, true, 1_700_000_010, 0).
			AddRow("9", 41, true, true, 1_700_000_000, 0).
			AddRow("9", 43, true, true, 1_700_000_010, 0).
			AddRow("9", 44, false, false, 0, 1_700_000_020))
	m.side.mock.ExpectQuery("SELECT ID, USER, COALESCE(HOST, '') FROM information_schema.PROCESSLIST WHERE ID IN (41, 42, 43, 44)").
		WillReturnRows(sqlmock.NewRows([]string{"ID", "USER", "HOST"}).AddRow(41, "app", "h1").AddRow(42, "app", "h2").AddRow(43, "app", "h3").AddRow(44, "app", "h4"))
	m.side.mock.ExpectQuery("SELECT conn_id, label FROM `tb_lock_session` WHERE conn_id IN (?, ?, ?, ?) AND seen >= UTC_TIMESTAMP(6) - INTERVAL (SELECT VARIABLE_VALUE FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Uptime') SECOND - INTERVAL 1 SECOND").
		WithArgs(41, 42, 43, 44).
		WillReturnRows(sqlmock.NewRows([]string{"conn_id", "label"}))
	h, err := l.Holder(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Shared || h.ConnID != 41 || h.Since.Unix() != 1_700_000_000 || len(h.SharedWith) != 2 || h.SharedWith[0].ConnID != 42 || h.SharedWith[1].ConnID != 43 ||
		len(h.Waiters) != 1 || h.Waiters[0].ConnID != 44 {
		t.Fatalf("Holder = %+v, want 41 first (earliest), shared with 42 and 43, waiter 44", h)
	}
	m.done(t)
}
