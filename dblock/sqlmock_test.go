package dblock_test

// SQL shape: these tests pin the statements and round trips the library
// sends, on go-sqlmock instead of a server. Behaviour is tested against the
// real server in the other files.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

// Server identities the mock answers New's detection with.
const (
	mariaVersion = "10.11.19-MariaDB-0+deb12u1"
	mariaComment = "Debian 12"
	mysqlVersion = "8.0.36"
	mysqlComment = "MySQL Community Server - GPL"
)

// The statements of the default table, as the library must send them.
const (
	qDetect = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', 'read_only', 'super_read_only', 'wsrep_on', 'innodb_snapshot_isolation', " +
		"'innodb_rollback_on_timeout', 'hostname', 'port')"
	qSchema     = "SELECT DATABASE(), @@SESSION.innodb_lock_wait_timeout"
	qAutocommit = "SELECT @@autocommit, DATABASE()"
	qLookup     = "SELECT id FROM `tb_lock` WHERE key_hash = ?"
	qExists     = "SELECT 1 FROM `tb_lock` WHERE id = ? AND key_hash = ?"
	qInsert     = "INSERT IGNORE INTO `tb_lock` (key_hash, resource, operation, method, user_id, is_global) VALUES (?, ?, ?, ?, ?, ?)"
	qInsertWait = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR " // MariaDB: the insert waits at most 1 s for a holder
	qNoWait     = "SET STATEMENT innodb_lock_wait_timeout=0 FOR "   // MariaDB: a locking read that does not wait
	qProcesses  = "SELECT ID, QUERY_ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?"
	qProcMySQL  = "SELECT ID, 0 FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?"
	reTag       = `/\*txlock:[0-9a-f]{12}-[0-9]+\*/ `
	reHash      = `X'[0-9a-f]{64}'`
	regexPrefix = "re:"
)

// queryLog records every statement the matcher sees.
type queryLog struct {
	mu  sync.Mutex
	all []string
}

func (q *queryLog) add(s string) {
	q.mu.Lock()
	q.all = append(q.all, s)
	q.mu.Unlock()
}

func (q *queryLog) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.all)
}

// matcher compares SQL exactly (whitespace-insensitive, as
// sqlmock.QueryMatcherEqual), or with a regular expression when the
// expectation starts with "re:"; it logs what it is given.
func matcher(log *queryLog) sqlmock.QueryMatcher {
	return sqlmock.QueryMatcherFunc(func(expected, actual string) error {
		if strings.Contains(actual, "INTO `tb_lock_session`") {
			// A label write, queued by an acquisition and sent from the
			// side pool by a goroutine of its own: not part of any
			// expected sequence, refused (the Locker then pauses them).
			return errors.New("label writes are not part of the mocked sequences")
		}
		log.add(actual)
		if re, ok := strings.CutPrefix(expected, regexPrefix); ok {
			if regexp.MustCompile(re).MatchString(actual) {
				return nil
			}
			return fmt.Errorf("actual sql %q does not match %q", actual, re)
		}
		return sqlmock.QueryMatcherEqual.Match(expected, actual)
	})
}

// mockPool is a *sql.DB on go-sqlmock, with the log of what it was sent.
type mockPool struct {
	sqlDB *sql.DB
	mock  sqlmock.Sqlmock
	log   *queryLog
}

