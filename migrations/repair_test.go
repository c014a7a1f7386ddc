package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// upStatements returns the Up statements of the embedded migrations, as
// another tool would run them from migrations.FS(), renamed for table.
func upStatements(t *testing.T, table string) []string {
	t.Helper()
	names, err := fs.Glob(migrations.FS(), "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		b, err := fs.ReadFile(migrations.FS(), n)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), schema.DefaultTable, table)
		_, up, ok := strings.Cut(text, "-- +goose Up\n")
		if !ok {
			t.Fatalf("%s: no Up section", n)
		}
		up, _, _ = strings.Cut(up, "-- +goose Down\n")
		for _, stmt := range strings.Split(up, ";\n") {
			if stmt = strings.TrimSpace(stmt); stmt != "" {
				out = append(out, stmt)
			}
		}
	}
	return out
}

// migrated returns the test server and a fresh table name on which Up has
// run; the tables are dropped when the test ends.
func migrated(t *testing.T) (*sql.DB, string) {
	t.Helper()
	db := open(t)
	name := freshName(t, 20)
	dropAll(t, db, name)
	if _, err := migrations.Up(context.Background(), db, migrations.Table(name)); err != nil {
		t.Fatal(err)
	}
	return db, name
}

// allVersions lists the versions of the embedded migrations, 1 to Latest.
func allVersions() []int64 {
	var v []int64
	for i := int64(1); i <= migrations.Latest(); i++ {
		v = append(v, i)
	}
	return v
}

// insertKey adds a key row for resource to table name.
func insertKey(t *testing.T, db *sql.DB, name, resource string) {
	t.Helper()
	if _, err := db.Exec("INSERT INTO `"+name+"` (key_hash, resource) VALUES (UNHEX(SHA2(?, 256)), ?)", resource, resource); err != nil {
		t.Fatal(err)
	}
}

// TestUpRepairsTablesMissingDespiteTheRecord: a Down interrupted after its
// first DROP (the old Down SQL dropped the fence table, then the lock
// table) left the lock table without its fence table while the version
// table said applied. Up used to say "up to date"; it must create the
// missing table and keep the existing one (and its rows).
func TestUpRepairsTablesMissingDespiteTheRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, name := migrated(t)
	insertKey(t, db, name, "kept")
	if _, err := db.Exec("DROP TABLE `" + schema.FenceTable(name) + "`"); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, db, name, true) // the record still says applied

	rep, err := migrations.Up(ctx, db, migrations.Table(name))
	if err != nil {
		t.Fatalf("Up over a half-dropped schema: %v", err)
	}
	t.Logf("report: %+v", rep)
	wantTables(t, db, name, true, true)
	wantStatus(t, db, name, true)
	if !slices.Equal(rep.Missing, []string{schema.FenceTable(name)}) || !slices.Equal(rep.Applied, allVersions()) {
		t.Errorf("report = %+v, want every version applied again for the missing %s", rep, schema.FenceTable(name))
	}
	var kept int
	if err := db.QueryRow("SELECT COUNT(*) FROM `" + name + "` WHERE resource = 'kept'").Scan(&kept); err != nil || kept != 1 {
		t.Errorf("the existing lock table lost its row: %d, %v", kept, err)
	}
	// Now complete: nothing more to do.
	if rep, err = migrations.Up(ctx, db, migrations.Table(name)); err != nil || len(rep.Applied) != 0 || len(rep.Missing) != 0 {
		t.Errorf("third Up: %+v, %v; want nothing done", rep, err)
	}

	// Both tables gone, version still recorded: both come back.
	if _, err := db.Exec("DROP TABLE `" + schema.FenceTable(name) + "`, `" + name + "`"); err != nil {
		t.Fatal(err)
	}
	if rep, err = migrations.Up(ctx, db, migrations.Table(name)); err != nil {
		t.Fatal(err)
	}
	wantTables(t, db, name, true, true)
	if len(rep.Missing) != 2 {
		t.Errorf("report = %+v, want both tables missing", rep)
	}
}

