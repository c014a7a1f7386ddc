package dblock_test

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/dblock"
)

// modeStmt returns a pattern matching the locking read of key row id in a
// transaction's first statement, ending with clause.
func modeStmt(id int64, clause string) string {
	return modeStmtAfter("", id, clause)
}

// modeStmtAfter is modeStmt after prefix (a SET STATEMENT).
func modeStmtAfter(prefix string, id int64, clause string) string {
	return regexPrefix + `^` + regexp.QuoteMeta(prefix) + `SELECT (?:` + reTag + `)?id, hierarchy(?:, @@session\.\w+)* FROM ` + "`tb_lock`" +
		` WHERE id = ` + strconv.FormatInt(id, 10) + ` AND key_hash = ` + reHash + regexp.QuoteMeta(clause) + `$`
}

// TestSQLSharedStatements pins the shared locking read on both dialects:
// LOCK IN SHARE MODE on MariaDB, FOR SHARE on MySQL; TryLock with a
// lock-wait timeout of zero on MariaDB, with SKIP LOCKED on MySQL.
func TestSQLSharedStatements(t *testing.T) {
	for _, c := range []struct {
		srv    mockServer
		clause string
		try    string // TryLock's statement
		row    func(int64) *sqlmock.Rows
	}{
		{mockMariaDB, " LOCK IN SHARE MODE", modeStmtAfter(qNoWait, 7, " LOCK IN SHARE MODE"), ownRow},
		{mockMySQL, " FOR SHARE", modeStmt(7, " FOR SHARE SKIP LOCKED"), func(id int64) *sqlmock.Rows { return ownRowMySQL(id, 60) }},
	} {
		t.Run(c.srv.comment, func(t *testing.T) {
			m, l, key := firstAcquire(t, c.srv)
			ctx := context.Background()
			m.mock.ExpectQuery(modeStmt(7, c.clause)).WillReturnRows(c.row(7))
			m.mock.ExpectCommit()
			if err := l.Do(ctx, key, nop, dblock.Shared()); err != nil {
				t.Fatalf("shared Do: %v", err)
			}
			m.done(t)
			m.mock.ExpectBegin()
			m.mock.ExpectQuery(c.try).WillReturnRows(c.row(7))
			m.mock.ExpectRollback()
			k, err := l.TryLock(ctx, key, dblock.Shared())
			if err != nil {
				t.Fatalf("shared TryLock: %v", err)
			}
			_ = k.Rollback()
			m.done(t)
		})
	}
}

