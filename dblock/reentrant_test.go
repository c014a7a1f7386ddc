package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// reentrancyTimeout bounds nested acquisitions: a nested acquire that
// waited for its own outer lock would otherwise hang until the server's
// lock-wait timeout.
const reentrancyTimeout = opTimeout

// TestReentrantSameKey: a nested Do of the key the context's transaction
// holds returns to its fn at once, in the same transaction, even with
// NoWait; so does a Do under Lock.Context.
func TestReentrantSameKey(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	key := dblock.Resource("order:1")
	ctx := ctxWithin(t, reentrancyTimeout)

	err := l.Do(ctx, key, func(ctx context.Context, outer *gorm.DB) error {
		start := time.Now()
		return l.Do(ctx, key, func(ctx context.Context, inner *gorm.DB) error {
			// No wait behind the outer lock: with NoWait that would be
			// ErrNotAcquired at once.
			t.Logf("nested Do entered its fn %v after the call", time.Since(start))
			if !sameTx(inner, outer) {
				t.Error("nested Do did not join the outer transaction")
			}
			return put(inner, kv, "a", 1)
		}, dblock.NoWait())
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if v := get(t, e.db, kv, "a"); v != 1 {
		t.Fatalf("a = %d, want 1", v)
	}
	assertFree(t, l, key)

	k, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Rollback()
	err = l.Do(k.Context(ctx), key, func(ctx context.Context, tx *gorm.DB) error {
		if !sameTx(tx, k.Tx()) {
			t.Error("Do under Lock.Context did not join the lock's transaction")
		}
		return put(tx, kv, "b", 1)
	}, dblock.NoWait())
	if err != nil {
		t.Fatalf("Do under Lock.Context: %v", err)
	}
	if v := get(t, e.db, kv, "b"); v != -1 {
		t.Fatalf("b = %d before the lock's Commit, want no row", v)
	}
	if err := k.Commit(); err != nil {
		t.Fatal(err)
	}
	if v := get(t, e.db, kv, "b"); v != 1 {
		t.Fatalf("b = %d after the lock's Commit, want 1", v)
	}
}

// TestReentrantOtherKey: a nested Do of another key takes it in the same
// transaction: both keys are held until the outer Do ends, both writes
// commit together, and both roll back when the outer fn fails.
func TestReentrantOtherKey(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	a, b := dblock.Resource("order:1"), dblock.User("u-7")
	ctx := ctxWithin(t, reentrancyTimeout)

	for _, fail := range []string{"", "outer", "inner"} {
		t.Run("fail="+fail, func(t *testing.T) {
			ka, kb := "a"+fail, "b"+fail
			err := l.Do(ctx, a, func(ctx context.Context, outer *gorm.DB) error {
				if err := put(outer, kv, ka, 1); err != nil {
					return err
				}
				err := l.Do(ctx, b, func(ctx context.Context, inner *gorm.DB) error {
					if !sameTx(inner, outer) {
						t.Error("nested Do of another key did not join the outer transaction")
					}
					heldElsewhere(t, l, a)
					heldElsewhere(t, l, b)
					if err := put(inner, kv, kb, 1); err != nil {
						return err
					}
					if fail == "inner" {
						return errBusiness
					}
					return nil
				})
				if err != nil {
					return err
				}
				// The inner Do returned: its key is still held, by the
				// outer transaction.
				heldElsewhere(t, l, b)
				if fail == "outer" {
					return errBusiness
				}
				return nil
			})
			want := int64(1)
			if fail != "" {
				want = -1
				if !errors.Is(err, errBusiness) {
					t.Fatalf("Do = %v, want errBusiness", err)
				}
			} else if err != nil {
				t.Fatalf("Do: %v", err)
			}
			for _, k := range []string{ka, kb} {
				if v := get(t, e.db, kv, k); v != want {
					t.Errorf("%s = %d, want %d", k, v, want)
				}
			}
			assertFree(t, l, a)
			assertFree(t, l, b)
		})
	}
}

// TestReentrantDecorators: service methods that each wrap their body in
// l.Do of the same key, calling one another with the same ctx (the shape
// the decorator package produces), run in one transaction and do not
// deadlock.
func TestReentrantDecorators(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	key := dblock.Resource("order:42")
	ctx := ctxWithin(t, reentrancyTimeout)

	withLock := func(name string, body func(ctx context.Context) error) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
				if err := put(dblock.DB(ctx, e.db), kv, name, 1); err != nil {
					return err
				}
				return body(ctx)
			})
		}
	}
	var txs []*gorm.DB
	record := func(ctx context.Context) error {
		tx, _ := dblock.TxFrom(ctx)
		txs = append(txs, tx)
		return nil
	}
	notify := withLock("notify", record)
	charge := withLock("charge", func(ctx context.Context) error {
		if err := record(ctx); err != nil {
			return err
		}
		return notify(ctx)
	})
	refund := withLock("refund", func(ctx context.Context) error {
		if err := record(ctx); err != nil {
			return err
		}
		heldElsewhere(t, l, key)
		return charge(ctx)
	})

	if err := refund(ctx); err != nil {
		t.Fatalf("refund: %v", err)
	}
	if len(txs) != 3 || !sameTx(txs[0], txs[1]) || !sameTx(txs[1], txs[2]) {
		t.Fatalf("the nested calls ran in %d transactions, want one", len(txs))
	}
	for _, k := range []string{"refund", "charge", "notify"} {
		if v := get(t, e.db, kv, k); v != 1 {
			t.Errorf("%s = %d, want 1", k, v)
		}
	}
	assertFree(t, l, key)
}
