package dblock_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"go.uber.org/goleak"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// TestMain runs the package's tests against the test server of testdb. It
// exports the server's DSN in $DBLOCK_DSN, so that the examples (which only
// use the public API) and the child processes of TestMutualExclusionProcesses
// reach the same server, even a throwaway one.
//
// Leaks are checked per test (see setup), not with goleak.VerifyTestMain:
// testdb.Main owns the exit of the process. The tests of this package do not
// call t.Parallel, so that each goroutine check sees only its own test, and
// so that their loose timing bounds hold on a small machine.
func TestMain(m *testing.M) {
	if os.Getenv(testdb.EnvDSN) == "" {
		if dsn, err := testdb.DSN(); err == nil {
			_ = os.Setenv(testdb.EnvDSN, dsn)
		}
		// Otherwise testdb.Open fails each test with instructions.
	}
	testdb.Main(m)
}

// opTimeout bounds any single operation of a test that could block if the
// library were wrong (a missed release, a deadlock): the test then fails
// with an error instead of hanging until the go test timeout.
const opTimeout = 20 * time.Second

// testTimeout bounds the context of a whole test (ctxT), which serves all
// of its operations: on a busy machine hundreds of lock cycles can take
// longer than opTimeout, and that is load, not a defect.
const testTimeout = 2 * time.Minute

// verifyNoGoroutineLeak registers, as the first cleanup of t (so that it
// runs last, after the pools of the test are closed), a check that no
// goroutine started by the test is left. Tests of this package are not
// parallel, so every goroutine but the test runner's is the test's.
func verifyNoGoroutineLeak(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			// A failed test may have left a waiter behind on purpose; the
			// failure is reported already.
			return
		}
		goleak.VerifyNone(t, foreignGoroutines...)
	})
}

// env is what a database test works with: its pool and its own lock table.
type env struct {
	db    *gorm.DB
	sqlDB *sql.DB
	table string
}

// setup gives the test a pool on the test server and a fresh lock table,
// checks at the end that no connection of the pool is in use and that no
// goroutine leaked. The pool is closed and the table dropped in cleanup.
func setup(t *testing.T) env {
	t.Helper()
	verifyNoGoroutineLeak(t)
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	return env{db: db, sqlDB: sqlDB, table: table}
}

// locker returns a Locker on the test's table. The caller defers Close.
func (e env) locker(t *testing.T, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	l, err := dblock.New(e.db, append([]dblock.Option{dblock.Table(e.table)}, opts...)...)
	if err != nil {
		t.Fatalf("dblock.New: %v", err)
	}
	return l
}

// setupLocker is setup with a Locker on the test's table, closed when the
// test ends (before the checks of setup run).
func setupLocker(t *testing.T, opts ...dblock.Option) (env, *dblock.Locker) {
	t.Helper()
	e := setup(t)
	l := e.locker(t, opts...)
	t.Cleanup(func() { _ = l.Close() })
	return e, l
}

// businessTable creates a business table named after the lock table with
// the given suffix and columns, and drops it when the test ends. A
// transaction left open on it would make the DROP wait: the wait is bounded
// so that the cleanup reports it instead of hanging.
func (e env) businessTable(t *testing.T, suffix, columns string) string {
	t.Helper()
	name := e.table + "_" + suffix
	if err := e.db.Exec("CREATE TABLE `" + name + "` (" + columns + ") ENGINE=InnoDB").Error; err != nil {
		t.Fatalf("creating %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := e.sqlDB.Conn(ctx)
		if err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 10"); err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		if _, err := conn.ExecContext(ctx, "DROP TABLE IF EXISTS `"+name+"`"); err != nil {
			t.Errorf("dropping %s (does a transaction still use it?): %v", name, err)
		}
	})
	return name
}

// kvTable creates a business table (k VARCHAR primary key, v BIGINT).
func (e env) kvTable(t *testing.T) string {
	t.Helper()
	return e.businessTable(t, "kv", "k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL")
}

// put writes k=v in table through db (a transaction or the pool).
func put(db *gorm.DB, table, k string, v int64) error {
	return db.Exec("INSERT INTO `"+table+"` (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)", k, v).Error
}

// get reads k from table through the pool: -1 when absent.
func get(t *testing.T, db *gorm.DB, table, k string) int64 {
	t.Helper()
	var v sql.NullInt64
	err := db.Raw("SELECT v FROM `"+table+"` WHERE k = ?", k).Row().Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return -1
	}
	if err != nil {
		t.Fatalf("reading %s.%s: %v", table, k, err)
	}
	return v.Int64
}

// ctxT returns a context bounded by testTimeout, cancelled when the test
// ends.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	return ctxWithin(t, testTimeout)
}

