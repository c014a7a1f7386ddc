package migrations_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// open returns a *sql.DB on the test server, closed when the test ends.
func open(t *testing.T) *sql.DB {
	t.Helper()
	db, err := testdb.Open(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// freshName returns an unused table name of length n (at least 12).
func freshName(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "mig_" + hex.EncodeToString(b)
	if len(name) < n {
		name += strings.Repeat("x", n-len(name))
	}
	return name[:n]
}

// dropAll removes every table that migrating name creates, whatever state
// the test left them in.
func dropAll(t *testing.T, db *sql.DB, name string) {
	t.Cleanup(func() {
		for _, tb := range []string{schema.FenceTable(name), name, migrations.VersionTable(name)} {
			if _, err := db.Exec("DROP TABLE IF EXISTS `" + tb + "`"); err != nil {
				t.Errorf("dropping %s: %v", tb, err)
			}
		}
	})
}

// tables returns which of names exist in the current database.
func tables(t *testing.T, db *sql.DB, names ...string) map[string]bool {
	t.Helper()
	got := make(map[string]bool)
	for _, n := range names {
		var c int
		err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.tables
			WHERE table_schema = DATABASE() AND table_name = ?`, n).Scan(&c)
		if err != nil {
			t.Fatal(err)
		}
		got[n] = c > 0
	}
	return got
}

func wantTables(t *testing.T, db *sql.DB, name string, lock, version bool) {
	t.Helper()
	got := tables(t, db, name, schema.FenceTable(name), migrations.VersionTable(name))
	want := map[string]bool{name: lock, schema.FenceTable(name): lock, migrations.VersionTable(name): version}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("table %s exists = %v, want %v", n, got[n], w)
		}
	}
}

func wantStatus(t *testing.T, db *sql.DB, name string, applied bool) []migrations.MigrationStatus {
	t.Helper()
	st, err := migrations.Status(context.Background(), db, migrations.Table(name))
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st) == 0 || st[len(st)-1].Version != migrations.Latest() {
		t.Fatalf("Status = %+v, want every version up to %d", st, migrations.Latest())
	}
	for _, s := range st {
		if s.Applied != applied {
			t.Errorf("version %d (%s): applied = %v, want %v", s.Version, s.Source, s.Applied, applied)
		}
		if applied && (s.AppliedAt.IsZero() || time.Since(s.AppliedAt) > time.Hour || time.Until(s.AppliedAt) > time.Hour) {
			t.Errorf("version %d applied at %v, want about now", s.Version, s.AppliedAt)
		}
		if !applied && !s.AppliedAt.IsZero() {
			t.Errorf("version %d pending but applied at %v", s.Version, s.AppliedAt)
		}
		if !strings.HasSuffix(s.Source, ".sql") {
			t.Errorf("version %d source = %q", s.Version, s.Source)
		}
	}
	return st
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := open(t)
	name := freshName(t, 20)
	dropAll(t, db, name)
	opt := migrations.Table(name)

	// Status only reads.
	wantStatus(t, db, name, false)
	wantTables(t, db, name, false, false)
	// Down on a database that never had the tables does nothing.
	if _, err := migrations.Down(ctx, db, opt); err != nil {
		t.Fatalf("Down before Up: %v", err)
	}
	wantTables(t, db, name, false, false)

	if _, err := migrations.Up(ctx, db, opt); err != nil {
		t.Fatalf("Up: %v", err)
	}
	wantTables(t, db, name, true, true)
	first := wantStatus(t, db, name, true)

	// Idempotent.
	if _, err := migrations.Up(ctx, db, opt); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if again := wantStatus(t, db, name, true); !again[0].AppliedAt.Equal(first[0].AppliedAt) {
		t.Errorf("second Up re-applied version 1: applied at %v, then %v", first[0].AppliedAt, again[0].AppliedAt)
	}

	// The tables work: a key row, its fence row, the unique key.
	hash := bytes.Repeat([]byte{7}, schema.KeyHashLen)
	if _, err := db.Exec("INSERT INTO `"+name+"` (key_hash, resource) VALUES (?, 'order:42')", hash); err != nil {
		t.Fatalf("insert: %v", err)
	}
	if _, err := db.Exec("INSERT INTO `"+name+"` (key_hash) VALUES (?)", hash); err == nil {
		t.Error("a second row with the same key_hash was accepted: the unique key is missing")
	}
	if _, err := db.Exec("INSERT INTO `" + schema.FenceTable(name) + "` (key_hash, token) VALUES (REPEAT('x', 32), 1)"); err != nil {
		t.Fatalf("insert fence: %v", err)
	}
	var idx int
	if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.statistics
		WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? AND non_unique = 0`,
		name, "uk_"+name+"_key_hash").Scan(&idx); err != nil {
		t.Fatal(err)
	}
	if idx != 1 {
		t.Errorf("unique key uk_%s_key_hash not found", name)
	}

	if _, err := migrations.Down(ctx, db, opt); err != nil {
		t.Fatalf("Down: %v", err)
	}
	wantTables(t, db, name, false, true)
	wantStatus(t, db, name, false)

	if _, err := migrations.Up(ctx, db, opt); err != nil {
		t.Fatalf("Up after Down: %v", err)
	}
	wantTables(t, db, name, true, true)
	wantStatus(t, db, name, true)
	if _, err := migrations.Down(ctx, db, opt); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	wantTables(t, db, name, false, true)
}

func TestLongestTableName(t *testing.T) {
	t.Parallel()
	db := open(t)
	name := freshName(t, schema.MaxTableNameLen)
	dropAll(t, db, name)
	if _, err := migrations.Up(context.Background(), db, migrations.Table(name)); err != nil {
		t.Fatalf("Up with a %d-character name: %v", len(name), err)
	}
	wantTables(t, db, name, true, true)
	if _, err := migrations.Down(context.Background(), db, migrations.Table(name)); err != nil {
		t.Fatalf("Down: %v", err)
	}
}

func TestInvalidTableNames(t *testing.T) {
	t.Parallel()
	db := open(t)
	for _, name := range []string{
		"",
		"1tb_lock",
		"tb-lock",
		"tb_lock; DROP TABLE x",
		"tb lock",
		"tb_lock`",
		"tëb_lock",
		strings.Repeat("a", schema.MaxTableNameLen+1),
	} {
		opt := migrations.Table(name)
		ctx := context.Background()
		errs := map[string]error{}
		_, errs["Up"] = migrations.Up(ctx, db, opt)
		_, errs["Down"] = migrations.Down(ctx, db, opt)
		_, errs["Status"] = migrations.Status(ctx, db, opt)
		for op, err := range errs {
			if err == nil {
				t.Errorf("%s(Table(%q)) succeeded", op, name)
			} else if !strings.HasPrefix(err.Error(), "migrations: invalid table name") {
				t.Errorf("%s(Table(%q)) = %q, want a 'migrations: invalid table name' error", op, name, err)
			}
		}
	}
}

func TestNilDB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	errs := map[string]error{}
	_, errs["Up"] = migrations.Up(ctx, nil)
	_, errs["Down"] = migrations.Down(ctx, nil)
	_, errs["Status"] = migrations.Status(ctx, nil)
	for op, err := range errs {
		if err == nil || !strings.HasPrefix(err.Error(), "migrations: nil") {
			t.Errorf("%s(nil) = %v, want a 'migrations: nil *sql.DB' error", op, err)
		}
	}
}

// TestConcurrentUp: six Up calls at once take turns; exactly one of them
// applies the migration and reports it.
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	db := open(t)
	name := freshName(t, 24)
	dropAll(t, db, name)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	reports := make([]migrations.Report, n)
	for i := range n {
		wg.Go(func() {
			reports[i], errs[i] = migrations.Up(context.Background(), db, migrations.Table(name))
		})
	}
	wg.Wait()
	applied := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("Up #%d: %v", i, err)
		}
		if len(reports[i].Applied) > 0 {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("%d of %d concurrent Up calls report having applied version 1, want exactly 1: %+v", applied, n, reports)
	}
	wantStatus(t, db, name, true)
}

