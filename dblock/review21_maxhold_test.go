package dblock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestReview21MaxHoldNestedGrantStall: MaxHold runs out while a Do nested
// in a bounded Do is stuck in its grant's MinInterval upsert (the run
// table is write-locked). The outer fn wrote a row before the nested call
// and returns what the nested call returned. Checked: the nested Do and
// the outer Do report ErrLockLost naming MaxHold (the true reason, not a
// driver error), the row is not committed, and the key is free again.
func TestReview21MaxHoldNestedGrantStall(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	outer, job := dblock.Resource("review21-mh-outer"), dblock.Resource("review21-mh-job")
	// The run table's row exists, so that the stall is the metadata lock.
	if err := l.Do(ctx, job, func(context.Context, *gorm.DB) error { return nil }, dblock.MinInterval(time.Microsecond)); err != nil {
		t.Fatal(err)
	}
	release := review20HoldMDL(t, otherPool(t), schema.RunTable(e.table))
	defer release()

	var nested error
	start := time.Now()
	err := l.Do(ctx, outer, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "review21-mh", 1); err != nil {
			return err
		}
		nested = l.Do(ctx, job, func(context.Context, *gorm.DB) error { return nil }, dblock.MinInterval(time.Microsecond))
		return nested
	}, dblock.MaxHold(300*time.Millisecond))
	took := time.Since(start)
	release()
	t.Logf("nested Do stuck in its MinInterval upsert under MaxHold(300ms): nested %v; outer %v; after %v",
		nested, err, took.Round(time.Millisecond))
	for _, c := range []struct {
		what string
		err  error
	}{{"nested Do", nested}, {"outer Do", err}} {
		if !errors.Is(c.err, dblock.ErrLockLost) || !strings.Contains(c.err.Error(), "MaxHold") {
			t.Errorf("%s = %v, want ErrLockLost naming MaxHold", c.what, c.err)
		}
	}
	if v := get(t, e.db, kv, "review21-mh"); v != -1 {
		t.Errorf("the outer fn's write was committed (v=%d) although MaxHold took the lock away", v)
	}
	assertFreeSoon(t, l, outer)
	assertFreeSoon(t, l, job)
}
