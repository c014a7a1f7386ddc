package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

func TestMain(m *testing.M) { Main(m) }

func tableExists(t *testing.T, db *sql.DB, name string) bool {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name = ?`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func TestOpenAndTable(t *testing.T) {
	t.Parallel()
	db := Open(t)
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	var name string
	t.Run("inner", func(t *testing.T) {
		name = Table(t, db)
		if err := schema.ValidTableName(name); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, schema.DefaultTable+"_t") {
			t.Errorf("Table = %q, want a tb_lock_t… name", name)
		}
		for _, tb := range []string{name, schema.FenceTable(name), migrations.VersionTable(name)} {
			if !tableExists(t, sqlDB, tb) {
				t.Errorf("table %s missing", tb)
			}
		}
		st, err := migrations.Status(context.Background(), sqlDB, migrations.Table(name))
		if err != nil || len(st) == 0 || !st[len(st)-1].Applied {
			t.Errorf("Status = %+v, %v: want all applied", st, err)
		}
		// gorm is usable, and parses times.
		var now time.Time
		if err := db.Raw("SELECT NOW(6)").Scan(&now).Error; err != nil || now.IsZero() {
			t.Errorf("SELECT NOW(6) = %v, %v", now, err)
		}
		NoLeaks(t, db)
	})
	for _, tb := range []string{name, schema.FenceTable(name), migrations.VersionTable(name)} {
		if tableExists(t, sqlDB, tb) {
			t.Errorf("table %s still exists after the test that made it", tb)
		}
	}
	if other := Table(t, db); other == name {
		t.Errorf("two calls of Table returned the same name %q", name)
	}
}

func TestWaitIdle(t *testing.T) {
	t.Parallel()
	sqlDB, err := Open(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	tx, err := sqlDB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if n := waitIdle(sqlDB, 50*time.Millisecond); n != 1 {
		t.Errorf("waitIdle with an open transaction = %d, want 1", n)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = tx.Rollback()
	}()
	if n := waitIdle(sqlDB, leakWait); n != 0 {
		t.Errorf("waitIdle after the rollback = %d, want 0", n)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"root@tcp(127.0.0.1:3306)/test":                 "root@tcp(127.0.0.1:3306)/test",
		"app:s3cr3t@tcp(db:3306)/x?parseTime=true":      "app:xxxxx@tcp(db:3306)/x?parseTime=true",
		"app:p@ss:w@rd@tcp(db:3306)/x":                  "app:xxxxx@tcp(db:3306)/x",
		"this is not a DSN":                             "<unparsable DSN>",
		"app:s3cr3t@unix(/run/mysqld/mysqld.sock)/test": "app:xxxxx@unix(/run/mysqld/mysqld.sock)/test",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// closedDSN returns a DSN on a port of 127.0.0.1 that nothing listens on.
func closedDSN(t *testing.T, user string) string {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s@tcp(127.0.0.1:%d)/test", user, port)
}

func TestResolveBadEnvDSN(t *testing.T) {
	t.Parallel()
	dsn := closedDSN(t, "app:s3cr3t")
	_, srv, err := resolve(dsn, DefaultDSN, findMariadbd)
	if err == nil || srv != nil {
		t.Fatalf("resolve(unreachable $%s) = %v, %v; want an error and no server", EnvDSN, srv, err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("the error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), EnvDSN) {
		t.Errorf("the error does not name %s: %v", EnvDSN, err)
	}
}

func TestResolveNothingInstalled(t *testing.T) {
	t.Parallel()
	_, srv, err := resolve("", closedDSN(t, "root"), func() string { return "" })
	if err == nil || srv != nil {
		t.Fatalf("resolve without server nor mariadbd = %v, %v; want an error", srv, err)
	}
	for _, want := range []string{"make test", "apt-get install mariadb-server", EnvDSN} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not mention %q: %v", want, err)
		}
	}
}

func TestThrowawayServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mariadbd: skipped with -short")
	}
	bin := findMariadbd()
	if bin == "" {
		t.Skip("mariadbd is not installed")
	}
	t.Parallel()
	dsn, srv, err := resolve("", closedDSN(t, "root"), findMariadbd)
	if err != nil {
		t.Fatal(err)
	}
	if srv == nil {
		t.Fatal("no throwaway server started")
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.stop()
		}
	})
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ParseTime = true
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	var current, version string
	if err := db.QueryRow("SELECT DATABASE(), VERSION()").Scan(&current, &version); err != nil {
		t.Fatalf("querying the throwaway server at %s: %v", dsn, err)
	}
	if current != "test" || !strings.Contains(version, "MariaDB") {
		t.Errorf("throwaway server: database %q, version %q", current, version)
	}
	if _, err := migrations.Up(context.Background(), db); err != nil {
		t.Fatalf("migrations.Up on the throwaway server: %v", err)
	}
	db.Close()

	stopped = true
	if err := srv.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(srv.dir); !os.IsNotExist(err) {
		t.Errorf("stop left %s behind (%v)", srv.dir, err)
	}
	if err := ping(cfg); err == nil {
		t.Error("the server still answers after stop")
	}
}