func newMockPool(t *testing.T) mockPool {
	t.Helper()
	log := &queryLog{}
	sqlDB, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(matcher(log)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	return mockPool{sqlDB: sqlDB, mock: mock, log: log}
}

// mocked is a gorm handle on go-sqlmock (the lock transactions' pool) and
// a second mock for the Locker's side pool (SideDB): gorm opened on an
// existing connection has no DSN to open a side pool from.
type mocked struct {
	mockPool
	db   *gorm.DB
	side mockPool
}

// newMocked opens gorm on a fresh sqlmock, the way an application that
// builds gorm on an existing connection does, with a side pool mock.
func newMocked(t *testing.T) mocked {
	t.Helper()
	verifyNoGoroutineLeak(t)
	p := newMockPool(t)
	db, err := gorm.Open(mysql.New(mysql.Config{Conn: p.sqlDB, SkipInitializeWithVersion: true}),
		&gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	return mocked{mockPool: p, db: db, side: newMockPool(t)}
}

// expectDetect expects New's server detection: its global variables
// (version, flavour, topology) and the schema, of a stand-alone read-write
// server.
func (m mocked) expectDetect(version, comment string, snapshotVar bool) {
	m.expectDetectWith(version, comment, snapshotVar, nil)
}

// expectDetectWith expects New's server detection with extra global
// variables (name, value pairs).
func (m mocked) expectDetectWith(version, comment string, snapshotVar bool, vars [][2]string) {
	rows := sqlmock.NewRows([]string{"Variable_name", "Value"})
	if snapshotVar {
		rows.AddRow("innodb_snapshot_isolation", "OFF")
	}
	rows.AddRow("read_only", "OFF")
	for _, v := range vars {
		rows.AddRow(v[0], v[1])
	}
	rows.AddRow("version", version).AddRow("version_comment", comment)
	m.mock.ExpectQuery(qDetect).WillReturnRows(rows)
	m.mock.ExpectQuery(qSchema).WillReturnRows(sqlmock.NewRows([]string{"DATABASE()", "@@SESSION.innodb_lock_wait_timeout"}).AddRow("test", 50))
}

// expectSideCheck expects New's check that the side pool runs in
// autocommit, after the detection, when New gets that far.
func (m mocked) expectSideCheck() {
	m.side.mock.ExpectQuery(qAutocommit).WillReturnRows(sqlmock.NewRows([]string{"@@autocommit", "DATABASE()"}).AddRow(1, "test"))
}

// newLocker returns a Locker on the mock, with its side pool.
func (m mocked) newLocker(opts ...dblock.Option) (*dblock.Locker, error) {
	return dblock.New(m.db, append([]dblock.Option{dblock.SideDB(m.side.sqlDB)}, opts...)...)
}

// locker expects the detection of a server and returns a Locker on it.
func (m mocked) locker(t *testing.T, version, comment string, snapshotVar bool, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	m.expectDetect(version, comment, snapshotVar)
	m.expectSideCheck()
	l, err := m.newLocker(opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

// expectLookup expects the row lookup of key on the side pool, answering
// id.
func (m mocked) expectLookup(key dblock.Key, id int64) {
	h := lockkey.Fields(key).Hash()
	m.side.mock.ExpectQuery(qLookup).WithArgs(h[:]).WillReturnRows(sqlmock.NewRows([]string{"id"}).AddRow(id))
}

// A mockServer is a server identity the mock answers New's detection
// with, and its dialect's session variable that bounds an idle
// transaction.
type mockServer struct {
	version, comment string
	snapshotVar      bool   // MariaDB's innodb_snapshot_isolation exists
	lease60          string // the statement that sets the default lease on a session
}

var (
	mockMariaDB = mockServer{mariaVersion, mariaComment, true, qLease60}
	mockMySQL   = mockServer{mysqlVersion, mysqlComment, false, "SET SESSION wait_timeout = 60"}
)

// firstAcquire returns a mock of srv with a Locker on it, closed when the
// test ends, and expects the first acquisition of the key it returns
// (order:42, row 7) up to BEGIN: the lookup of its row on the side pool,
// the lease on the connection the Locker has not used yet, then BEGIN.
func firstAcquire(t *testing.T, srv mockServer) (mocked, *dblock.Locker, dblock.Key) {
	t.Helper()
	m := newMocked(t)
	l := m.locker(t, srv.version, srv.comment, srv.snapshotVar)
	t.Cleanup(func() { _ = l.Close() })
	key := dblock.Resource("order:42")
	m.expectLookup(key, 7)
	m.expectFirstBegin(srv)
	return m, l, key
}

// expectFirstBegin expects, on a connection the Locker has not used yet,
// the lease set before BEGIN, so that a grant whose answer is lost does
// not leave the key held for the session's old bound, and the read of its
// id (for its label); then BEGIN.
func (m mocked) expectFirstBegin(srv mockServer) {
	m.mock.ExpectExec(srv.lease60).WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectQuery("SELECT CONNECTION_ID()").WillReturnRows(sqlmock.NewRows([]string{"CONNECTION_ID()"}).AddRow(31))
	m.mock.ExpectBegin()
}

// done checks that every expectation of both pools was met.
func (m mocked) done(t *testing.T) {
	t.Helper()
	if err := m.mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if err := m.side.mock.ExpectationsWereMet(); err != nil {
		t.Fatalf("side pool: %v", err)
	}
}

// ownRow answers the first locking read of a transaction the Locker
// opened on MariaDB: the row id and the session's three idle bounds (60 s:
// the default lease, already set).
func ownRow(id int64) *sqlmock.Rows { return ownRowSession(id, 60) }

// ownRowSession is ownRow with the session's idle bounds secs.
func ownRowSession(id, secs int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"id", "hierarchy", "itt", "irtt", "iwtt"}).AddRow(id, 0, secs, secs, secs)
}

// ownRowMySQL is ownRow on MySQL: the row id and wait_timeout.
func ownRowMySQL(id, secs int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"id", "hierarchy", "wait_timeout"}).AddRow(id, 0, secs)
}

// callerRow answers a locking read in a caller's transaction on MariaDB:
// the row id and @@in_transaction (1: the transaction is still open).
func callerRow(id int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"id", "hierarchy", "@@in_transaction"}).AddRow(id, 0, 1)
}

// firstCallerRow answers the first locking read in a caller's transaction
// on MariaDB: callerRow and CONNECTION_ID(), whose label the Locker then
// writes from the side pool if the connection is new to it.
func firstCallerRow(id, conn int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"id", "hierarchy", "@@in_transaction", "CONNECTION_ID()"}).AddRow(id, 0, 1, conn)
}

// lockRow answers a locking read in a transaction already holding locks,
// or a caller's: the row id and its hierarchy setting (off).
func lockRow(id int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"id", "hierarchy"}).AddRow(id, 0)
}

// lockStmt returns a pattern matching the locking read of row id, after
// prefix and before suffix (both literal): by id and key hash, with the
// session's idle bound read along in a transaction's first one. Waiting
// statements carry a tag comment (/*txlock:<nonce>-<n>*/) by which one
// that is given up is found in the process list and interrupted; the
// pattern allows it.
func lockStmt(prefix string, id int64, suffix string) string {
	return fmt.Sprintf("%s^%sSELECT (?:%s)?id, hierarchy(?:, @@session\\.\\w+)*(?:, @@in_transaction)?(?:, CONNECTION_ID\\(\\))? FROM `tb_lock` WHERE id = %d AND key_hash = %s FOR UPDATE%s$",
		regexPrefix, regexp.QuoteMeta(prefix), reTag, id, reHash, regexp.QuoteMeta(suffix))
}

