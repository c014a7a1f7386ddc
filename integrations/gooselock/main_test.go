package gooselock

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
)

// helperEnv names the lock table of a child process that holds the lock
// until it is killed (TestHolderProcessKilled).
const helperEnv = "GOOSELOCK_TEST_HOLDER_TABLE"

// TestMain runs the tests against testdb's server, exported in
// $DBLOCK_DSN for the example and the child processes, or runs the child
// holder when asked to.
func TestMain(m *testing.M) {
	if table := os.Getenv(helperEnv); table != "" {
		os.Exit(holdUntilKilled(table))
	}
	if os.Getenv(testdb.EnvDSN) == "" {
		if dsn, err := testdb.DSN(); err == nil {
			_ = os.Setenv(testdb.EnvDSN, dsn)
		}
	}
	testdb.Main(m)
}

// holdUntilKilled is the child holder: it takes the lock on table, says
// "locked" on stdout and waits for stdin to close (the parent kills it
// before).
func holdUntilKilled(table string) int {
	db, err := sql.Open("mysql", os.Getenv(testdb.EnvDSN))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	l, err := New(Table(table))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := l.Lock(context.Background(), db); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("locked")
	_, _ = os.Stdin.Read(make([]byte, 1))
	_ = l.Unlock(context.Background(), db)
	return 0
}

// opTimeout bounds an operation that only a wrong library would block: a
// failing test then fails instead of hanging. It is no timing assertion.
const opTimeout = 30 * time.Second

// env is a test's database: a pool of goose's kind (*sql.DB) and a lock
// table of the test's own.
type env struct {
	db    *sql.DB
	table string
}

func setup(t *testing.T) *env {
	t.Helper()
	gdb := testdb.Open(t)
	table := testdb.Table(t, gdb)
	db, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkNoneInUse(t, db) })
	return &env{db: db, table: table}
}

// pool opens another pool on the test server: another process's, as far
// as the server can tell.
func (e *env) pool(t *testing.T) *sql.DB {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkNoneInUse(t, db)
		_ = db.Close()
	})
	return db
}

// checkNoneInUse fails t if a connection of db is still in use once the
// test's releases are done (given a moment for them to be returned).
func checkNoneInUse(t *testing.T, db *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for db.Stats().InUse > 0 {
		if time.Now().After(deadline) {
			t.Errorf("%d connections still in use after the test", db.Stats().InUse)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) locker(t *testing.T, opts ...Option) *Locker {
	t.Helper()
	l, err := New(append([]Option{Table(e.table)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitFor polls cond until it holds, failing t after opTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", opTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// await returns what a Lock running in the background returned on got,
// failing t if it has not returned within opTimeout.
func await(t *testing.T, got <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-got:
		return err
	case <-time.After(opTimeout):
		t.Fatalf("%s: still waiting after %v", what, opTimeout)
		return nil
	}
}

// waitForWaiter waits until the server shows a locking read of table
// waiting: a Lock queued behind the holder.
func (e *env) waitForWaiter(t *testing.T) {
	t.Helper()
	waitFor(t, "a Lock waiting on the server", func() bool {
		var n int
		err := e.db.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE INFO LIKE CONCAT('%', ?, '%') AND INFO LIKE '%FOR UPDATE%' AND ID <> CONNECTION_ID()`,
			e.table).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
}

// connectionID returns the server's id of the connection l's lock lives on.
func connectionID(t *testing.T, l *Locker) int64 {
	t.Helper()
	l.mu.Lock()
	h := l.held
	l.mu.Unlock()
	if h == nil {
		t.Fatal("the Locker holds no lock")
	}
	var id int64
	if err := h.lk.Tx().Raw("SELECT CONNECTION_ID()").Row().Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func mustContain(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want one containing %q", err, want)
	}
}
