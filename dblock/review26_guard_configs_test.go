package dblock_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// TestReview26GuardNoWaitRefusalAcrossConfigs (a passing guard): on every
// client configuration the zero lock-wait read meets (a plain pool, the
// hierarchy on, gorm PrepareStmt, autocommit=0 in the DSN, a READ
// COMMITTED caller's transaction, a DSN readTimeout, innodb_lock_wait_timeout
// in the DSN), a key held by another transaction is refused to TryLock
// (exclusive and shared) and to a WaitTimeout of 1 ns; in a caller's
// transaction that holds a key and wrote, LockTx with NoWait, LockTx with
// WaitTimeout(1ns) and a DoMulti with NoWait are refused without a loss;
// the transaction then takes a held key again (reentrant), the key the
// refused DoMulti took (still held against others), and a new key; a new
// key is created meanwhile by another process (no gap lock left); and the
// writes before and after the refusals commit.
func TestReview26GuardNoWaitRefusalAcrossConfigs(t *testing.T) {
	for _, c := range []struct {
		name string
		open func(t *testing.T) *gorm.DB
		txo  *sql.TxOptions
		hier bool
	}{
		{name: "plain", open: func(t *testing.T) *gorm.DB { return testdb.Open(t) }},
		{name: "hier", open: func(t *testing.T) *gorm.DB { return testdb.Open(t) }, hier: true},
		{name: "prepare", open: func(t *testing.T) *gorm.DB {
			return openGorm(t, &gorm.Config{PrepareStmt: true, Logger: logger.Discard})
		}},
		{name: "autocommit0", open: func(t *testing.T) *gorm.DB {
			return testdb.OpenDSN(t, dsnWith(t, func(c *gomysql.Config) {
				if c.Params == nil {
					c.Params = map[string]string{}
				}
				c.Params["autocommit"] = "0"
			}))
		}},
		{name: "readcommitted", open: func(t *testing.T) *gorm.DB { return testdb.Open(t) }, txo: &sql.TxOptions{Isolation: sql.LevelReadCommitted}},
		{name: "readTimeout", open: func(t *testing.T) *gorm.DB {
			return testdb.OpenDSN(t, dsnWith(t, func(c *gomysql.Config) { c.ReadTimeout = 2 * time.Second }))
		}},
		{name: "ilwt", open: func(t *testing.T) *gorm.DB {
			return testdb.OpenDSN(t, dsnWith(t, func(c *gomysql.Config) {
				if c.Params == nil {
					c.Params = map[string]string{}
				}
				c.Params["innodb_lock_wait_timeout"] = "3"
			}))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := c.open(t)
			table := testdb.Table(t, db)
			if c.hier {
				sdb, err := db.DB()
				if err != nil {
					t.Fatal(err)
				}
				env{db: db, sqlDB: sdb, table: table}.setHierarchy(t, true)
			}
			l, err := dblock.New(db, dblock.Table(table))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx := ctxT(t)
			kv := table + "_kv"
			if err := db.Exec("CREATE TABLE `" + kv + "` (k VARCHAR(64) PRIMARY KEY, v BIGINT)").Error; err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Exec("DROP TABLE IF EXISTS `" + kv + "`").Error })
			b := dblock.Key{Resource: "b", User: "u"}
			other, err := l.TryLock(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			defer other.Rollback()
			if _, err := l.TryLock(ctx, b); !errors.Is(err, dblock.ErrNotAcquired) {
				t.Errorf("TryLock(b) of a held key = %v, want ErrNotAcquired", err)
			}
			if _, err := l.TryLock(ctx, b, dblock.Shared()); !errors.Is(err, dblock.ErrNotAcquired) {
				t.Errorf("TryLock(b, Shared) of a held key = %v, want ErrNotAcquired", err)
			}
			if _, err := l.Lock(ctx, b, dblock.WaitTimeout(time.Nanosecond)); !errors.Is(err, dblock.ErrNotAcquired) {
				t.Errorf("Lock(b, WaitTimeout(1ns)) of a held key = %v, want ErrNotAcquired", err)
			}
			var tx *gorm.DB
			if c.txo != nil {
				tx = db.WithContext(ctx).Begin(c.txo)
			} else {
				tx = db.WithContext(ctx).Begin()
			}
			defer tx.Rollback()
			if err := tx.Exec("INSERT INTO `" + kv + "` VALUES ('before', 1)").Error; err != nil {
				t.Fatal(err)
			}
			if err := l.LockTx(ctx, tx, dblock.Resource("a")); err != nil {
				t.Fatal(err)
			}
			err = l.LockTx(ctx, tx, b, dblock.NoWait())
			t.Logf("refused: %v", err)
			if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, dblock.ErrLockLost) {
				t.Errorf("LockTx(b, NoWait) = %v, want ErrNotAcquired without ErrLockLost", err)
			}
			err = l.LockTx(ctx, tx, b, dblock.WaitTimeout(time.Nanosecond))
			if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, dblock.ErrLockLost) {
				t.Errorf("LockTx(b, WaitTimeout(1ns)) = %v, want ErrNotAcquired without ErrLockLost", err)
			}
			err = l.DoMulti(dblock.WithTx(ctx, tx), []dblock.Key{dblock.Resource("c"), b}, func(context.Context, *gorm.DB) error {
				t.Error("fn ran")
				return nil
			}, dblock.NoWait())
			if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, dblock.ErrLockLost) {
				t.Errorf("DoMulti(c, b, NoWait) = %v, want ErrNotAcquired without ErrLockLost", err)
			}
			if err := l.LockTx(ctx, tx, dblock.Resource("a"), dblock.NoWait()); err != nil {
				t.Errorf("LockTx(a, NoWait) of a key the transaction holds = %v, want nil", err)
			}
			if err := l.LockTx(ctx, tx, dblock.Resource("c"), dblock.NoWait()); err != nil {
				t.Errorf("LockTx(c, NoWait) after the refused DoMulti took c = %v, want nil", err)
			}
			if err := l.LockTx(ctx, tx, dblock.Resource("d"), dblock.NoWait()); err != nil {
				t.Errorf("LockTx(d, NoWait) of a free key after the refusals = %v, want nil", err)
			}
			if err := l.Do(ctx, dblock.Resource("new-"+c.name), func(context.Context, *gorm.DB) error { return nil }); err != nil {
				t.Errorf("Do of a new key while the refused transaction is open = %v, want nil", err)
			}
			if _, err := l.TryLock(ctx, dblock.Resource("c")); !errors.Is(err, dblock.ErrNotAcquired) {
				t.Errorf("TryLock(c) by another transaction = %v, want ErrNotAcquired (the transaction holds c)", err)
			}
			if err := tx.Exec("INSERT INTO `" + kv + "` VALUES ('after', 1)").Error; err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit().Error; err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.Raw("SELECT COUNT(*) FROM `" + kv + "`").Row().Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 2 {
				t.Errorf("%d of the transaction's 2 writes committed", n)
			}
		})
	}
}