// nestedStmt returns a pattern matching the locking read of row id in a
// transaction the Locker opened that holds locks already: its wait is
// bounded by what remains of their lease.
func nestedStmt(id int64) string {
	return fmt.Sprintf("%s^SET STATEMENT max_statement_time=[0-9.]+, innodb_lock_wait_timeout=[0-9]+ FOR SELECT %sid, hierarchy FROM `tb_lock` WHERE id = %d AND key_hash = %s FOR UPDATE$",
		regexPrefix, reTag, id, reHash)
}

// qLease60 and qLease5 set a lease on a MariaDB session: all three idle
// bounds.
const (
	qLease60 = "SET SESSION idle_transaction_timeout = 60, idle_readonly_transaction_timeout = 60, idle_write_transaction_timeout = 60"
	qLease5  = "SET SESSION idle_transaction_timeout = 5, idle_readonly_transaction_timeout = 5, idle_write_transaction_timeout = 5"
)

// nop is a fn that does nothing.
func nop(context.Context, *gorm.DB) error { return nil }

// TestSQLNestedAcquireSendsNoSQL: a nested acquire of a held key in a
// transaction the Locker opened sends nothing to the server; in a caller's
// own transaction it sends one locking read, granted at once, which fails
// if the transaction ended behind the context's back.
func TestSQLNestedAcquireSendsNoSQL(t *testing.T) {
	t.Run("Do in Do", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit()

		nested := 0
		inner := func(ctx context.Context) error {
			return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error { nested++; return nil })
		}
		middle := func(ctx context.Context) error {
			return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
				nested++
				return inner(ctx)
			}, dblock.NoWait())
		}
		before := m.log.len() + m.side.log.len()
		err := l.Do(context.Background(), key, func(ctx context.Context, tx *gorm.DB) error {
			before = m.log.len() + m.side.log.len()
			if err := middle(ctx); err != nil {
				return err
			}
			if err := l.Do(ctx, key, nop, dblock.WaitTimeout(time.Second)); err != nil {
				return err
			}
			if n := m.log.len() + m.side.log.len(); n != before {
				t.Errorf("the nested acquisitions sent %d statements", n-before)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		if nested != 2 {
			t.Errorf("nested fns ran %d times, want 2", nested)
		}
		m.done(t)
	})
	t.Run("LockTx remembered by WithTx", func(t *testing.T) {
		m := newMocked(t)
		l := m.locker(t, mariaVersion, mariaComment, false)
		defer l.Close()
		key := dblock.Resource("order:42")
		m.mock.ExpectBegin()
		m.expectLookup(key, 7)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(firstCallerRow(7, 31))
		m.mock.ExpectQuery(lockStmt(qNoWait, 7, "")).WillReturnRows(callerRow(7))
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(callerRow(7))
		m.mock.ExpectCommit()

		tx := m.db.Begin()
		ctx := dblock.WithTx(context.Background(), tx)
		if err := l.LockTx(ctx, tx, key); err != nil {
			t.Fatalf("LockTx: %v", err)
		}
		before := m.log.len() + m.side.log.len()
		if err := l.Do(ctx, key, nop, dblock.NoWait()); err != nil {
			t.Fatalf("Do after LockTx: %v", err)
		}
		if err := l.LockTx(ctx, tx, key); err != nil {
			t.Fatalf("second LockTx: %v", err)
		}
		if n := m.log.len() + m.side.log.len(); n != before+2 {
			t.Errorf("two acquisitions of a key the caller's transaction holds sent %d statements, want 2 (one locking read each)", n-before)
		}
		if err := tx.Commit().Error; err != nil {
			t.Fatal(err)
		}
		m.done(t)
	})
}

