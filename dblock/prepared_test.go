package dblock_test

// gorm's prepared statements (gorm.Config.PrepareStmt, or a Session with
// PrepareStmt): the library's own statements must not go through gorm's
// statement cache, and the holder's prepared statements must not collide
// with the lease's keepalive.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestPrepareStmtCacheNotGrownByLocks (issue 14 item 14): with gorm's
// PrepareStmt, 500 LockTx and 500 Do under WithTx acquisitions (each
// locking statement has a text of its own) leave gorm's prepared statement
// cache as it was: the library's statements are never prepared through it.
// (Before the fix, every acquisition added an entry: 1,000 acquisitions
// show the growth as well as the 2,000, in half the time.)
func TestPrepareStmtCacheNotGrownByLocks(t *testing.T) {
	e := setup(t)
	db := openGorm(t, &gorm.Config{PrepareStmt: true})
	l := faultLocker(t, db, e.table)
	pdb, ok := db.ConnPool.(*gorm.PreparedStmtDB)
	if !ok {
		t.Fatalf("gorm with PrepareStmt has a %T, want *gorm.PreparedStmtDB", db.ConnPool)
	}
	ctx := ctxT(t)
	key := dblock.Resource("k")
	noop := func(context.Context, *gorm.DB) error { return nil }
	before := len(pdb.Stmts.Keys())
	const each = 500
	start := time.Now()
	for i := range 2 * each {
		err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if i < each {
				return l.LockTx(ctx, tx, key)
			}
			return l.Do(dblock.WithTx(ctx, tx), key, noop)
		})
		if err != nil {
			t.Fatalf("acquisition %d: %v", i, err)
		}
	}
	keys := pdb.Stmts.Keys()
	t.Logf("%d acquisitions in %v; gorm's statement cache: %d entries before, %d after", 2*each, time.Since(start).Round(time.Millisecond), before, len(keys))
	var library []string
	for _, k := range keys {
		if strings.Contains(k, e.table) || strings.Contains(k, "innodb_snapshot_isolation") {
			library = append(library, k)
		}
	}
	if len(library) > 0 {
		t.Errorf("%d of the library's statements went through gorm's prepared statement cache, e.g. %q", len(library), library[0])
	}
	if len(keys)-before > 10 {
		t.Errorf("gorm's statement cache grew by %d entries over %d acquisitions", len(keys)-before, 2*each)
	}
}

// TestPreparedSessionInFnKeepsLock (issue 14 item 15): inside Do with
// Lease(2s), fn runs statements through a gorm Session with PrepareStmt
// (they bypass the lock's connection wrapper) for 4 s, two leases: the
// keepalive must not collide with their result sets and the lock must not
// be lost. Then a holder that goes idle 3 s after such statements keeps its
// lock too (the behaviour issue 14 prefers): a third party cannot take the
// key while it idles.
func TestPreparedSessionInFnKeepsLock(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	for i := range 20 {
		if err := put(e.db, kv, "r"+string(rune('a'+i)), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	type row struct {
		K string
		V int64
	}
	statements := func(tx *gorm.DB, d time.Duration) (int, error) {
		ps := tx.Session(&gorm.Session{PrepareStmt: true})
		n := 0
		for start := time.Now(); time.Since(start) < d; n++ {
			var rows []row
			if err := ps.Table(kv).Where("v >= ?", 0).Find(&rows).Error; err != nil {
				return n, err
			}
			if len(rows) != 20 {
				return n, fmt.Errorf("Find returned %d rows, want 20", len(rows))
			}
			if err := ps.Exec("UPDATE `"+kv+"` SET v = v + 1 WHERE k = ?", "ra").Error; err != nil {
				return n, err
			}
		}
		return n, nil
	}
	third := faultLocker(t, otherPool(t), e.table)
	ctx := ctxT(t)
	lease := dblock.Lease(2 * time.Second)

	t.Run("busy for 4 s", func(t *testing.T) {
		var n int
		err := l.Do(ctx, dblock.Resource("busy"), func(ctx context.Context, tx *gorm.DB) error {
			var err error
			n, err = statements(tx, 4*time.Second)
			return err
		}, lease)
		t.Logf("%d rounds of prepared statements in 4 s: Do = %v", n, err)
		if err != nil {
			t.Errorf("Do = %v, want nil", err)
		}
	})
	t.Run("idle 3 s after", func(t *testing.T) {
		key := dblock.Resource("idle")
		polls := 0
		err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			if _, err := statements(tx, 500*time.Millisecond); err != nil {
				return err
			}
			for start := time.Now(); time.Since(start) < 3*time.Second; polls++ { // the holder's idle time is the behaviour under test
				if err := heldByOther(third, key); err != nil {
					t.Errorf("after %v idle: %v", time.Since(start).Round(time.Millisecond), err)
					return nil
				}
				time.Sleep(100 * time.Millisecond)
			}
			return nil
		}, lease)
		t.Logf("idle 3 s after prepared statements (%d polls): Do = %v", polls, err)
		if err != nil {
			t.Errorf("Do = %v, want nil", err)
		}
	})
}