// TestSQLPermitStatements pins a semaphore's statements on both dialects:
// the permit rows read (and created: slot 0 first, then the others) on the
// side pool before BEGIN, then the locking read of any free permit, by
// primary key, LIMIT 1 FOR UPDATE SKIP LOCKED.
func TestSQLPermitStatements(t *testing.T) {
	const (
		qPermits   = "SELECT id, slot, permits FROM `tb_lock_permit` WHERE key_hash = ? ORDER BY slot"
		qSlot0     = "INSERT IGNORE INTO `tb_lock_permit` (key_hash, slot, permits) VALUES (?, ?, ?)"
		qSlotsRest = "INSERT IGNORE INTO `tb_lock_permit` (key_hash, slot, permits) VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?)" // slots 1, 2 and the spacer
	)
	for _, srv := range []mockServer{mockMariaDB, mockMySQL} {
		t.Run(srv.comment, func(t *testing.T) {
			wait := ""
			if srv == mockMariaDB {
				wait = qInsertWait // at most 1 s behind a gap lock
			}
			m, l, key := firstAcquire(t, srv)
			ctx := context.Background()
			cols := []string{"id", "slot", "permits"}
			// The key's row was looked up by firstAcquire's expectations;
			// then its permits, before BEGIN.
			m.side.mock.ExpectQuery(qPermits).WillReturnRows(sqlmock.NewRows(cols))
			m.side.mock.ExpectExec(wait + qSlot0).WillReturnResult(sqlmock.NewResult(21, 1))
			m.side.mock.ExpectQuery(qPermits).WillReturnRows(sqlmock.NewRows(cols).AddRow(21, 0, 3))
			m.side.mock.ExpectExec(wait + qSlotsRest).WillReturnResult(sqlmock.NewResult(22, 2))
			m.side.mock.ExpectQuery(qPermits).WillReturnRows(sqlmock.NewRows(cols).AddRow(21, 0, 3).AddRow(22, 1, 3).AddRow(23, 2, 3).AddRow(24, 3, 0))
			read := regexPrefix + `^SELECT (?:` + reTag + `)?id, hierarchy(?:, @@session\.\w+)* FROM ` + "`tb_lock_permit`" +
				` FORCE INDEX \(PRIMARY\) WHERE id IN \(21, 22, 23\) AND key_hash = ` + reHash + ` LIMIT 1 FOR UPDATE SKIP LOCKED$`
			row := ownRow(22)
			if srv == mockMySQL {
				row = ownRowMySQL(22, 60)
			}
			m.mock.ExpectQuery(read).WillReturnRows(row)
			m.mock.ExpectCommit()
			if err := l.Do(ctx, key, nop, dblock.Permits(3)); err != nil {
				t.Fatalf("Do with Permits(3): %v", err)
			}
			m.done(t)
			// Another n: refused from the cache, nothing sent.
			if err := l.Do(ctx, key, nop, dblock.Permits(4)); !errors.Is(err, dblock.ErrPermits) {
				t.Fatalf("Permits(4) of a 3-permit key = %v, want ErrPermits", err)
			}
			m.done(t)
		})
	}
}

// TestSQLHierarchySwitchStatements: a locking read whose row says the
// hierarchy is on makes the Locker roll back, read the table's setting on
// the side pool, and start over: the global key's row shared first (one
// locking read of the containers, by primary key), then the key.
func TestSQLHierarchySwitchStatements(t *testing.T) {
	m, l, key := firstAcquire(t, mockMariaDB)
	ctx := context.Background()
	on := sqlmock.NewRows([]string{"id", "hierarchy", "itt", "irtt", "iwtt"}).AddRow(7, 1, 60, 60, 60)
	m.mock.ExpectQuery(modeStmt(7, " FOR UPDATE")).WillReturnRows(on)
	m.mock.ExpectRollback()
	m.side.mock.ExpectQuery("SELECT COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'hierarchy'").
		WillReturnRows(sqlmock.NewRows([]string{"COLUMN_DEFAULT"}).AddRow("1"))
	m.expectLookup(dblock.Global(), 1)
	m.mock.ExpectBegin()
	group := regexPrefix + `^SELECT (?:` + reTag + `)?COUNT\(\*\), MIN\(hierarchy\), MAX\(hierarchy\)(?:, @@session\.\w+)* FROM ` + "`tb_lock`" +
		` FORCE INDEX \(PRIMARY\) WHERE id IN \(1\) AND key_hash IN \(` + reHash + `\) LOCK IN SHARE MODE$`
	m.mock.ExpectQuery(group).WillReturnRows(sqlmock.NewRows([]string{"COUNT(*)", "MIN(hierarchy)", "MAX(hierarchy)", "itt", "irtt", "iwtt"}).AddRow(1, 1, 1, 60, 60, 60))
	m.mock.ExpectQuery(regexPrefix + `^SELECT (?:` + reTag + `)?id, hierarchy FROM ` + "`tb_lock`" + ` WHERE id = 7 AND key_hash = ` + reHash + ` FOR UPDATE$`).
		WillReturnRows(sqlmock.NewRows([]string{"id", "hierarchy"}).AddRow(7, 1))
	m.mock.ExpectCommit()
	if err := l.Do(ctx, key, nop); err != nil {
		t.Fatalf("Do after the switch: %v", err)
	}
	m.done(t)
}