// TestSQLUncontendedPath pins the statements of an uncontended acquisition:
// the first one looks the row up (autocommit, on the side pool) and sets
// the lease on the connection, before BEGIN; the locking read also reads
// the session's idle bounds, set again when they differ (a connection
// another Locker or the caller configured otherwise); later ones use the
// cached id: BEGIN, the locking read, COMMIT, 3 round trips.
func TestSQLUncontendedPath(t *testing.T) {
	m, l, key := firstAcquire(t, mockMariaDB)
	ctx := context.Background()

	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
	m.mock.ExpectCommit()
	if err := l.Do(ctx, key, nop); err != nil {
		t.Fatalf("first Do: %v", err)
	}
	m.done(t)

	before, sideBefore := m.log.len(), m.side.log.len()
	m.mock.ExpectBegin()
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
	m.mock.ExpectCommit()
	if err := l.Do(ctx, key, nop); err != nil {
		t.Fatalf("second Do: %v", err)
	}
	m.done(t)
	if n := m.log.len() - before; n != 1 {
		t.Errorf("second Do sent %d queries besides BEGIN and COMMIT, want 1 (the locking read)", n)
	}
	if n := m.side.log.len() - sideBefore; n != 0 {
		t.Errorf("second Do sent %d queries on the side pool, want 0", n)
	}

	// Lock then Rollback: BEGIN, the locking read, ROLLBACK.
	m.mock.ExpectBegin()
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
	m.mock.ExpectRollback()
	k, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := k.Rollback(); err != nil { // idempotent: no second ROLLBACK
		t.Fatal(err)
	}
	m.done(t)

	// Another lease: set before BEGIN, once.
	m.mock.ExpectExec(qLease5).WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectBegin()
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRowSession(7, 5))
	m.mock.ExpectCommit()
	m.mock.ExpectBegin()
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRowSession(7, 5))
	m.mock.ExpectCommit()
	for range 2 {
		if err := l.Do(ctx, key, nop, dblock.Lease(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	m.done(t)

	// Someone else set the session's bound behind the Locker's back
	// (another Locker on the pool, the caller): the locking read shows it,
	// and it is set again right after the grant.
	m.mock.ExpectBegin()
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRowSession(7, 2))
	m.mock.ExpectExec(qLease5).WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectCommit()
	if err := l.Do(ctx, key, nop, dblock.Lease(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	m.done(t)
}

// TestSQLRowCreation pins the creation of a missing row: a lookup that
// finds nothing, INSERT IGNORE in autocommit on the side pool (before
// BEGIN; on MariaDB with a 1 s lock-wait bound, in case a holder's
// transaction locked the row's key), the id from LastInsertId; or, when a
// concurrent creator won, a second lookup.
func TestSQLRowCreation(t *testing.T) {
	for _, c := range []struct {
		name   string
		mysql  bool
		key    dblock.Key
		args   []driver.Value // after key_hash
		result driver.Result
		relook bool
	}{
		{"composite", false, dblock.Key{User: "u-7", Resource: "order:42", Operation: "refund", Method: "OrderService.Refund"},
			[]driver.Value{"order:42", "refund", "OrderService.Refund", "u-7", int64(0)}, sqlmock.NewResult(7, 1), false},
		{"global", false, dblock.Global(), []driver.Value{"", "", "", "", int64(1)}, sqlmock.NewResult(7, 1), false},
		{"concurrent creator", false, dblock.Resource("order:42"), []driver.Value{"order:42", "", "", "", int64(0)}, sqlmock.NewResult(0, 0), true},
		{"MySQL", true, dblock.Resource("order:42"), []driver.Value{"order:42", "", "", "", int64(0)}, sqlmock.NewResult(7, 1), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMocked(t)
			insert := qInsertWait + qInsert
			srv := mockMariaDB
			if c.mysql {
				insert, srv = qInsert, mockMySQL
			}
			l := m.locker(t, srv.version, srv.comment, srv.snapshotVar)
			defer l.Close()
			h := lockkey.Fields(c.key).Hash()
			m.side.mock.ExpectQuery(qLookup).WithArgs(h[:]).WillReturnRows(sqlmock.NewRows([]string{"id"}))
			m.side.mock.ExpectExec(insert).WithArgs(append([]driver.Value{h[:]}, c.args...)...).WillReturnResult(c.result)
			if c.relook {
				m.expectLookup(c.key, 7)
			}
			m.expectFirstBegin(srv)
			if c.mysql {
				m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRowMySQL(7, 60))
			} else {
				m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
			}
			m.mock.ExpectCommit()
			if err := l.Do(context.Background(), c.key, nop); err != nil {
				t.Fatalf("Do: %v", err)
			}
			m.done(t)
		})
	}
}

// TestSQLWaitStatements pins the locking read of each wait mode on MariaDB:
// a lock-wait timeout of zero for not waiting, and the per-statement
// timeouts of a bounded wait.
func TestSQLWaitStatements(t *testing.T) {
	for _, c := range []struct {
		name     string
		deadline bool
		opts     []dblock.LockOption
		want     string
	}{
		{"default", false, nil, lockStmt("", 7, "")},
		{"NoWait", false, []dblock.LockOption{dblock.NoWait()}, lockStmt(qNoWait, 7, "")},
		{"WaitTimeout(300ms)", false, []dblock.LockOption{dblock.WaitTimeout(300 * time.Millisecond)},
			regexPrefix + `^SET STATEMENT max_statement_time=0\.[0-9]{6}, innodb_lock_wait_timeout=2 FOR SELECT ` + reTag + "id, hierarchy, @@session\\.idle_transaction_timeout, @@session\\.idle_readonly_transaction_timeout, @@session\\.idle_write_transaction_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$"},
		{"WaitTimeout(1.5s)", false, []dblock.LockOption{dblock.WaitTimeout(1500 * time.Millisecond)},
			regexPrefix + `^SET STATEMENT max_statement_time=1\.[0-9]{6}, innodb_lock_wait_timeout=3 FOR SELECT ` + reTag + "id, hierarchy, @@session\\.idle_transaction_timeout, @@session\\.idle_readonly_transaction_timeout, @@session\\.idle_write_transaction_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$"},
		{"WaitTimeout then NoWait", false, []dblock.LockOption{dblock.WaitTimeout(time.Second), dblock.NoWait()}, lockStmt(qNoWait, 7, "")},
		{"context deadline", true, nil,
			regexPrefix + `^SET STATEMENT max_statement_time=1\.[0-9]{6}, innodb_lock_wait_timeout=3 FOR SELECT ` + reTag + "id, hierarchy, @@session\\.idle_transaction_timeout, @@session\\.idle_readonly_transaction_timeout, @@session\\.idle_write_transaction_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$"},
		{"context deadline under WaitTimeout(300ms)", true, []dblock.LockOption{dblock.WaitTimeout(300 * time.Millisecond)},
			regexPrefix + `^SET STATEMENT max_statement_time=0\.[0-9]{6}, innodb_lock_wait_timeout=2 FOR SELECT ` + reTag + "id, hierarchy, @@session\\.idle_transaction_timeout, @@session\\.idle_readonly_transaction_timeout, @@session\\.idle_write_transaction_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.deadline {
				// Under a deadline 2 s away, a wait is bounded by what
				// remains of it, less a margin: between 1 and 2 s however
				// slow the machine.
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
			}
			m, l, key := firstAcquire(t, mockMariaDB)
			m.mock.ExpectQuery(c.want).WillReturnRows(ownRow(7))
			m.mock.ExpectCommit()
			if err := l.Do(ctx, key, nop, c.opts...); err != nil {
				t.Fatalf("Do: %v", err)
			}
			m.done(t)
		})
	}
	t.Run("TryLock of a held key", func(t *testing.T) {
		// The server answers a held row with 1205 at once (statement
		// rolled back, nothing else): no look outside the transaction.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt(qNoWait, 7, "")).WillReturnError(&gomysql.MySQLError{Number: 1205, Message: "Lock wait timeout exceeded; try restarting transaction"})
		m.mock.ExpectRollback()
		_, err := l.TryLock(context.Background(), key)
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Fatalf("TryLock = %v, want ErrNotAcquired", err)
		}
		mustContain(t, err, "is held")
		m.done(t)
	})
	t.Run("LockTx of a held key in a caller's transaction", func(t *testing.T) {
		// The refusal's 1205 rolls back the statement only on a server
		// with innodb_rollback_on_timeout OFF; the caller's transaction
		// is asked whether it is still open, in case the server has it
		// ON since the Locker was created: two round trips.
		m := newMocked(t)
		l := m.locker(t, mariaVersion, mariaComment, false)
		defer l.Close()
		key := dblock.Resource("order:42")
		m.mock.ExpectBegin()
		m.expectLookup(key, 7)
		m.mock.ExpectQuery(lockStmt(qNoWait, 7, "")).WillReturnError(&gomysql.MySQLError{Number: 1205, Message: "Lock wait timeout exceeded; try restarting transaction"})
		m.mock.ExpectQuery("SELECT @@in_transaction, @@GLOBAL.innodb_rollback_on_timeout").WillReturnRows(sqlmock.NewRows([]string{"@@in_transaction", "@@GLOBAL.innodb_rollback_on_timeout"}).AddRow(1, 0))
		m.mock.ExpectRollback()
		tx := m.db.Begin()
		err := l.LockTx(context.Background(), tx, key, dblock.NoWait())
		if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("LockTx = %v, want ErrNotAcquired only", err)
		}
		tx.Rollback()
		m.done(t)
	})
}