// lockName is the server-side name of the migration lock of table, as the
// package computes it.
const lockName = `CONCAT('txlock:migrate:', LEFT(SHA2(CONCAT_WS('.', DATABASE(), ?), 256), 48))`

func TestUpWaitsForTheMigrationLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := open(t)
	name := freshName(t, 22)
	dropAll(t, db, name)

	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var got int
	if err := holder.QueryRowContext(ctx, "SELECT GET_LOCK("+lockName+", 5)", name).Scan(&got); err != nil || got != 1 {
		t.Fatalf("GET_LOCK = %d, %v", got, err)
	}

	start := time.Now()
	_, err = migrations.Up(ctx, db, migrations.Table(name), migrations.LockTimeout(time.Second))
	if err == nil || !strings.Contains(err.Error(), "migration lock") {
		t.Fatalf("Up while another session migrates = %v, want a migration lock timeout", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Up gave up after %v, before its 1 s lock timeout", d)
	}
	wantTables(t, db, name, false, false)

	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = migrations.Up(cctx, db, migrations.Table(name))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Up with an expiring context = %v, want context.DeadlineExceeded", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := migrations.Up(ctx, db, migrations.Table(name))
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if _, err := holder.ExecContext(ctx, "DO RELEASE_LOCK("+lockName+")", name); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Up after the lock was released: %v", err)
	}
	wantTables(t, db, name, true, true)
}

func TestStatusWithoutParseTime(t *testing.T) {
	t.Parallel()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	dsn = strings.ReplaceAll(dsn, "parseTime=true", "parseTime=false")
	raw, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	name := freshName(t, 20)
	dropAll(t, raw, name)
	if _, err := migrations.Up(context.Background(), raw, migrations.Table(name)); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, raw, name, true)
}

func TestLogger(t *testing.T) {
	t.Parallel()
	db := open(t)
	name := freshName(t, 20)
	dropAll(t, db, name)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	if _, err := migrations.Up(context.Background(), db, migrations.Table(name), migrations.Logger(log)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "00001_create_tb_lock.sql") {
		t.Errorf("log lacks the applied migration:\n%s", buf.String())
	}
}

func TestFS(t *testing.T) {
	t.Parallel()
	names, err := fs.Glob(migrations.FS(), "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 || names[0] != "00001_create_tb_lock.sql" {
		t.Fatalf("FS() holds %v, want 00001_create_tb_lock.sql first, at the root", names)
	}
	if migrations.Latest() != int64(len(names)) {
		t.Errorf("Latest() = %d with %d files", migrations.Latest(), len(names))
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
