package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// EnvDSN is the environment variable that names the test server.
const EnvDSN = "DBLOCK_DSN"

// DefaultDSN is the server tried when $DBLOCK_DSN is unset.
const DefaultDSN = "root@tcp(127.0.0.1:3306)/test"

// howToGetAServer ends the error that DSN returns when it finds no server.
const howToGetAServer = "run `make test` (it installs and starts MariaDB when it can), " +
	"or `sudo apt-get install mariadb-server`, " +
	"or set " + EnvDSN + " to a server's DSN, e.g. " + EnvDSN + "='user:pass@tcp(host:3306)/test'"

// process is the test process's one server. It is package state on purpose:
// a test binary starts at most one throwaway server, whichever test asks
// first, and Main stops it.
var process struct {
	once sync.Once
	dsn  string
	err  error

	mu  sync.Mutex
	srv *server // the throwaway server, if one was started
}

// DSN returns the DSN of the test server: $DBLOCK_DSN if set, else
// [DefaultDSN] if a server answers there, else that of a throwaway mariadbd
// started for this process (stopped by [Main]). The database named in the
// DSN is created if missing. When there is no server and no mariadbd, the
// error says how to get one. The result is computed once per process.
func DSN() (string, error) {
	process.once.Do(func() {
		process.dsn, process.err = resolveDSN()
	})
	return process.dsn, process.err
}

// resolveDSN finds or starts the test server.
func resolveDSN() (string, error) {
	dsn, srv, err := resolve(os.Getenv(EnvDSN), DefaultDSN, findMariadbd)
	if srv != nil {
		process.mu.Lock()
		process.srv = srv
		process.mu.Unlock()
	}
	return dsn, err
}

// resolve returns envDSN if it is set, else fallback if a server answers
// there, else the DSN of a throwaway server started with the mariadbd that
// findBin returns, if any.
func resolve(envDSN, fallback string, findBin func() string) (string, *server, error) {
	if envDSN != "" {
		if err := ensureDatabase(envDSN); err != nil {
			return "", nil, fmt.Errorf("testdb: %s=%s: %w", EnvDSN, Redact(envDSN), err)
		}
		return envDSN, nil, nil
	}
	probeErr := ensureDatabase(fallback)
	if probeErr == nil {
		return fallback, nil, nil
	}
	bin := findBin()
	if bin == "" {
		return "", nil, fmt.Errorf("testdb: no MySQL/MariaDB server at %s (%w) and no mariadbd to start one: %s",
			Redact(fallback), probeErr, howToGetAServer)
	}
	srv, err := startServer(bin, "txlock-testdb-", nil)
	if err != nil {
		return "", nil, fmt.Errorf("testdb: no server at %s (%v), and starting a throwaway %s failed: %w; %s",
			Redact(fallback), probeErr, bin, err, howToGetAServer)
	}
	return srv.dsn, srv, nil
}

// Main runs the tests of m, stops the throwaway server if DSN started one,
// and exits with the tests' status. Call it from TestMain in every package
// whose tests use this package.
func Main(m *testing.M) {
	code := m.Run()
	process.mu.Lock()
	srv := process.srv
	process.srv = nil
	process.mu.Unlock()
	if srv != nil {
		if err := srv.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: stopping the throwaway server: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// Open opens gorm on the test server, with parseTime=true and a silent
// logger, and closes it when the test ends. It fails the test at once, with
// instructions, when there is no server.
func Open(t testing.TB) *gorm.DB {
	t.Helper()
	dsn, err := DSN()
	if err != nil {
		t.Fatal(err)
	}
	return open(t, dsn, true)
}

// OpenDSN is Open on another server's dsn (a relay, a throwaway or HA
// server): gorm with parseTime and a silent logger, the DSN kept in the
// dialector so that a Locker's side pool reaches the same address, closed
// when t ends. That server or its relay may be gone by then (a test killed
// it), so an error closing the pool is not reported.
func OpenDSN(t testing.TB, dsn string) *gorm.DB {
	t.Helper()
	return open(t, dsn, false)
}

func open(t testing.TB, dsn string, reportClose bool) *gorm.DB {
	t.Helper()
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("testdb: parsing DSN %s: %v", Redact(dsn), err)
	}
	cfg.ParseTime = true
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatalf("testdb: opening %s: %v", Redact(dsn), err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() {
		if err := sqlDB.Close(); err != nil && reportClose {
			t.Errorf("testdb: closing the database: %v", err)
		}
	})
	return db
}

// Table creates a lock table that only this test uses, named "tb_lock_t"
// followed by 12 random hex digits, by running migrations.Up on db, and
// returns its name. When the test ends, migrations.Down drops it and its
// version table is dropped too.
func Table(t testing.TB, db *gorm.DB) string {
	t.Helper()
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		t.Fatalf("testdb: random table name: %v", err)
	}
	name := schema.DefaultTable + "_t" + hex.EncodeToString(suffix[:])
	TableNamed(t, db, name)
	return name
}

