package dblock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/internal/testdb"
)

// TestReadOnlyServer, on a throwaway mariadbd of its own: New refuses a
// read-only server (ErrReadOnly) for an unprivileged account and for root
// alike, and a holder whose server is switched to read-only while it holds
// the lock gets ErrLockLost (error 1290) at its next write or at COMMIT,
// never a success.
func TestReadOnlyServer(t *testing.T) {
	verifyNoGoroutineLeak(t)
	srv := testdb.ThrowawayFor(t)
	root := faultOpen(t, srv.DSN())
	table := testdb.Table(t, root)
	ctx := ctxT(t)
	for _, q := range []string{
		"CREATE USER 'txl'@'%'",
		"GRANT ALL ON test.* TO 'txl'@'%'",
		"CREATE USER 'txs'@'%'", // SUPER, which no longer bypasses read_only from MariaDB 10.11
		"GRANT SUPER ON *.* TO 'txs'@'%'",
		"GRANT ALL ON test.* TO 'txs'@'%'",
		"CREATE TABLE biz_ro (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO biz_ro VALUES (1, 0), (2, 0)",
	} {
		if err := root.WithContext(ctx).Exec(q).Error; err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	setReadOnly := func(on bool) {
		t.Helper()
		v := "0"
		if on {
			v = "1"
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := root.WithContext(sctx).Exec("SET GLOBAL read_only = " + v).Error; err != nil {
			t.Fatalf("SET GLOBAL read_only = %s: %v", v, err)
		}
	}
	t.Cleanup(func() { _ = root.Exec("SET GLOBAL read_only = 0").Error })

	user := faultOpen(t, strings.Replace(srv.DSN(), "root@", "txl@", 1))
	l := faultLocker(t, user, table) // read-write: accepted

	// Holders that have the lock when read_only is switched on.
	writeFirst, err := l.Lock(ctx, dblock.Resource("ro:commit"))
	if err != nil {
		t.Fatal(err)
	}
	defer writeFirst.Rollback()
	if err := writeFirst.Tx().Exec("UPDATE biz_ro SET v = v + 1 WHERE id = 1").Error; err != nil {
		t.Fatal(err)
	}
	writeAfter, err := l.Lock(ctx, dblock.Resource("ro:write"))
	if err != nil {
		t.Fatal(err)
	}
	defer writeAfter.Rollback()

	setReadOnly(true)

	// A write after the switch: 1290, the lock is lost, Commit says so.
	err = writeAfter.Tx().Exec("UPDATE biz_ro SET v = v + 1 WHERE id = 2").Error
	if n := mysqlNumber(t, err); n != 1290 {
		t.Fatalf("write on the read-only server = %v, want error 1290", err)
	}
	if !isClosed(writeAfter.Lost()) {
		t.Error("Lost() not closed after the write failed with 1290")
	}
	if err := writeAfter.Commit(); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Commit after the 1290 = %v, want ErrLockLost", err)
	}
	// A transaction that wrote before the switch: its COMMIT fails.
	err = writeFirst.Commit()
	if !errors.Is(err, dblock.ErrLockLost) || mysqlNumber(t, err) != 1290 {
		t.Errorf("Commit on the read-only server = %v, want ErrLockLost wrapping error 1290", err)
	}
	var v1, v2 int
	if err := root.WithContext(ctx).Raw("SELECT (SELECT v FROM biz_ro WHERE id = 1), (SELECT v FROM biz_ro WHERE id = 2)").Row().Scan(&v1, &v2); err != nil {
		t.Fatal(err)
	}
	if v1 != 0 || v2 != 0 {
		t.Errorf("business rows after the failed commits: %d, %d, want 0, 0", v1, v2)
	}

	// New on the read-only server.
	if _, err := dblock.New(user, dblock.Table(table)); !errors.Is(err, dblock.ErrReadOnly) {
		t.Errorf("New (unprivileged) on a read-only server = %v, want ErrReadOnly", err)
	}
	if _, err := dblock.New(root, dblock.Table(table)); !errors.Is(err, dblock.ErrReadOnly) {
		t.Errorf("New (root) on a read-only server = %v, want ErrReadOnly", err)
	}
	lr := faultLocker(t, user, table, dblock.AllowReadOnly())
	// The server refuses the locking read to an account that cannot
	// bypass read_only (1290); an account that can still locks there.
	nop := func(context.Context, *gorm.DB) error { return nil }
	if err := lr.Do(ctx, dblock.Resource("ro:write"), nop); !errors.Is(err, dblock.ErrReadOnly) || mysqlNumber(t, err) != 1290 {
		t.Errorf("Do (unprivileged) on a read-only server = %v, want ErrReadOnly wrapping error 1290", err)
	}
	superDB := faultOpen(t, strings.Replace(srv.DSN(), "root@", "txs@", 1))
	super := faultLocker(t, superDB, table, dblock.AllowReadOnly())
	var version string
	if err := superDB.WithContext(ctx).Raw("SELECT VERSION()").Row().Scan(&version); err != nil {
		t.Fatal(err)
	}
	if major, minor, _, _ := serverinfo.ParseVersion(version); major > 10 || major == 10 && minor >= 11 {
		if err := super.Do(ctx, dblock.Resource("ro:write"), nop); !errors.Is(err, dblock.ErrReadOnly) {
			t.Errorf("Do (SUPER, MariaDB 10.11+) on a read-only server = %v, want ErrReadOnly", err)
		}
	}
	lroot := faultLocker(t, root, table, dblock.AllowReadOnly())
	if err := lroot.Do(ctx, dblock.Resource("ro:write"), nop); err != nil {
		t.Errorf("Do (root) on a read-only server = %v", err)
	}
	setReadOnly(false)
}