// TestSQLErrorMapping: the server errors of the locking read map to the
// library's sentinels, and the *mysql.MySQLError stays reachable.
func TestSQLErrorMapping(t *testing.T) {
	sentinels := []error{dblock.ErrNotAcquired, dblock.ErrDeadlock, dblock.ErrTableMissing, dblock.ErrLockLost, dblock.ErrInvalidKey, dblock.ErrReadOnly, dblock.ErrNotPrimary}
	for _, c := range []struct {
		number uint16
		want   error
	}{
		{1205, dblock.ErrNotAcquired}, // lock-wait timeout
		{1969, dblock.ErrNotAcquired}, // MariaDB max_statement_time
		{3572, dblock.ErrNotAcquired}, // MySQL NOWAIT
		{3024, dblock.ErrNotAcquired}, // MySQL max_execution_time
		{1317, dblock.ErrNotAcquired}, // query interrupted (MySQL bounded wait)
		{1213, dblock.ErrDeadlock},
		{1146, dblock.ErrTableMissing},
		{1290, dblock.ErrReadOnly}, // read_only: MariaDB refuses the locking read to accounts without READ_ONLY ADMIN
	} {
		t.Run(fmt.Sprint(c.number), func(t *testing.T) {
			m, l, key := firstAcquire(t, mockMariaDB)
			m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnError(&gomysql.MySQLError{Number: c.number, Message: "mocked"})
			m.mock.ExpectRollback()
			err := l.Do(context.Background(), key, fnMustNotRun(t))
			checkMapped(t, err, c.want, c.number, sentinels)
			m.done(t)
		})
	}
	t.Run("1146 on the row lookup", func(t *testing.T) {
		m := newMocked(t)
		l := m.locker(t, mariaVersion, mariaComment, true)
		defer l.Close()
		key := dblock.Resource("order:42")
		h := lockkey.Fields(key).Hash()
		m.side.mock.ExpectQuery(qLookup).WithArgs(h[:]).WillReturnError(&gomysql.MySQLError{Number: 1146, Message: "Table 'test.tb_lock' doesn't exist"})
		_, err := l.Lock(context.Background(), key)
		checkMapped(t, err, dblock.ErrTableMissing, 1146, sentinels)
		mustContain(t, err, "migrations")
		m.done(t)
	})
	t.Run("1047 off Galera", func(t *testing.T) {
		// ER_UNKNOWN_COM_ERROR: not a Galera node's state.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnError(&gomysql.MySQLError{Number: 1047, Message: "Unknown command"})
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t))
		if errors.Is(err, dblock.ErrNotPrimary) || mysqlNumber(t, err) != 1047 {
			t.Errorf("Do = %v, want the server's 1047, not ErrNotPrimary", err)
		}
		m.done(t)
	})
	t.Run("deadlock returned by fn", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, func(context.Context, *gorm.DB) error {
			return fmt.Errorf("saving: %w", &gomysql.MySQLError{Number: 1213, Message: "Deadlock found"})
		})
		checkMapped(t, err, dblock.ErrDeadlock, 1213, sentinels)
		m.done(t)
	})
	t.Run("deadlock on COMMIT", func(t *testing.T) {
		// The transaction did not commit (on Galera: a certification
		// failure): the lock is lost, and running again is safe.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit().WillReturnError(&gomysql.MySQLError{Number: 1213, Message: "Deadlock found"})
		err := l.Do(context.Background(), key, nop)
		checkMapped(t, err, dblock.ErrDeadlock, 1213, []error{dblock.ErrNotAcquired, dblock.ErrTableMissing, dblock.ErrInvalidKey, dblock.ErrCommitUnknown})
		if !errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("Do = %v, want ErrLockLost too", err)
		}
		m.done(t)
	})
	t.Run("connection found dead before COMMIT", func(t *testing.T) {
		// driver.ErrBadConn: the driver wrote nothing. Not committed, for
		// certain.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit().WillReturnError(driver.ErrBadConn)
		err := l.Do(context.Background(), key, nop)
		if !errors.Is(err, dblock.ErrLockLost) || errors.Is(err, dblock.ErrCommitUnknown) {
			t.Fatalf("Do = %v, want ErrLockLost and not ErrCommitUnknown", err)
		}
		mustContain(t, err, "not committed")
		m.done(t)
	})
	t.Run("connection lost during COMMIT", func(t *testing.T) {
		// The COMMIT may have reached the server: the outcome is unknown.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit().WillReturnError(gomysql.ErrInvalidConn)
		err := l.Do(context.Background(), key, nop)
		if !errors.Is(err, dblock.ErrCommitUnknown) || !errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("Do = %v, want ErrCommitUnknown and ErrLockLost", err)
		}
		if strings.Contains(err.Error(), "not committed") {
			t.Errorf("Do = %v: an unknown outcome must not say not committed", err)
		}
		m.done(t)
	})
}