// TestUpCompletesAHalfDoneUp: a crash between the two CREATEs of version
// 1 left the lock table alone and nothing recorded; every later Up failed
// with 1050 "already exists". The same state arises when another tool ran
// the files of migrations.FS() (all of them, or part).
func TestUpCompletesAHalfDoneUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := open(t)
	for _, tc := range []struct {
		name string
		run  int // how many of the Up statements ran before
	}{
		{"crash after the first CREATE", 1},
		{"another tool ran every statement", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := freshName(t, 20)
			dropAll(t, db, name)
			stmts := upStatements(t, name)
			if tc.run >= 0 {
				stmts = stmts[:tc.run]
			}
			for _, s := range stmts {
				if _, err := db.Exec(s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
			}
			rep, err := migrations.Up(ctx, db, migrations.Table(name))
			if err != nil {
				t.Fatalf("Up after %d statement(s) ran: %v", len(stmts), err)
			}
			wantTables(t, db, name, true, true)
			wantStatus(t, db, name, true)
			if !slices.Equal(rep.Applied, allVersions()) {
				t.Errorf("report = %+v, want every version applied", rep)
			}
		})
	}
}

// TestEveryMigrationRunsTwice: running the Up statements over a database
// that has them changes nothing and fails nothing, and Down runs over a
// database that has nothing left.
func TestEveryMigrationRunsTwice(t *testing.T) {
	t.Parallel()
	db := open(t)
	name := freshName(t, 20)
	dropAll(t, db, name)
	for range 2 {
		for _, s := range upStatements(t, name) {
			if _, err := db.Exec(s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	wantTables(t, db, name, true, false)
}

// TestDownGivesUpFastWhileAKeyIsHeld: a transaction holds a key row; Down
// must not queue its DROP for long (every locker would queue behind it):
// it fails after its short lock wait, drops nothing, and leaves the
// session's lock_wait_timeout as it was. Once the holder is gone Down
// works.
func TestDownGivesUpFastWhileAKeyIsHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, name := migrated(t)
	insertKey(t, db, name, "held")
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	var id int64
	if err := holder.QueryRow("SELECT id FROM `" + name + "` WHERE resource = 'held' FOR UPDATE").Scan(&id); err != nil {
		t.Fatal(err)
	}

	// One connection: Down's session is the one checked afterwards.
	one := open(t)
	one.SetMaxOpenConns(1)
	var before int64
	if err := one.QueryRow("SELECT @@SESSION.lock_wait_timeout").Scan(&before); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := migrations.Down(dctx, one, migrations.Table(name))
	took := time.Since(start)
	t.Logf("Down while a key is held: %v after %v", err, took)
	var me *gomysql.MySQLError
	if err == nil || !errors.As(err, &me) || me.Number != 1205 || !strings.Contains(err.Error(), "nothing was dropped") {
		t.Fatalf("Down while a key is held = %v, want the lock-wait error 1205 saying nothing was dropped", err)
	}
	wantTables(t, db, name, true, true)
	wantStatus(t, db, name, true)
	if len(rep.RolledBack) != 0 {
		t.Errorf("report = %+v after a failed Down", rep)
	}
	var after int64
	if err := one.QueryRow("SELECT @@SESSION.lock_wait_timeout").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("Down left lock_wait_timeout = %d in the pool's session, was %d", after, before)
	}

	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	if rep, err = migrations.Down(ctx, one, migrations.Table(name)); err != nil {
		t.Fatalf("Down after the holder ended: %v", err)
	}
	if want := slices.Backward(allVersions()); !slices.Equal(rep.RolledBack, slices.Collect(func(yield func(int64) bool) {
		for _, v := range want {
			if !yield(v) {
				return
			}
		}
	})) {
		t.Errorf("report = %+v, want every version rolled back, newest first", rep)
	}
	wantTables(t, db, name, false, true)
}
