package dblock_test

// Compositions: Lockers on two databases nested in each other, two Lockers
// sharing one pool, a caller's transaction that ended while its context
// lives on, fencing tokens of reentrant acquisitions.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// secondDatabase creates a database of the test's own on the test server
// (dropped when the test ends) and returns a pool on it.
func secondDatabase(t *testing.T) *gorm.DB {
	t.Helper()
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		t.Fatal(err)
	}
	name := "test_y_" + hex.EncodeToString(suffix[:])
	admin := otherPool(t)
	if err := admin.Exec("CREATE DATABASE `" + name + "`").Error; err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := admin.Exec("DROP DATABASE IF EXISTS `" + name + "`").Error; err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	return faultOpen(t, dsnWith(t, func(c *gomysql.Config) { c.DBName = name }))
}

// rowIDOf returns the id of the row of the Resource key name in table.
func rowIDOf(t *testing.T, db *gorm.DB, table, name string) int64 {
	t.Helper()
	var id int64
	if err := db.Raw("SELECT id FROM `"+table+"` WHERE resource = ?", name).Row().Scan(&id); err != nil {
		t.Fatalf("id of %s in %s: %v", name, table, err)
	}
	return id
}

// TestNestedDoOnAnotherDatabaseOpensItsOwn (issue 14 item 2): ly.Do (a
// Locker on database Y) inside lx.Do (database X, the same lock table
// name) opens its own transaction in Y instead of joining X's: while the
// inner fn runs the key is held in Y, and free again once it returns; another
// key locks Y's row, not the row of X that has the same id; DB gives each
// database its own transaction; a nested lx.Do of the outer key stays
// reentrant on X.
func TestNestedDoOnAnotherDatabaseOpensItsOwn(t *testing.T) {
	e, lx := setupLocker(t)
	ydb := secondDatabase(t)
	testdb.TableNamed(t, ydb, e.table)
	ly := faultLocker(t, ydb, e.table)
	biz := e.businessTable(t, "biz", "k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL")
	if err := ydb.Exec("CREATE TABLE `" + biz + "` (k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB").Error; err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	k, kx, k2 := dblock.Resource("k"), dblock.Resource("kx"), dblock.Resource("k2")
	// Rows in creation order: X has k and kx, Y has k and k2, so that Y's
	// k2 has the id of X's kx.
	for _, c := range []struct {
		l   *dblock.Locker
		key dblock.Key
	}{{lx, k}, {lx, kx}, {ly, k}, {ly, k2}} {
		assertFree(t, c.l, c.key)
	}
	if x, y := rowIDOf(t, e.db, e.table, "kx"), rowIDOf(t, ydb, e.table, "k2"); x != y {
		t.Fatalf("setup: X's kx has id %d, Y's k2 id %d; want the same", x, y)
	}

	var problems []error
	check := func(err error, what string) {
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", what, err))
		}
	}
	err := lx.Do(ctx, k, func(ctx context.Context, xtx *gorm.DB) error {
		inner := ly.Do(ctx, k, func(ctx context.Context, ytx *gorm.DB) error {
			check(heldByOther(ly, k), "inside ly.Do(k), Y's k")
			if sameTx(ytx, xtx) {
				problems = append(problems, errors.New("ly.Do's fn got X's transaction"))
			}
			if err := put(dblock.DB(ctx, ydb), biz, "y", 1); err != nil {
				return err
			}
			if err := put(dblock.DB(ctx, e.db), biz, "x", 1); err != nil {
				return err
			}
			return lx.Do(ctx, k, func(_ context.Context, got *gorm.DB) error {
				if !sameTx(got, xtx) {
					problems = append(problems, errors.New("lx.Do(k) inside ly's fn did not run in X's outer transaction"))
				}
				return nil
			})
		})
		if inner != nil {
			return fmt.Errorf("ly.Do(k): %w", inner)
		}
		check(freeForOther(ly, k), "after ly.Do(k) returned, Y's k")
		if v := get(t, ydb, biz, "y"); v != 1 {
			problems = append(problems, fmt.Errorf("the write through DB(ctx, ydb) is not in Y once ly.Do committed (%d)", v))
		}
		if v := get(t, e.db, biz, "x"); v != -1 {
			problems = append(problems, fmt.Errorf("the write through DB(ctx, xdb) was committed before the outer lx.Do (%d)", v))
		}
		return ly.Do(ctx, k2, func(context.Context, *gorm.DB) error {
			check(heldByOther(ly, k2), "inside ly.Do(k2), Y's k2")
			check(freeForOther(lx, kx), "inside ly.Do(k2), X's kx (the row of X with k2's id in Y)")
			return nil
		})
	})
	if err != nil {
		t.Errorf("lx.Do: %v", err)
	}
	if v := get(t, e.db, biz, "x"); v != 1 {
		t.Errorf("the write through DB(ctx, xdb) is not in X after the outer lx.Do (%d)", v)
	}
	if v := get(t, e.db, biz, "y"); v != -1 {
		t.Errorf("the write through DB(ctx, ydb) went to X (%d)", v)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestLockersSharingAPoolKeepTheirLease (issue 14 item 3): two Lockers on
// one pool of one connection. A (lease 60 s) takes and releases a lock,
// then B (Lease(2s)) does, setting its lease on the same connection; then A
// takes a lock there and stays idle 5 s. The session setting is the
// connection's, not A's memory of it: the key stays held throughout (a
// third party's TryLock keeps failing), A's Err is nil and Commit succeeds.
func TestLockersSharingAPoolKeepTheirLease(t *testing.T) {
	e := setup(t)
	e.sqlDB.SetMaxOpenConns(1)
	e.sqlDB.SetMaxIdleConns(1)
	a := e.locker(t)
	defer a.Close()
	b := e.locker(t, dblock.Defaults(dblock.Lease(2*time.Second)))
	defer b.Close()
	third := faultLocker(t, otherPool(t), e.table)
	ctx := ctxT(t)
	noop := func(context.Context, *gorm.DB) error { return nil }
	if err := a.Do(ctx, dblock.Resource("a-first"), noop); err != nil {
		t.Fatal(err)
	}
	if err := b.Do(ctx, dblock.Resource("b"), noop); err != nil {
		t.Fatal(err)
	}
	key := dblock.Resource("a")
	k, err := a.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Rollback()
	const idle = 3 * time.Second // beyond B's 2 s lease
	start := time.Now()
	polls := 0
	for time.Since(start) < idle { // the idle holder is the behaviour under test
		polls++
		if err := heldByOther(third, key); err != nil {
			t.Fatalf("after %v idle: %v", time.Since(start).Round(time.Millisecond), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("A's key held through %v idle (%d polls)", idle, polls)
	if err := k.Err(); err != nil {
		t.Errorf("A's Err after %v idle = %v, want nil", idle, err)
	}
	if err := k.Commit(); err != nil {
		t.Errorf("A's Commit = %v, want nil", err)
	}
}

// TestDoAfterCallerTxEndedFails (issue 14 item 5): a WithTx context
// outlives the caller's transaction. Once the caller committed or rolled
// it back, a Do of a key recorded in that context fails with
// ErrNoTransaction and does not run fn (it would run holding nothing).
func TestDoAfterCallerTxEndedFails(t *testing.T) {
	e, l := setupLocker(t)
	key := dblock.Resource("k")
	noop := func(context.Context, *gorm.DB) error { return nil }
	for _, c := range []struct {
		name    string
		acquire func(ctx context.Context, tx *gorm.DB) error
		end     func(tx *gorm.DB) error
	}{
		{"LockTx then Commit", func(ctx context.Context, tx *gorm.DB) error { return l.LockTx(ctx, tx, key) },
			func(tx *gorm.DB) error { return tx.Commit().Error }},
		{"Do then Rollback", func(ctx context.Context, _ *gorm.DB) error { return l.Do(ctx, key, noop) },
			func(tx *gorm.DB) error { return tx.Rollback().Error }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxT(t)
			tx := e.db.WithContext(ctx).Begin()
			if tx.Error != nil {
				t.Fatal(tx.Error)
			}
			defer tx.Rollback()
			ctx = dblock.WithTx(ctx, tx)
			if err := c.acquire(ctx, tx); err != nil {
				t.Fatal(err)
			}
			if err := c.end(tx); err != nil {
				t.Fatal(err)
			}
			err := l.Do(ctx, key, fnMustNotRun(t))
			t.Logf("Do after the caller's transaction ended: %v", err)
			if !errors.Is(err, dblock.ErrNoTransaction) {
				t.Errorf("Do = %v, want ErrNoTransaction", err)
			}
			assertFree(t, l, key)
		})
	}
}

// TestReentrantDoKeepsFencingToken (issue 14 item 21): a reentrant Do of a
// held key with Fencing sees a token in fn: the outer acquisition's when it
// took one (Do or Lock with Fencing), else one taken now, above every
// earlier token of the key.
func TestReentrantDoKeepsFencingToken(t *testing.T) {
	_, l := setupLocker(t)
	key := dblock.Resource("k")
	// inner is the nested acquisition: Do(key, Fencing()) and the token fn sees.
	inner := func(ctx context.Context) (int64, bool, error) {
		var tok int64
		var ok bool
		err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
			tok, ok = dblock.TokenFrom(ctx, key)
			return nil
		}, dblock.Fencing())
		return tok, ok, err
	}

	t.Run("outer Do with Fencing", func(t *testing.T) {
		ctx := ctxT(t)
		var outer, got int64
		var ok bool
		err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
			outer, _ = dblock.TokenFrom(ctx, key)
			var err error
			got, ok, err = inner(ctx)
			return err
		}, dblock.Fencing())
		t.Logf("outer token %d, nested %d (%v)", outer, got, ok)
		if err != nil {
			t.Fatal(err)
		}
		if outer <= 0 || !ok || got != outer {
			t.Errorf("nested Do(Fencing) in Do(Fencing): TokenFrom = %d, %v; want the outer token %d (> 0)", got, ok, outer)
		}
	})
	t.Run("outer Lock with Fencing", func(t *testing.T) {
		ctx := ctxT(t)
		k, err := l.Lock(ctx, key, dblock.Fencing())
		if err != nil {
			t.Fatal(err)
		}
		defer k.Rollback()
		got, ok, err := inner(k.Context(ctx))
		t.Logf("Lock token %d, nested %d (%v)", k.Token(), got, ok)
		if err != nil {
			t.Fatal(err)
		}
		if k.Token() <= 0 || !ok || got != k.Token() {
			t.Errorf("nested Do(Fencing) under Lock(Fencing).Context: TokenFrom = %d, %v; want the Lock's %d (> 0)", got, ok, k.Token())
		}
		if err := k.Commit(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("outer Do without Fencing", func(t *testing.T) {
		ctx := ctxT(t)
		earlier, _, err := inner(ctx) // a token of the key taken before
		if err != nil || earlier <= 0 {
			t.Fatalf("a first Do(Fencing): token %d, %v", earlier, err)
		}
		var got int64
		var ok bool
		err = l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
			var err error
			got, ok, err = inner(ctx)
			return err
		})
		t.Logf("earlier token %d, nested Do(Fencing) in a Do without: %d (%v)", earlier, got, ok)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || got <= earlier {
			t.Errorf("nested Do(Fencing) in Do without Fencing: TokenFrom = %d, %v; want a token above the earlier %d", got, ok, earlier)
		}
	})
}