// TestSQLDeadlockInFn: a statement of fn that the server answers with a
// deadlock (1213: it rolled the whole transaction back) makes Do return
// ErrDeadlock, the error Retry acts on, and fn's later statements are not
// sent: they would run in autocommit, outside any lock.
func TestSQLDeadlockInFn(t *testing.T) {
	m, l, key := firstAcquire(t, mockMariaDB)
	m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
	m.mock.ExpectExec("UPDATE orders SET status = 'paid' WHERE id = 42").
		WillReturnError(&gomysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock"})
	m.mock.ExpectRollback()
	var later error
	err := l.Do(context.Background(), key, func(ctx context.Context, tx *gorm.DB) error {
		err := tx.Exec("UPDATE orders SET status = 'paid' WHERE id = 42").Error
		later = tx.Exec("UPDATE orders SET status = 'shipped' WHERE id = 42").Error
		return err
	})
	if !errors.Is(err, dblock.ErrDeadlock) {
		t.Fatalf("Do = %v, want ErrDeadlock", err)
	}
	if mysqlNumber(t, err) != 1213 {
		t.Errorf("Do = %v, want the server's 1213", err)
	}
	if !errors.Is(later, dblock.ErrLockLost) {
		t.Errorf("a statement after the deadlock = %v, want ErrLockLost without being sent", later)
	}
	waitReturned(m)
	m.done(t)
}

// checkMapped checks that err is want (and no other sentinel), and wraps a
// *mysql.MySQLError numbered number.
func checkMapped(t *testing.T, err, want error, number uint16, sentinels []error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
	for _, s := range sentinels {
		if s != want && errors.Is(err, s) {
			t.Errorf("error %v is also %v", err, s)
		}
	}
	if n := mysqlNumber(t, err); n != number {
		t.Errorf("MySQLError.Number = %d, want %d", n, number)
	}
}

// patternArg matches the LIKE pattern that finds a tagged waiting statement.
type patternArg struct{}

func (patternArg) Match(v driver.Value) bool {
	s, ok := v.(string)
	return ok && regexp.MustCompile(`^%`+reTag[:len(reTag)-1]+`%$`).MatchString(s)
}

// TestSQLMySQLDialect: on MySQL (detected from the version), not waiting is
// the same statement, a bounded wait has no SET STATEMENT (a client timer
// interrupts the tagged statement with KILL QUERY from the side pool), and
// the session's idle bound is wait_timeout.
func TestSQLMySQLDialect(t *testing.T) {
	t.Run("NoWait", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMySQL)
		m.mock.ExpectQuery(lockStmt("", 7, " SKIP LOCKED")).WillReturnRows(sqlmock.NewRows([]string{"id", "hierarchy", "itt", "irtt", "iwtt"}))
		h := lockkey.Fields(key).Hash()
		m.side.mock.ExpectQuery(qExists).WithArgs(int64(7), h[:]).WillReturnRows(sqlmock.NewRows([]string{"1"}).AddRow(1))
		m.mock.ExpectRollback()
		_, err := l.TryLock(context.Background(), key)
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Fatalf("TryLock = %v, want ErrNotAcquired", err)
		}
		m.done(t)
	})
	t.Run("WaitTimeout granted, lease set", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMySQL)
		m.mock.ExpectQuery(regexPrefix + "^SELECT " + reTag + "id, hierarchy, @@session\\.wait_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$").
			WillReturnRows(ownRowMySQL(7, 28800))
		m.mock.ExpectExec("SET SESSION wait_timeout = 60").WillReturnResult(sqlmock.NewResult(0, 0))
		m.mock.ExpectCommit()
		if err := l.Do(context.Background(), key, nop, dblock.WaitTimeout(300*time.Millisecond)); err != nil {
			t.Fatalf("Do: %v", err)
		}
		m.done(t)
	})
	t.Run("WaitTimeout runs out", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMySQL)
		// The server would interrupt the waiting statement when KILL QUERY
		// arrives; the mock answers 1317 after a delay longer than the wait.
		m.mock.ExpectQuery(regexPrefix + "^SELECT " + reTag + "id, hierarchy, @@session\\.wait_timeout FROM `tb_lock` WHERE id = 7 AND key_hash = " + reHash + " FOR UPDATE$").
			WillDelayFor(700 * time.Millisecond).
			WillReturnError(&gomysql.MySQLError{Number: 1317, Message: "Query execution was interrupted"})
		m.mock.ExpectRollback()
		m.side.mock.ExpectQuery(qProcMySQL).WithArgs(patternArg{}).WillReturnRows(sqlmock.NewRows([]string{"ID", "0"}).AddRow(42, 0))
		m.side.mock.ExpectExec("KILL QUERY 42").WillReturnResult(sqlmock.NewResult(0, 0))
		_, err := l.Lock(context.Background(), key, dblock.WaitTimeout(300*time.Millisecond))
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Fatalf("Lock = %v, want ErrNotAcquired", err)
		}
		mustContain(t, err, "WaitTimeout(300ms)")
		m.done(t) // the KILL was sent while the statement waited
	})
}

