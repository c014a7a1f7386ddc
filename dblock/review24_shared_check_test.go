package dblock_test

import (
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview24SharedCheckMakesTransactionStale: the stale-snapshot check
// of a key taken shared (or of a permit) in a caller's transaction reads
// the key's counter with a plain, consistent read: that read gives the
// transaction its snapshot. Every lock the transaction takes after it is
// then refused with ErrStaleSnapshot (an exclusive one's check fails with
// 1020 and the server rolls the transaction back), although the caller
// read nothing: it took its locks first, as documented. A DoMulti in a
// caller's transaction with one key shared and one exclusive fails the
// same way (the shared key's check runs first).
func TestReview24SharedCheckMakesTransactionStale(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r24:sc-a"), dblock.Resource("r24:sc-b")
	noop := func(context.Context, *gorm.DB) error { return nil }
	for _, c := range []struct {
		name string
		run  func(tx *gorm.DB) error
	}{
		{"LockTx shared then exclusive", func(tx *gorm.DB) error {
			if err := l.LockTx(ctx, tx, a, dblock.Shared()); err != nil {
				t.Fatalf("LockTx(a, Shared()) as the transaction's first statement: %v", err)
			}
			return l.LockTx(ctx, tx, b)
		}},
		{"LockTx shared then shared", func(tx *gorm.DB) error {
			if err := l.LockTx(ctx, tx, a, dblock.Shared()); err != nil {
				t.Fatalf("LockTx(a, Shared()) as the transaction's first statement: %v", err)
			}
			return l.LockTx(ctx, tx, b, dblock.Shared())
		}},
		{"LockTx permit then exclusive", func(tx *gorm.DB) error {
			if err := l.LockTx(ctx, tx, a, dblock.Permits(3)); err != nil {
				t.Fatalf("LockTx(a, Permits(3)) as the transaction's first statement: %v", err)
			}
			return l.LockTx(ctx, tx, b)
		}},
		{"DoMulti mixed", func(tx *gorm.DB) error {
			return l.DoMulti(dblock.WithTx(ctx, tx), []dblock.Key{a, b}, noop, dblock.Shared(a))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The counters exist (a key used before), as in any live system.
			for _, k := range []dblock.Key{a, b} {
				for _, opts := range [][]dblock.LockOption{nil, {dblock.Permits(3)}} {
					if err := l.Do(ctx, k, noop, opts...); err != nil {
						t.Fatal(err)
					}
				}
			}
			tx := e.db.WithContext(ctx).Begin()
			defer tx.Rollback()
			err := c.run(tx)
			t.Logf("second lock: %v", err)
			if err != nil {
				t.Errorf("a lock taken after a shared one, in a transaction that read nothing = %v, want the lock", err)
			}
		})
	}
}
