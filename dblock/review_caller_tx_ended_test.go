package dblock_test

import (
	"context"
	"fmt"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// A reentrant Do of a key held by a caller's own transaction sends "one
// locking read, granted at once, which fails with ErrNoTransaction if the
// transaction has ended behind the context's back" (doc.go, Reentrancy).
// The read only fails when database/sql knows the *sql.Tx ended (Commit,
// Rollback). A transaction the server ended (a deadlock victim, 1213; with
// innodb_rollback_on_timeout a 1205; a stale snapshot, 1020) is still open
// for database/sql, and its next statements run in autocommit: the
// locking read is then granted and released at once, Do returns nil and
// runs fn holding nothing, and another process takes the key meanwhile.
// The same holds for a first LockTx (or a joined Do) of a new key in that
// transaction. Reading @@in_transaction with the locking read would tell.

func TestReviewReentrantDoAfterServerRollback(t *testing.T) {
	e, l := setupLocker(t)
	other := e.locker(t)
	defer other.Close()
	kv := e.kvTable(t)
	ctx := ctxT(t)
	a := dblock.Resource("a")
	for _, k := range []string{"r1", "r2"} {
		if err := put(e.db, kv, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	heavy := e.businessTable(t, "heavy", "id INT PRIMARY KEY, v INT")
	if err := e.db.Exec("INSERT INTO `" + heavy + "` SELECT seq, 0 FROM seq_1_to_200").Error; err != nil {
		t.Fatal(err)
	}
	odb := otherPool(t)
	third := odb.WithContext(ctx).Begin()
	defer third.Rollback()
	if err := third.Exec("UPDATE `" + heavy + "` SET v = v + 1").Error; err != nil {
		t.Fatal(err)
	}
	if err := third.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r2'").Error; err != nil {
		t.Fatal(err)
	}

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	tctx := dblock.WithTx(ctx, tx)
	if err := l.LockTx(tctx, tx, a, dblock.NoPriorReads()); err != nil {
		t.Fatal(err)
	}
	if err := tx.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r1'").Error; err != nil {
		t.Fatal(err)
	}
	// The caller's statement on r2 waits for the third transaction, which
	// then asks for r1: a deadlock whose victim is the caller's (lighter).
	thirdDone := make(chan error, 1)
	go func() {
		if err := waitLockWait(odb, kv); err != nil {
			thirdDone <- fmt.Errorf("waiting for %s: %w", "the caller's UPDATE to wait for r2", err)
			return
		}
		thirdDone <- third.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r1'").Error
	}()
	upd := tx.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r2'").Error
	if err := <-thirdDone; err != nil {
		t.Fatalf("third transaction: %v", err)
	}
	if mysqlNumber(t, upd) != 1213 {
		t.Fatalf("caller's UPDATE = %v, want 1213 (the setting of the test)", upd)
	}
	third.Rollback()

	// The server rolled the caller's transaction back: a is free.
	var during error
	ran := false
	err := l.Do(tctx, a, func(ctx context.Context, _ *gorm.DB) error {
		ran = true
		during = freeForOther(other, a)
		return nil
	})
	t.Logf("reentrant Do of a after the server rolled the transaction back: %v; another process's TryLock(a) during fn: %v", err, during)
	if err == nil {
		t.Errorf("reentrant Do(a) = nil in a transaction the server rolled back, want ErrNoTransaction (or ErrLockLost)")
	}
	if ran && during == nil {
		t.Errorf("mutual exclusion: another process took a while the reentrant Do's fn ran")
	}
	// A first acquisition of a new key in that transaction: the same.
	b := dblock.Resource("b")
	err = l.Do(tctx, b, func(ctx context.Context, _ *gorm.DB) error {
		during = freeForOther(other, b)
		return nil
	})
	t.Logf("joined Do of b after the server rolled the transaction back: %v; another process's TryLock(b) during fn: %v", err, during)
	if err == nil && during == nil {
		t.Errorf("joined Do(b) = nil, and another process took b while its fn ran: the transaction had ended on the server")
	}
}