// TestSQLStaleSnapshotCheck pins the check of a lock joined into a
// transaction that may have read before it (here a second key of a Do):
// the key's fencing counter is bumped on the side pool, then read back in
// the transaction with a locking read under innodb_snapshot_isolation,
// which fails if the transaction's snapshot predates the bump. Nothing is
// sent for it when the server lacks the variable, or with NoPriorReads.
func TestSQLStaleSnapshotCheck(t *testing.T) {
	a, b := dblock.Resource("a"), dblock.Resource("b")
	for _, c := range []struct {
		name        string
		snapshotVar bool
		opts        []dblock.LockOption
		check       bool
	}{
		{"MariaDB", true, nil, true},
		{"MariaDB, NoPriorReads", true, []dblock.LockOption{dblock.NoPriorReads()}, false},
		{"without the variable", false, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMocked(t)
			l := m.locker(t, mariaVersion, mariaComment, c.snapshotVar)
			defer l.Close()
			m.expectLookup(a, 7)
			m.expectFirstBegin(mockMariaDB)
			m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
			m.expectLookup(b, 8)
			m.mock.ExpectQuery(nestedStmt(8)).WillReturnRows(lockRow(8))
			if c.check {
				hb := lockkey.Fields(b).Hash()
				m.side.mock.ExpectExec(qBump).WithArgs(hb[:]).WillReturnResult(sqlmock.NewResult(5, 1))
				m.mock.ExpectQuery(qFenceCheck).WillReturnRows(sqlmock.NewRows([]string{"key_hash", "token"}).AddRow(hb[:], 5))
			}
			m.mock.ExpectCommit()
			var token int64
			err := l.Do(context.Background(), a, func(ctx context.Context, tx *gorm.DB) error {
				return l.Do(ctx, b, func(ctx context.Context, _ *gorm.DB) error {
					token, _ = dblock.TokenFrom(ctx, b)
					return nil
				}, c.opts...)
			})
			if err != nil {
				t.Fatalf("Do = %v", err)
			}
			if c.check && token != 5 {
				t.Errorf("TokenFrom after the check = %d, want 5 (the check's token)", token)
			}
			m.done(t)
		})
	}
	t.Run("stale", func(t *testing.T) {
		m := newMocked(t)
		l := m.locker(t, mariaVersion, mariaComment, true)
		defer l.Close()
		m.expectLookup(a, 7)
		m.expectFirstBegin(mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.expectLookup(b, 8)
		m.mock.ExpectQuery(nestedStmt(8)).WillReturnRows(lockRow(8))
		m.side.mock.ExpectExec(qBump).WillReturnResult(sqlmock.NewResult(5, 1))
		m.mock.ExpectQuery(qFenceCheck).WillReturnError(&gomysql.MySQLError{Number: 1020, Message: "Record has changed since last read"})
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), a, func(ctx context.Context, tx *gorm.DB) error {
			return l.Do(ctx, b, fnMustNotRun(t))
		})
		if !errors.Is(err, dblock.ErrStaleSnapshot) || !errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("Do = %v, want ErrStaleSnapshot and ErrLockLost (the server rolled the transaction back)", err)
		}
		waitReturned(m)
		m.done(t)
	})
}

// The fencing statements: the bump, on the side pool, and the read back in
// the transaction.
const (
	qBump       = regexPrefix + "^SET STATEMENT innodb_lock_wait_timeout = 1 FOR INSERT INTO `tb_lock_fence` \\(key_hash, token\\) VALUES \\(\\?, LAST_INSERT_ID\\(1\\)\\) ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID\\(token \\+ 1\\)$"
	qFenceRead  = regexPrefix + "^SELECT key_hash, token FROM `tb_lock_fence` WHERE key_hash IN \\(" + reHash + "\\) LOCK IN SHARE MODE$"
	qFenceCheck = regexPrefix + "^SET STATEMENT innodb_snapshot_isolation = ON FOR SELECT key_hash, token FROM `tb_lock_fence` WHERE key_hash IN \\(" + reHash + "\\) LOCK IN SHARE MODE$"
)

// TestSQLCancelledContextSendsNothing: an acquisition with a cancelled
// context fails with context.Canceled before any statement is sent.
func TestSQLCancelledContextSendsNothing(t *testing.T) {
	m := newMocked(t)
	l := m.locker(t, mariaVersion, mariaComment, true)
	defer l.Close()
	m.done(t)
	before := m.log.len() + m.side.log.len()
	// A trap: any statement would be shown to the matcher.
	m.mock.ExpectQuery(regexPrefix + "^TRAP$")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	key := dblock.Resource("order:42")
	for name, err := range acquireAll(ctx, l, m.db, key, nop) {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s = %v, want context.Canceled", name, err)
		}
	}
	if n := m.log.len() + m.side.log.len(); n != before {
		t.Errorf("%d statements sent with a cancelled context", n-before)
	}
}

