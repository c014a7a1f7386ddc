package dblock

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/internal/testdb"
)

// TestRefusalOnServerThatRollsBack: a Locker that believes the server's
// innodb_rollback_on_timeout is OFF (it was when the Locker was created;
// the server has it ON since, after a restart or a failover) refuses a
// NoWait acquisition with the server's 1205, which on this server rolls
// the whole transaction back. The refusal must say the transaction is
// lost, and a transaction the Locker opened must refuse fn's later
// statements rather than run them in autocommit; a bare ErrNotAcquired
// would let fn go on and commit its later writes alone.
func TestRefusalOnServerThatRollsBack(t *testing.T) {
	srv := testdb.ThrowawayFor(t, "--innodb-rollback-on-timeout=ON")
	db := testdb.OpenDSN(t, srv.DSN())
	table := testdb.Table(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := table + "_kv"
	if err := db.Exec("CREATE TABLE `" + kv + "` (k VARCHAR(16) PRIMARY KEY)").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Exec("DROP TABLE IF EXISTS `" + kv + "`").Error })
	put := func(tx *gorm.DB, k string) error { return tx.Exec("INSERT INTO `"+kv+"` (k) VALUES (?)", k).Error }

	l, err := New(db, Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !l.srv.rollbackOnTimeout {
		t.Fatal("the Locker did not read innodb_rollback_on_timeout=ON from the server")
	}
	l.srv.rollbackOnTimeout = false // what it read from the server before
	other, err := New(testdb.OpenDSN(t, srv.DSN()), Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	a, b := Resource("rot:a"), Resource("rot:b")
	held, err := other.Lock(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()

	t.Run("Do", func(t *testing.T) {
		var nested, after error
		err := l.Do(ctx, a, func(ctx context.Context, tx *gorm.DB) error {
			if err := put(tx, "do-before"); err != nil {
				return err
			}
			nested = l.Do(ctx, b, func(context.Context, *gorm.DB) error { return errors.New("fn ran without the lock") }, NoWait())
			after = put(tx, "do-after")
			return nil // a careless fn: Do must report the loss itself
		})
		t.Logf("nested: %v; statement after it: %v; outer: %v", nested, after, err)
		if !errors.Is(nested, ErrNotAcquired) || !errors.Is(nested, ErrLockLost) {
			t.Errorf("nested Do = %v, want ErrNotAcquired and ErrLockLost", nested)
		}
		if !errors.Is(after, ErrLockLost) {
			t.Errorf("a statement after the loss = %v, want ErrLockLost (not run in autocommit)", after)
		}
		if !errors.Is(err, ErrLockLost) {
			t.Errorf("outer Do = %v, want ErrLockLost", err)
		}
	})
	t.Run("LockTx", func(t *testing.T) {
		tx := db.WithContext(ctx).Begin()
		defer tx.Rollback()
		if err := put(tx, "tx-before"); err != nil {
			t.Fatal(err)
		}
		err := l.LockTx(ctx, tx, b, NoWait())
		t.Logf("LockTx in a transaction that holds no lock: %v", err)
		if !errors.Is(err, ErrNotAcquired) || !strings.Contains(err.Error(), "rolled the whole transaction back") {
			t.Errorf("LockTx = %v, want ErrNotAcquired saying the transaction was rolled back", err)
		}
	})
	t.Run("LockTxHoldingLocks", func(t *testing.T) {
		tx := db.WithContext(ctx).Begin()
		defer tx.Rollback()
		if err := l.LockTx(ctx, tx, a); err != nil {
			t.Fatal(err)
		}
		if err := put(tx, "txl-before"); err != nil {
			t.Fatal(err)
		}
		err := l.LockTx(ctx, tx, b, NoWait())
		t.Logf("LockTx in a transaction that holds a: %v", err)
		if !errors.Is(err, ErrNotAcquired) || !errors.Is(err, ErrLockLost) {
			t.Errorf("LockTx = %v, want ErrNotAcquired and ErrLockLost", err)
		}
	})
	var n int
	if err := db.Raw("SELECT COUNT(*) FROM `" + kv + "`").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows of the rolled-back transactions are in the table, want 0", n)
	}
}
