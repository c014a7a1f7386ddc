package dblock_test

import (
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// A reentrant Do(k, Fencing()) inside a Do(k) without Fencing takes k's
// first token then (join: tokenKeys), which runs the token read under
// innodb_snapshot_isolation. When fn has read anything since the outer
// grant (a normal fn: read, then call an inner service method decorated
// with Fencing), that read fails with 1020: the whole transaction is
// rolled back, with ErrStaleSnapshot and ErrLockLost, although the
// transaction has held k since before its snapshot (its reads of what k
// protects are fresh). The same work fails every time: Retry cannot help.
// The snapshot check belongs to new keys only; the token read of a held
// key does not need it.
func TestReviewReentrantFencingAfterReadRollsBack(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "x", 0); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	k := dblock.Resource("k")
	var inner error
	var tok int64
	err := l.Do(ctx, k, func(ctx context.Context, tx *gorm.DB) error {
		var v int64
		if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'x'").Row().Scan(&v); err != nil {
			return err
		}
		inner = l.Do(ctx, k, func(ctx context.Context, _ *gorm.DB) error {
			tok, _ = dblock.TokenFrom(ctx, k)
			return nil
		}, dblock.Fencing())
		if inner != nil {
			return inner
		}
		return put(tx, kv, "x", v+1)
	})
	t.Logf("reentrant Do(k, Fencing) after a read: %v (token %d); outer Do: %v", inner, tok, err)
	if err != nil {
		t.Errorf("Do(k) with a nested Do(k, Fencing()) after a read = %v, want nil: the transaction held k before it read", err)
	}
}
