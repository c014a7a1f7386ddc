package dblock_test

// Helpers of the regression tests of the configurations and compositions
// of issue 14 (settings_test.go, compose_test.go, pool_test.go,
// lease_bound_test.go, commit_outcome_test.go, ...).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"go.uber.org/goleak"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// foreignGoroutines are goroutines of dependencies that never end, which
// the per-test leak check (verifyNoGoroutineLeak) ignores: gorm starts one
// for the statement cache of each *gorm.DB that uses PrepareStmt (its
// done channel "is never closed", gorm/internal/lru), so the first test
// that uses PrepareStmt would otherwise fail every later test's check.
var foreignGoroutines = []goleak.Option{
	goleak.IgnoreAnyFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"),
}

// otherPool opens another pool on the test server, closed when the test
// ends, with the leak check: for third parties (a holder, a checker, a
// killer) that must not share a pool the test limits.
func otherPool(t *testing.T) *gorm.DB {
	t.Helper()
	db := testdb.Open(t)
	testdb.NoLeaks(t, db)
	return db
}

// serverConfig returns the test server's DSN, parsed.
func serverConfig(t *testing.T) *gomysql.Config {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// dsnWith returns the test server's DSN changed by edit.
func dsnWith(t *testing.T, edit func(*gomysql.Config)) string {
	t.Helper()
	cfg := serverConfig(t)
	edit(cfg)
	return cfg.FormatDSN()
}

// openGorm opens gorm on the test server with config (its Logger set to
// discard when nil), parseTime and the DSN kept in the dialector (so that a
// Locker opens its side pool), closed when the test ends, with the leak
// check.
func openGorm(t *testing.T, config *gorm.Config) *gorm.DB {
	t.Helper()
	cfg := serverConfig(t)
	cfg.ParseTime = true
	if config.Logger == nil {
		config.Logger = logger.Discard
	}
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), config)
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	testdb.NoLeaks(t, db)
	return db
}

// connectionID returns the server's id of the connection db runs on (a
// transaction, or a pool of one connection).
func connectionID(t *testing.T, db *gorm.DB) int64 {
	t.Helper()
	var id int64
	if err := db.Raw("SELECT CONNECTION_ID()").Row().Scan(&id); err != nil {
		t.Fatalf("CONNECTION_ID(): %v", err)
	}
	return id
}

// killConnection kills connection id from db (another session) and waits
// until the server no longer lists it.
func killConnection(t *testing.T, db *gorm.DB, id int64) {
	t.Helper()
	if err := db.Exec("KILL CONNECTION " + strconv.FormatInt(id, 10)).Error; err != nil {
		t.Fatalf("KILL CONNECTION %d: %v", id, err)
	}
	waitFor(t, fmt.Sprintf("connection %d to leave PROCESSLIST", id), func() bool {
		var n int
		if err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", id).Row().Scan(&n); err != nil {
			t.Fatalf("reading PROCESSLIST: %v", err)
		}
		return n == 0
	})
}

// waitFor polls cond until it holds, failing the test after opTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", opTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// heldByOther reports, as an error, if key is not held by someone else: a
// new transaction of l (from another goroutine, so that no scope of the
// caller's context is joined) must fail to take it with ErrNotAcquired.
// Unlike assertHeld, it does not stop the test, so that it can be called
// inside fn and the test goes on to check the rest.
func heldByOther(l *dblock.Locker, key dblock.Key) error {
	done := make(chan error, 1)
	go func() {
		k, err := l.TryLock(context.Background(), key)
		switch {
		case err == nil:
			_ = k.Rollback()
			done <- fmt.Errorf("TryLock(%s) from another transaction succeeded: the key was not held", key)
		case errors.Is(err, dblock.ErrNotAcquired):
			done <- nil
		default:
			done <- fmt.Errorf("TryLock(%s) from another transaction: %v, want ErrNotAcquired", key, err)
		}
	}()
	return <-done
}

// freeForOther reports, as an error, if another transaction of l cannot
// take key at once (and releases it when it could).
func freeForOther(l *dblock.Locker, key dblock.Key) error {
	done := make(chan error, 1)
	go func() {
		k, err := l.TryLock(context.Background(), key)
		if err != nil {
			done <- fmt.Errorf("TryLock(%s) from another transaction: %v, want the key free", key, err)
			return
		}
		done <- k.Rollback()
	}()
	return <-done
}

// isAll reports whether err is not nil and matches every one of targets.
func isAll(err error, targets ...error) bool {
	for _, t := range targets {
		if !errors.Is(err, t) {
			return false
		}
	}
	return err != nil
}

// wantLost fails the test (and goes on) if err, what the test calls what,
// does not match ErrLockLost.
func wantLost(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("%s = %v, want ErrLockLost", what, err)
	}
}

// logRecorder is a slog.Handler that keeps every record, for tests that
// check what the Locker logs.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

// Enabled implements slog.Handler.
func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}

// WithAttrs implements slog.Handler.
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }

// WithGroup implements slog.Handler.
func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// atLeast returns the messages of the records at level or above.
func (r *logRecorder) atLeast(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.records {
		if rec.Level >= level {
			out = append(out, rec.Message)
		}
	}
	return out
}

// rowsOf returns the number of rows of table.
func rowsOf(t *testing.T, db *gorm.DB, table string) int64 {
	t.Helper()
	var n int64
	if err := db.Raw("SELECT COUNT(*) FROM `" + table + "`").Row().Scan(&n); err != nil {
		t.Fatalf("counting %s: %v", table, err)
	}
	return n
}

// cancelOnly returns a context without a deadline, cancelled when the test
// ends: for acquisitions that must be bounded by the server's own lock wait
// timeout (a deadline would make the library bound the wait itself).
func cancelOnly(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// waitLockWait waits until a transaction of the server waits for a lock
// with a statement that names table, polling INNODB_TRX every 150 ms: the
// server refreshes that view only when nobody read it for 100 ms, so a
// faster poll would freeze it. It returns an error after opTimeout.
func waitLockWait(db *gorm.DB, table string) error {
	deadline := time.Now().Add(opTimeout)
	for {
		var n int
		err := db.Raw("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE ?", "%"+table+"%").Row().Scan(&n)
		if err == nil && n == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no transaction waited for a lock on %s within %v (last error %v)", table, opTimeout, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}