// ctxWithin returns a context bounded by d, cancelled when the test ends.
func ctxWithin(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustLock takes key with TryLock and fails the test if it cannot.
func mustLock(t *testing.T, ctx context.Context, l *dblock.Locker, key dblock.Key) *dblock.Lock {
	t.Helper()
	k, err := l.TryLock(ctx, key)
	if err != nil {
		t.Fatalf("TryLock(%s): %v", key, err)
	}
	return k
}

// holdKey takes key with TryLock, failing the test if it cannot, and holds
// it until the test ends (or the caller ends the lock).
func holdKey(t *testing.T, ctx context.Context, l *dblock.Locker, key dblock.Key) *dblock.Lock {
	t.Helper()
	k := mustLock(t, ctx, l, key)
	t.Cleanup(func() { _ = k.Rollback() })
	return k
}

// fnMustNotRun returns a fn for the acquisitions that must fail: it fails
// the test if it runs.
func fnMustNotRun(t *testing.T) func(context.Context, *gorm.DB) error {
	return func(context.Context, *gorm.DB) error {
		t.Error("fn ran without the lock")
		return nil
	}
}

// acquireAll runs every kind of acquisition of key once, with opts (Lock,
// TryLock, Do with fn, then LockTx in tx), and returns their errors by
// name. It is for acquisitions that must fail: a lock that Lock or TryLock
// got would stay held.
func acquireAll(ctx context.Context, l *dblock.Locker, tx *gorm.DB, key dblock.Key, fn func(context.Context, *gorm.DB) error, opts ...dblock.LockOption) map[string]error {
	_, lockErr := l.Lock(ctx, key, opts...)
	_, tryErr := l.TryLock(ctx, key, opts...)
	return map[string]error{
		"Do":      l.Do(ctx, key, fn, opts...),
		"Lock":    lockErr,
		"TryLock": tryErr,
		"LockTx":  l.LockTx(ctx, tx, key, opts...),
	}
}

// assertHeld checks that key is held by someone else: TryLock fails with
// ErrNotAcquired.
func assertHeld(t *testing.T, l *dblock.Locker, key dblock.Key) {
	t.Helper()
	k, err := l.TryLock(context.Background(), key)
	if err == nil {
		_ = k.Rollback()
		t.Fatalf("TryLock(%s) succeeded, want ErrNotAcquired: the key should be held", key)
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("TryLock(%s) = %v, want ErrNotAcquired", key, err)
	}
}

// assertFree checks that key is free: TryLock succeeds (and releases it).
func assertFree(t *testing.T, l *dblock.Locker, key dblock.Key) {
	t.Helper()
	k, err := l.TryLock(context.Background(), key)
	if err != nil {
		t.Fatalf("TryLock(%s) = %v, want the key free", key, err)
	}
	if err := k.Rollback(); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
}

// assertFreeSoon checks that key becomes free. It is for locks whose
// transaction ended because its context was cancelled: database/sql then
// rolls the transaction back in a goroutine of its own, so the server
// releases the row a moment after Commit or Rollback return (later on a
// busy machine). It waits for the row up to opTimeout, which only a lock
// that is never released reaches, and logs how long it took.
func assertFreeSoon(t *testing.T, l *dblock.Locker, key dblock.Key) {
	t.Helper()
	start := time.Now()
	k, err := l.Lock(context.Background(), key, dblock.WaitTimeout(opTimeout))
	if err != nil {
		t.Fatalf("Lock(%s) = %v after %v, want the key freed", key, err, time.Since(start))
	}
	if err := k.Rollback(); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	t.Logf("%s became free after %v", key, time.Since(start))
}

// mysqlNumber returns the number of the *mysql.MySQLError in err's chain,
// failing the test if there is none.
func mysqlNumber(t *testing.T, err error) uint16 {
	t.Helper()
	var me *gomysql.MySQLError
	if !errors.As(err, &me) {
		t.Fatalf("error %v (%T) does not wrap a *mysql.MySQLError", err, err)
	}
	return me.Number
}

// process is a row of information_schema.PROCESSLIST.
type process struct {
	id   int64
	info string
}

// lockWaits returns the statements of other connections that run a locking
// read on table (the library's waiting acquisitions), live from PROCESSLIST.
func lockWaits(t *testing.T, db *sql.DB, table string) []process {
	t.Helper()
	rows, err := db.Query(`SELECT ID, INFO FROM information_schema.PROCESSLIST
		WHERE ID <> CONNECTION_ID() AND INFO LIKE '%FOR UPDATE%' AND INFO LIKE ?`, "%`"+table+"`%")
	if err != nil {
		t.Fatalf("reading PROCESSLIST: %v", err)
	}
	defer rows.Close()
	var out []process
	for rows.Next() {
		var p process
		if err := rows.Scan(&p.id, &p.info); err != nil {
			t.Fatalf("reading PROCESSLIST: %v", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("reading PROCESSLIST: %v", err)
	}
	return out
}

// waitForLockWaits polls PROCESSLIST until n locking reads of table are
// running (waiting), and returns them. It fails the test after opTimeout.
func waitForLockWaits(t *testing.T, db *sql.DB, table string, n int) []process {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		ps := lockWaits(t, db, table)
		if len(ps) == n {
			return ps
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %d lock waits on %s: have %v", n, table, ps)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// result is what a goroutine running an acquisition reports.
type result struct {
	err error
	at  time.Time // when the call returned
}

// within logs how long what took, and fails the test if d is outside
// [lo, hi]. lo is a bound no load can break (a wait cannot end before the
// server's timeout); hi is a ceiling only a defect reaches (callers pass
// opTimeout, far above what a busy machine adds and below the 50 s
// innodb_lock_wait_timeout where a wait that ignored its bound would end):
// how fast something happened goes to the log, not to a bound that a
// loaded machine misses. The precise statement timeouts are checked on
// the statements themselves (sqlmock_test.go).
func within(t *testing.T, what string, d, lo, hi time.Duration) {
	t.Helper()
	t.Logf("%s took %v", what, d.Round(10*time.Microsecond))
	if d < lo || d > hi {
		t.Errorf("%s took %v, want between %v and %v", what, d, lo, hi)
	}
}

// mustContain fails the test if err is nil or its message lacks one of subs.
func mustContain(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}
