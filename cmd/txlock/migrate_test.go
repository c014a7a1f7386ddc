package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// tablesExist reports whether table and its fence table exist.
func (f *fixture) tablesExist(t *testing.T) (lock, fence bool) {
	t.Helper()
	sqlDB := f.sqlDB(t)
	for _, c := range []struct {
		name string
		dst  *bool
	}{{f.table, &lock}, {schema.FenceTable(f.table), &fence}} {
		var n int
		if err := sqlDB.QueryRow(`SELECT COUNT(*) FROM information_schema.tables
			WHERE table_schema = DATABASE() AND table_name = ?`, c.name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		*c.dst = n > 0
	}
	return lock, fence
}

// TestBinaryMigrateDownWhileAKeyIsHeld: a DROP of the lock table waits for
// the transaction that holds a key, and every other locker, of any key,
// queues behind the DROP. migrate down used to do just that (after dropping
// the fence table at once); it must refuse, name the held key and leave
// both tables; with --force its DROP must give up quickly, dropping nothing.
func TestBinaryMigrateDownWhileAKeyIsHeld(t *testing.T) {
	f := newFixture(t)
	held, _ := f.held(t, dblock.Resource("down:held"))
	ctx := context.Background()

	// Confirmed on stdin, as an operator would: still refused.
	done := f.startBin(t, "y\n", "migrate", "down")
	var res binResult
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		// The old behaviour: the DROP waits for the holder. Free it so
		// that the binary ends, then fail.
		_ = held.Rollback()
		res = <-done
		t.Fatalf("migrate down stalled while a key was held; after the holder ended: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	}
	t.Logf("migrate down while resource=\"down:held\" is held: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	if res.code != 1 || !strings.Contains(res.errOut, `1 key(s) are held right now (resource="down:held")`) || !strings.Contains(res.errOut, "nothing dropped") {
		t.Errorf("migrate down while a key is held: exit %d, want 1 and a refusal naming the key", res.code)
	}
	if lock, fence := f.tablesExist(t); !lock || !fence {
		t.Fatalf("after the refusal: lock table %v, fence table %v; want both", lock, fence)
	}
	// Lockers of other keys were never held up, and still work.
	if err := f.locker.Do(ctx, dblock.Resource("down:other"), func(context.Context, *gorm.DB) error { return nil }, dblock.WaitTimeout(time.Second)); err != nil {
		t.Errorf("a locker of another key after the refusal: %v", err)
	}

	// --force: the probe's refusal is skipped, but the DROP gives up after
	// its short lock wait, dropping nothing. A locker of another key that
	// arrives while the DROP waits queues behind it until then, and finds
	// the tables still there.
	done = f.startBin(t, "", "migrate", "down", "--force", "--yes")
	sqlDB := f.sqlDB(t)
	// The newest migration's Down starts with an ALTER of the lock table
	// that takes its metadata lock before anything is dropped.
	pollFast(t, "the DDL waiting for the held key's table", func() bool {
		var n int
		if err := sqlDB.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE (INFO LIKE 'DROP TABLE IF EXISTS%' OR INFO LIKE 'ALTER TABLE%') AND INFO LIKE ? AND STATE LIKE 'Waiting for table metadata lock%'`, "%`"+f.table+"`%").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	start := time.Now()
	err := f.locker.Do(ctx, dblock.Resource("down:behind"), func(context.Context, *gorm.DB) error { return nil }, dblock.WaitTimeout(time.Second))
	t.Logf("Do(WaitTimeout(1s)) on another key while the DROP waited: %v after %v", err, time.Since(start))
	if err != nil && !errors.Is(err, dblock.ErrNotAcquired) {
		t.Errorf("a locker of another key while the DROP waited: %v, want success or ErrNotAcquired (its wait ran out), never a missing table", err)
	}
	res = <-done
	t.Logf("migrate down --force --yes while held: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	if res.code != 1 || !strings.Contains(res.errOut, "nothing was dropped") {
		t.Errorf("migrate down --force while a key is held: exit %d, want 1 and nothing dropped", res.code)
	}
	if lock, fence := f.tablesExist(t); !lock || !fence {
		t.Fatalf("after --force gave up: lock table %v, fence table %v; want both", lock, fence)
	}
	if err := held.Tx().Exec("SELECT 1").Error; err != nil {
		t.Fatalf("the holder was hurt: %v", err)
	}
	if err := held.Commit(); err != nil {
		t.Fatal(err)
	}

	// Nobody holds a key: down drops both tables.
	res = <-f.startBin(t, "", "migrate", "down", "--yes")
	if res.code != 0 || !strings.Contains(res.out, fmt.Sprintf("rolled back %d migration(s)", migrations.Latest())) {
		t.Fatalf("migrate down --yes with nothing held: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	}
	if lock, fence := f.tablesExist(t); lock || fence {
		t.Errorf("after migrate down: lock table %v, fence table %v; want neither", lock, fence)
	}
	// testdb's cleanup runs migrations.Down again: nothing left to do.
}

// TestBinaryMigrateDownAsksAndWarns: down drops what every running service
// uses; it says so (stop the services: recreated tables restart row ids),
// names the server, asks, and acts only on an explicitly named server.
func TestBinaryMigrateDownAsksAndWarns(t *testing.T) {
	f := newFixture(t)
	res := <-f.startBin(t, "n\n", "migrate", "down")
	t.Logf("migrate down, answered n: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	for _, want := range []string{
		"Stop every service that uses them first",
		"row ids start again at 1",
		" on " + f.where(t) + " (MariaDB", // the server it acts on
		"Drop " + droppedTables(f.table) + " on ",
		"[y/N]",
		"not confirmed: nothing dropped",
	} {
		if !strings.Contains(res.errOut, want) {
			t.Errorf("migrate down's stderr lacks %q", want)
		}
	}
	if lock, fence := f.tablesExist(t); res.code != 1 || !lock || !fence {
		t.Fatalf("answered n: exit %d, lock table %v, fence table %v; want 1 and both tables", res.code, lock, fence)
	}

	// Neither --dsn nor $DBLOCK_DSN: refused before connecting.
	bin := buildBinary(t)
	out, errOut, err := txlock(t, bin, nil, "migrate", "down", "--yes", "--table", f.table)
	if err == nil || !strings.Contains(errOut, "name the server with --dsn or $"+envDSN) {
		t.Errorf("migrate down without a DSN: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if lock, fence := f.tablesExist(t); !lock || !fence {
		t.Fatalf("migrate down without a DSN dropped the tables of the default server")
	}

	res = <-f.startBin(t, "y\n", "migrate", "down")
	if lock, fence := f.tablesExist(t); res.code != 0 || lock || fence {
		t.Errorf("answered y: exit %d, lock table %v, fence table %v\nstdout: %s\nstderr: %s", res.code, lock, fence, res.out, res.errOut)
	}
}

// TestBinaryMigrateUpRepairsHalfDoneStates: the states that an interrupted
// migration leaves, and that migrate up used to call up to date (or fail
// on with 1050), while doctor said FAIL and advised migrate up.
func TestBinaryMigrateUpRepairsHalfDoneStates(t *testing.T) {
	f := newFixture(t)
	sqlDB := f.sqlDB(t)
	doctorTable := func() (string, int) {
		t.Helper()
		out, _, code := f.exitCode(t, "", "doctor")
		for _, l := range strings.Split(squeeze(out), "\n") {
			if strings.Contains(l, " table ") {
				return l, code
			}
		}
		t.Fatalf("doctor printed no table line:\n%s", out)
		return "", 0
	}
	for _, tc := range []struct {
		name    string
		breakIt []string
	}{
		// The old Down dropped the fence table, then the lock table; the
		// version row goes last.
		{"down interrupted after its first DROP", []string{"DROP TABLE `" + schema.FenceTable(f.table) + "`"}},
		// The old Up created the lock table, then the fence table, then
		// recorded the version.
		{"up interrupted between its CREATEs", []string{
			"DROP TABLE `" + schema.FenceTable(f.table) + "`",
			"DELETE FROM `" + migrations.VersionTable(f.table) + "` WHERE version_id = 1",
		}},
	} {
		for _, q := range tc.breakIt {
			if _, err := sqlDB.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		line, code := doctorTable()
		t.Logf("%s: doctor: %s", tc.name, line)
		if code != 1 || !strings.HasPrefix(line, "FAIL table "+schema.FenceTable(f.table)+" missing") || !strings.Contains(line, "txlock migrate up --table "+f.table) {
			t.Errorf("%s: doctor exit %d, want a FAIL advising migrate up", tc.name, code)
		}
		out, errOut, code := f.exitCode(t, "", "migrate", "up")
		t.Logf("%s: migrate up: exit %d\n%s%s", tc.name, code, out, errOut)
		if code != 0 {
			t.Errorf("%s: migrate up failed", tc.name)
		}
		if lock, fence := f.tablesExist(t); !lock || !fence {
			t.Fatalf("%s: after migrate up: lock table %v, fence table %v; want both", tc.name, lock, fence)
		}
		if line, code := doctorTable(); code != 0 || !strings.HasPrefix(line, "OK table") {
			t.Errorf("%s: doctor after migrate up: exit %d, %s", tc.name, code, line)
		}
		if err := f.locker.Do(context.Background(), dblock.Resource("repaired"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
			t.Errorf("%s: locking after the repair: %v", tc.name, err)
		}
	}
}

// migrationLockSQL is the server-side name of the migration lock of a
// table, as package migrations computes it.
const migrationLockSQL = `CONCAT('txlock:migrate:', LEFT(SHA2(CONCAT_WS('.', DATABASE(), ?), 256), 48))`

// TestBinaryConcurrentMigrateUp: six processes run migrate up at once, all
// queued behind the migration lock: exactly one applies the migration and
// says so; the others say up to date (each used to read the status before
// taking the lock, and all six printed "applied 1 migration(s)").
func TestBinaryConcurrentMigrateUp(t *testing.T) {
	f := newFixture(t)
	sqlDB := f.sqlDB(t)
	ctx := context.Background()
	if _, err := migrations.Down(ctx, sqlDB, migrations.Table(f.table)); err != nil {
		t.Fatal(err)
	}
	// Hold the table's migration lock until all six wait for it.
	holder, err := sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var got int
	if err := holder.QueryRowContext(ctx, "SELECT GET_LOCK("+migrationLockSQL+", 5)", f.table).Scan(&got); err != nil || got != 1 {
		t.Fatalf("GET_LOCK = %d, %v", got, err)
	}
	release := sync.OnceFunc(func() {
		if _, err := holder.ExecContext(ctx, "DO RELEASE_LOCK("+migrationLockSQL+")", f.table); err != nil {
			t.Error(err)
		}
	})
	defer release()
	const n = 6
	results := make([]<-chan binResult, n)
	for i := range results {
		results[i] = f.startBin(t, "", "migrate", "up")
	}
	// Other tests' migrations do not wait: their locks are named after
	// their own tables.
	poll(t, "six migrate up processes waiting for the migration lock", func() (bool, string) {
		var waiting int
		err := sqlDB.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE STATE = 'User lock' AND INFO LIKE '%txlock:migrate:%' AND ID <> CONNECTION_ID()`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		return waiting >= n, strings.Repeat("waiting ", waiting)
	})
	release()
	applied, upToDate := 0, 0
	for i, done := range results {
		res := <-done
		t.Logf("process %d: exit %d: %s%s", i, res.code, res.out, res.errOut)
		switch {
		case res.code != 0:
			t.Errorf("process %d failed", i)
		case strings.Contains(res.out, fmt.Sprintf("applied %d migration(s), now at version %d", migrations.Latest(), migrations.Latest())):
			applied++
		case strings.Contains(res.out, fmt.Sprintf("up to date at version %d", migrations.Latest())):
			upToDate++
		}
	}
	if applied != 1 || upToDate != n-1 {
		t.Errorf("%d process(es) said applied, %d up to date; want 1 and %d", applied, upToDate, n-1)
	}
	st, err := migrations.Status(ctx, sqlDB, migrations.Table(f.table))
	if err != nil || int64(len(st)) != migrations.Latest() || !st[len(st)-1].Applied {
		t.Errorf("Status = %+v, %v", st, err)
	}
	var rows int
	if err := sqlDB.QueryRow("SELECT COUNT(*) FROM `" + migrations.VersionTable(f.table) + "` WHERE version_id = 1").Scan(&rows); err != nil || rows != 1 {
		t.Errorf("%d version rows for version 1 (%v), want exactly 1", rows, err)
	}
}

// TestBinaryDestructiveCommandsNeedAServer: with neither --dsn nor
// $DBLOCK_DSN, release, gc and migrate down refuse before connecting (they
// used to act on the default local database); read-only commands and gc
// --dry-run still use the default.
func TestBinaryDestructiveCommandsNeedAServer(t *testing.T) {
	f := newFixture(t)
	lk, conn := f.held(t, dblock.Resource("nodsn"))
	bin := buildBinary(t)
	for _, args := range [][]string{
		{"release", "--force", "--key", "resource=nodsn"},
		{"gc", "--older-than", "0s"},
		{"migrate", "down", "--yes"},
	} {
		out, errOut, err := txlock(t, bin, nil, append(args, "--table", f.table)...)
		t.Logf("txlock %s without a DSN: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errOut, "does not fall back to "+defaultDSN+": name the server with --dsn or $"+envDSN) {
			t.Errorf("txlock %s without a DSN: want exit 1 naming --dsn and $%s", strings.Join(args, " "), envDSN)
		}
	}
	if err := lk.Tx().Exec("SELECT 1").Error; err != nil {
		t.Fatalf("connection %d, holding resource=nodsn, was hurt by a command that had no DSN: %v", conn, err)
	}
	if lock, fence := f.tablesExist(t); !lock || !fence {
		t.Fatal("a command without a DSN dropped the tables")
	}
	// gc --dry-run changes nothing: it may use the default.
	if _, errOut, _ := txlock(t, bin, nil, "gc", "--dry-run", "--table", f.table); strings.Contains(errOut, "name the server") {
		t.Errorf("gc --dry-run without a DSN was refused: %s", errOut)
	}
	// A DSN without a database is refused too.
	_, errOut, err := txlock(t, bin, nil, "gc", "--dsn", "root@tcp(127.0.0.1:1)/", "--table", f.table)
	if err == nil || !strings.Contains(errOut, "the DSN names no database") {
		t.Errorf("gc with a DSN naming no database: %v, %s", err, errOut)
	}
}

// TestBinaryDestructiveCommandsNameTheirServer: release and gc (without
// --dry-run) say on stderr, before they act, which table on which server
// and database they act on, as migrate down does
// (TestBinaryMigrateDownAsksAndWarns).
func TestBinaryDestructiveCommandsNameTheirServer(t *testing.T) {
	f := newFixture(t)
	for _, args := range [][]string{
		{"release", "--force", "--key", "resource=nobody-holds-this"},
		{"gc", "--older-than", "720h"},
	} {
		out, errOut, code := f.exitCode(t, "", args...)
		t.Logf("txlock %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
		if code != 0 {
			t.Fatalf("txlock %s: exit %d", strings.Join(args, " "), code)
		}
		want := f.table + " on " + f.where(t) + " (MariaDB "
		if !strings.HasPrefix(errOut, "txlock: "+args[0]+" ") || !strings.Contains(strings.SplitN(errOut, "\n", 2)[0], want) {
			t.Errorf("txlock %s: stderr does not start by naming %q", strings.Join(args, " "), want)
		}
	}
}