// TestSQLContextDeadlineRace: an acquisition bounded by the context's
// deadline asks the server to stop waiting 10 ms before it
// (deadlineMargin). When the server's answer comes later than the
// deadline (a loaded machine, a slow network), the library interrupts the
// statement and, if the server does not answer that either, closes the
// connection: the wait ran out either way, and the error must say
// ErrNotAcquired as well as context.DeadlineExceeded.
func TestSQLContextDeadlineRace(t *testing.T) {
	m, l, key := firstAcquire(t, mockMariaDB)
	// The server's 1969 arrives long after the client's deadline.
	m.mock.ExpectQuery(regexPrefix + "^SET STATEMENT max_statement_time=").WillDelayFor(5 * time.Second).
		WillReturnError(&gomysql.MySQLError{Number: 1969, Message: "Query execution was interrupted (max_statement_time exceeded)"})
	m.mock.ExpectRollback()
	m.side.mock.ExpectQuery(qProcesses).WithArgs(patternArg{}).WillReturnRows(sqlmock.NewRows([]string{"ID", "QUERY_ID"}))
	m.side.mock.ExpectQuery(qProcesses).WithArgs(patternArg{}).WillReturnRows(sqlmock.NewRows([]string{"ID", "QUERY_ID"}))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := l.Lock(ctx, key)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock = %v, want context.DeadlineExceeded", err)
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock = %v, want ErrNotAcquired as well: the wait bounded by the deadline ran out", err)
	}
}

// TestSQLFencingBumpRetried: a token bump that the server refuses as a
// deadlock (on Galera multi-writer, certified against a concurrent
// holder's bump on another node) is sent again, and the lock is granted
// with the token of the bump that succeeded, read back in the transaction;
// after fenceAttempts refusals the acquisition fails, rolled back, with
// the server's error.
func TestSQLFencingBumpRetried(t *testing.T) {
	refused := &gomysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock"}
	key := dblock.Resource("order:42")
	h := lockkey.Fields(key).Hash()
	t.Run("granted after two refusals", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		for range 2 {
			m.side.mock.ExpectExec(qBump).WillReturnError(refused)
		}
		m.side.mock.ExpectExec(qBump).WillReturnResult(sqlmock.NewResult(42, 2))
		m.mock.ExpectQuery(qFenceRead).WillReturnRows(sqlmock.NewRows([]string{"key_hash", "token"}).AddRow(h[:], 42))
		m.mock.ExpectCommit()
		var got int64
		err := l.Do(context.Background(), key, func(ctx context.Context, _ *gorm.DB) error {
			got, _ = dblock.TokenFrom(ctx, key)
			return nil
		}, dblock.Fencing())
		if err != nil || got != 42 {
			t.Fatalf("Do = %v with token %d, want nil with token 42", err, got)
		}
		m.done(t)
	})
	t.Run("refused every time", func(t *testing.T) {
		// The attempt is rolled back whole: ErrDeadlock, which Retry runs
		// again.
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		for range 8 {
			m.side.mock.ExpectExec(qBump).WillReturnError(refused)
		}
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t), dblock.Fencing())
		checkMapped(t, err, dblock.ErrDeadlock, 1213, []error{dblock.ErrNotAcquired, dblock.ErrLockLost, dblock.ErrNotPrimary})
		mustContain(t, err, "fencing token", "8 bumps refused")
		m.done(t)
	})
	t.Run("context ends during the backoff", func(t *testing.T) {
		// The Locker's debug log of the refusal, just before the backoff,
		// cancels the context.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		m := newMocked(t)
		l := m.locker(t, mariaVersion, mariaComment, true, dblock.Logger(slog.New(cancelOnLog{cancel})))
		defer l.Close()
		m.expectLookup(key, 7)
		m.expectFirstBegin(mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.side.mock.ExpectExec(qBump).WillReturnError(refused)
		m.mock.ExpectRollback()
		err := l.Do(ctx, key, fnMustNotRun(t), dblock.Fencing())
		if !errors.Is(err, context.Canceled) || errors.Is(err, dblock.ErrDeadlock) {
			t.Errorf("Do = %v, want context.Canceled and not ErrDeadlock", err)
		}
		mustContain(t, err, "1 bump(s) refused as deadlocks, retry abandoned")
		waitReturned(m)
		m.done(t)
	})
	t.Run("other errors are not retried", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.side.mock.ExpectExec(qBump).WillReturnError(&gomysql.MySQLError{Number: 1146, Message: "Table 'test.tb_lock_fence' doesn't exist"})
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t), dblock.Fencing())
		if mysqlNumber(t, err) != 1146 || errors.Is(err, dblock.ErrDeadlock) {
			t.Errorf("Do = %v, want the server's 1146", err)
		}
		m.done(t)
	})
}

// cancelOnLog is a slog handler that calls cancel on every record of an
// acquisition (not on those of label writes, sent by a goroutine of their
// own and refused by the mocks).
type cancelOnLog struct{ cancel context.CancelFunc }

func (h cancelOnLog) Enabled(context.Context, slog.Level) bool { return true }

func (h cancelOnLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "label") {
		h.cancel()
	}
	return nil
}

func (h cancelOnLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h cancelOnLog) WithGroup(string) slog.Handler      { return h }
