package testdb

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// TestCheckServerOptions: extra server options are single "--name[=value]"
// options, and those testdb sets itself are refused with a message naming
// them.
func TestCheckServerOptions(t *testing.T) {
	t.Parallel()
	for _, ok := range [][]string{
		nil,
		{"--innodb-rollback-on-timeout=ON"},
		{"--innodb_lock_wait_timeout=1", "--skip-log-bin"},
	} {
		if err := checkServerOptions(ok); err != nil {
			t.Errorf("checkServerOptions(%q) = %v, want nil", ok, err)
		}
	}
	for _, c := range []struct {
		opts []string
		want string
	}{
		{[]string{"innodb-rollback-on-timeout=ON"}, "want one mariadbd option"},
		{[]string{"-P3307"}, "want one mariadbd option"},
		{[]string{"--"}, "want one mariadbd option"},
		{[]string{"--a b=1"}, "want one mariadbd option"},
		{[]string{"--port=3307"}, "testdb sets --port itself"},
		{[]string{"--ok=1", "--data_dir=/x", "--datadir=/x"}, "testdb sets --datadir itself"},
		{[]string{"--no-defaults"}, "testdb sets --no-defaults itself"},
	} {
		err := checkServerOptions(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("checkServerOptions(%q) = %v, want an error containing %q", c.opts, err, c.want)
		}
	}
	if _, err := StartThrowaway("--port=1"); err == nil || !strings.Contains(err.Error(), "--port") {
		t.Errorf("StartThrowaway(--port=1) = %v, want the option refused before anything starts", err)
	}
}

// openThrowaway opens a database/sql pool on s, closed when t ends, and
// returns it with s's parsed DSN.
func openThrowaway(t *testing.T, s *Throwaway) (*sql.DB, *gomysql.Config) {
	t.Helper()
	cfg, err := gomysql.ParseDSN(s.DSN())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	t.Cleanup(func() { _ = db.Close() })
	return db, cfg
}

// TestThrowawayOptions: a throwaway server started with extra options runs
// with them, also after a restart.
func TestThrowawayOptions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mariadbd: skipped with -short")
	}
	t.Parallel()
	start := time.Now()
	s := ThrowawayFor(t, "--innodb-rollback-on-timeout=ON", "--innodb-lock-wait-timeout=7")
	t.Logf("started in %v", time.Since(start))
	db, _ := openThrowaway(t, s)
	check := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var rollback, wait int
		if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.innodb_rollback_on_timeout, @@GLOBAL.innodb_lock_wait_timeout").Scan(&rollback, &wait); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if rollback != 1 || wait != 7 {
			t.Errorf("%s: innodb_rollback_on_timeout = %d, innodb_lock_wait_timeout = %d; want 1 and 7", when, rollback, wait)
		}
	}
	check("started")
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	check("restarted")
}