// TableNamed creates the lock table name by running migrations.Up on db
// (for a test that needs the same name in two databases); when the test
// ends, migrations.Down drops it and its version table is dropped too.
func TableNamed(t testing.TB, db *gorm.DB, name string) {
	t.Helper()
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	if err := schema.ValidTableName(name); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := migrations.Up(ctx, sqlDB, migrations.Table(name)); err != nil {
		t.Fatalf("testdb: creating table %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := migrations.Down(ctx, sqlDB, migrations.Table(name)); err != nil {
			t.Errorf("testdb: dropping table %s (does a transaction still hold it?): %v", name, err)
			return
		}
		if _, err := sqlDB.ExecContext(ctx, "DROP TABLE IF EXISTS `"+migrations.VersionTable(name)+"`"); err != nil {
			t.Errorf("testdb: dropping table %s: %v", migrations.VersionTable(name), err)
		}
	})
}

// leakWait is how long NoLeaks waits for connections to go back to the pool.
const leakWait = 2 * time.Second

// NoLeaks makes the test fail if, when it ends, a connection of db is
// still in use (a transaction or rows left open), after giving them
// leakWait to be returned. Call it after Open and Table, so that it runs
// before their cleanups.
func NoLeaks(t testing.TB, db *gorm.DB) {
	t.Helper()
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() {
		if inUse := waitIdle(sqlDB, leakWait); inUse != 0 {
			t.Errorf("testdb: %d connection(s) still in use %v after the test: a transaction or rows were not closed", inUse, leakWait)
		}
	})
}

// waitIdle waits up to d for db to have no connection in use and returns
// the number still in use.
func waitIdle(db *sql.DB, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		inUse := db.Stats().InUse
		if inUse == 0 || time.Now().After(deadline) {
			return inUse
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Redact returns dsn with its password, if any, replaced by "xxxxx", for
// messages. A DSN that does not parse is replaced entirely.
func Redact(dsn string) string {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "<unparsable DSN>"
	}
	if cfg.Passwd != "" {
		cfg.Passwd = "xxxxx"
	}
	return cfg.FormatDSN()
}

// pingTimeout bounds each attempt to reach a server.
const pingTimeout = 5 * time.Second

// errUnknownDatabase is MySQL's ER_BAD_DB_ERROR.
const errUnknownDatabase = 1049

// ensureDatabase checks that a server answers at dsn and creates the
// database that dsn names when it is missing.
func ensureDatabase(dsn string) error {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return fmt.Errorf("parsing DSN: %w", err)
	}
	err = ping(cfg)
	var me *gomysql.MySQLError
	if err == nil || !errors.As(err, &me) || me.Number != errUnknownDatabase || cfg.DBName == "" {
		return err
	}
	name := cfg.DBName
	cfg.DBName = ""
	if err := execOn(cfg, "CREATE DATABASE IF NOT EXISTS `"+strings.ReplaceAll(name, "`", "``")+"`"); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	cfg.DBName = name
	return ping(cfg)
}

// ping connects to the server that cfg names.
func ping(cfg *gomysql.Config) error {
	return execOn(cfg, "")
}

// execOn connects to cfg with a short timeout and runs query, if any.
func execOn(cfg *gomysql.Config, query string) error {
	cfg = cfg.Clone()
	if cfg.Timeout == 0 || cfg.Timeout > pingTimeout {
		cfg.Timeout = pingTimeout
	}
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	if query == "" {
		return db.PingContext(ctx)
	}
	_, err = db.ExecContext(ctx, query)
	return err
}
