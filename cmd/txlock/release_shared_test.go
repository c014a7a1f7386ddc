package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// readOnlyTx opens a transaction on a new connection that reads and
// writes nothing more, and leaves it open and idle until the test ends;
// it returns the transaction and its connection id. MariaDB's lock views
// give it the id 0, as they give a transaction that holds only shared
// locks.
func (f *fixture) readOnlyTx(t *testing.T) (*gorm.DB, int64) {
	t.Helper()
	tx := f.db.Begin()
	t.Cleanup(func() { tx.Rollback() })
	var n, conn int64
	if err := tx.Raw("SELECT COUNT(*) FROM `" + f.table + "`").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Raw("SELECT CONNECTION_ID()").Row().Scan(&conn); err != nil {
		t.Fatal(err)
	}
	return tx, conn
}

// sharedLock takes key shared through the fixture's Locker and returns
// the lock and its connection id; rolled back when the test ends.
func (f *fixture) sharedLock(t *testing.T, key dblock.Key) (*dblock.Lock, int64) {
	t.Helper()
	lk, err := f.locker.Lock(context.Background(), key, dblock.Shared())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lk.Rollback() })
	return lk, connID(t, lk)
}

// sharedNamed takes key shared in a transaction of the fixture's pool that
// has written a row first, which MariaDB's lock views then name; it
// returns the transaction and its connection id, rolled back when the
// test ends.
func (f *fixture) sharedNamed(t *testing.T, key dblock.Key) (*gorm.DB, int64) {
	t.Helper()
	if f.biz == "" {
		// Dropped after every transaction that wrote to it has ended.
		biz := f.table + "_biz"
		if err := f.db.Exec("CREATE TABLE `" + biz + "` (id BIGINT AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB").Error; err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.db.Exec("DROP TABLE IF EXISTS `" + biz + "`") })
		f.biz = biz
	}
	tx := f.db.Begin()
	t.Cleanup(func() { tx.Rollback() })
	if err := tx.Exec("INSERT INTO `" + f.biz + "` VALUES (NULL)").Error; err != nil {
		t.Fatal(err)
	}
	if err := f.locker.LockTx(context.Background(), tx, key, dblock.Shared()); err != nil {
		t.Fatal(err)
	}
	var conn int64
	if err := tx.Raw("SELECT CONNECTION_ID()").Row().Scan(&conn); err != nil {
		t.Fatal(err)
	}
	return tx, conn
}

// TestBinaryReleaseShared: a key held shared by two transactions that
// MariaDB names: release lists both, asks once for both, kills both (the
// key is released only when every shared holder is gone), and the writer
// waiting behind them gets the key.
func TestBinaryReleaseShared(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("rel:shared")
	tx1, c1 := f.sharedNamed(t, key)
	tx2, c2 := f.sharedNamed(t, key)
	w := f.wait(t, key)
	ids := []string{strconv.FormatInt(c1, 10), strconv.FormatInt(c2, 10)}

	out, errOut, code := f.exitCode(t, "n\n", "release", "--key", "resource=rel:shared")
	t.Logf("answer n (exit %d)\nstdout:\n%sstderr:\n%s", code, out, errOut)
	if code != 1 || !strings.Contains(errOut, "nothing killed") || strings.Contains(errOut, "killed connection") {
		t.Errorf("answer n: exit %d, want 1 and nothing killed", code)
	}
	if err := tx1.Exec("SELECT 1").Error; err != nil {
		t.Fatalf("a shared holder was hurt without confirmation: %v", err)
	}

	out, errOut, code = f.exitCode(t, "y\n", "release", "--key", "resource=rel:shared")
	t.Logf("answer y (exit %d)\nstdout:\n%sstderr:\n%s", code, out, errOut)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"is held shared by 2 transaction(s)", "connection " + ids[0] + " (", "connection " + ids[1] + " ("} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if q := "Kill connections " + ids[0] + ", " + ids[1] + " (every holder: the key is held shared)? [y/N]"; !strings.Contains(errOut, q) {
		t.Errorf("stderr lacks the question %q", q)
	}
	for _, id := range ids {
		if !strings.Contains(errOut, "killed connection "+id+" ") {
			t.Errorf("stderr does not log the kill of connection %s", id)
		}
	}
	for i, tx := range []*gorm.DB{tx1, tx2} {
		if err := tx.Exec("SELECT 1").Error; err == nil {
			t.Errorf("shared holder %d (connection %s) still runs statements after release", i+1, ids[i])
		}
	}
	select {
	case got := <-w.got:
		t.Logf("the waiting writer got the key on connection %d", got)
		w.let()
	case <-w.done:
		t.Fatalf("waiter: %v", w.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the writer waiting behind the shared holders did not get the key after release")
	}
}

// TestBinaryReleaseSharedUnnamedKillsNothing: a key held shared by
// transactions that have written nothing, which MariaDB's lock views give
// the id 0 like every read-only transaction, beside an idle read-only
// transaction that holds nothing. release used to name (and kill) a
// connection of id 0 that held nothing; it must refuse, kill nothing, and
// say why.
func TestBinaryReleaseSharedUnnamedKillsNothing(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("rel:shared-ro")
	holder, holderConn := f.sharedLock(t, key)
	innocent, innocentConn := f.readOnlyTx(t)
	out, errOut, code := f.exitCode(t, "", "release", "--force", "--key", "resource=rel:shared-ro")
	t.Logf("holder %d, read-only transaction %d\ntxlock release --force (exit %d)\nstdout:\n%sstderr:\n%s", holderConn, innocentConn, code, out, errOut)
	if strings.Contains(errOut, "killed connection") {
		t.Errorf("release killed a connection")
	}
	if err := innocent.Exec("SELECT 1").Error; err != nil {
		t.Fatalf("the read-only transaction of connection %d, which holds nothing, was hurt: %v", innocentConn, err)
	}
	if err := holder.Tx().Exec("SELECT 1").Error; err != nil {
		t.Fatalf("the shared holder was hurt: %v", err)
	}
	if code != 1 || !strings.Contains(errOut, "held shared") || strings.Contains(out, "is held by connection "+strconv.FormatInt(innocentConn, 10)) {
		t.Errorf("exit %d: want 1 and a refusal that says the key is held shared", code)
	}

	// With a named shared holder beside it: killing that one alone would
	// not release the key. Refused too.
	named, namedConn := f.sharedNamed(t, key)
	out, errOut, code = f.exitCode(t, "", "release", "--force", "--key", "resource=rel:shared-ro")
	t.Logf("beside named shared holder %d: exit %d\nstdout:\n%sstderr:\n%s", namedConn, code, out, errOut)
	if code != 1 || strings.Contains(errOut, "killed connection") || !strings.Contains(errOut, "and by connection(s) "+strconv.FormatInt(namedConn, 10)) {
		t.Errorf("exit %d: want 1, nothing killed, and the named holder mentioned", code)
	}
	for _, tx := range []*gorm.DB{named, holder.Tx(), innocent} {
		if err := tx.Exec("SELECT 1").Error; err != nil {
			t.Fatalf("a transaction was hurt: %v", err)
		}
	}
}
