package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestTelemetryShared: a key taken with Shared is measured under
// txlock.mode "shared" (acquisitions by outcome, the waiting counter while
// a shared request is queued behind an exclusive holder, holds, losses and
// both spans), the exclusive holder under "exclusive", and neither mode's
// measurements reach the other's.
func TestTelemetryShared(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("doc:1")
	shared := map[string]string{"granularity": "resource", "txlock.mode": "shared"}
	exclusive := map[string]string{"granularity": "resource", "txlock.mode": "exclusive"}

	writer := mustLock(t, ctx, l, key)
	defer writer.Rollback()
	if _, err := l.TryLock(ctx, key, dblock.Shared()); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("shared TryLock beside an exclusive holder = %v, want ErrNotAcquired", err)
	}
	type granted struct {
		lk  *dblock.Lock
		err error
	}
	queued := make(chan granted, 1)
	go func() {
		lk, err := l.Lock(ctx, key, dblock.Shared(), dblock.Lease(time.Second))
		queued <- granted{lk, err}
	}()
	waitingStatement(t, e.db, e.table, "LOCK IN SHARE MODE")
	ms := rec.collect(t)
	ws, wx := sumOf(t, ms, "txlock.waiting", "{acquisition}", shared), sumOf(t, ms, "txlock.waiting", "{acquisition}", exclusive)
	t.Logf("waiting while a shared request is queued: shared %d, exclusive %d", ws, wx)
	if ws != 1 || wx != 0 {
		t.Errorf("waiting: shared %d, exclusive %d while one shared request is queued, want 1 and 0", ws, wx)
	}
	if err := writer.Commit(); err != nil {
		t.Fatal(err)
	}
	g := <-queued
	if g.err != nil {
		t.Fatalf("the queued shared request: %v", g.err)
	}
	reader := g.lk
	defer reader.Rollback()
	// A second shared holder beside it, through Do.
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Shared()); err != nil {
		t.Fatalf("shared Do beside a shared holder: %v", err)
	}
	// The first shared holder loses its lock.
	killUntilLost(t, e.db, reader)
	_ = reader.Rollback()

	ms = rec.collect(t)
	// Holds: the Do's and the lost lock's (shared), the writer's Commit.
	checkModes(t, ms, map[string]modeFigures{
		"shared":    {acquired: map[string]uint64{"acquired": 2, "not_acquired": 1}, holds: 2, lost: 1},
		"exclusive": {acquired: map[string]uint64{"acquired": 1}, holds: 1},
	}, map[string]map[string]string{"shared": shared, "exclusive": exclusive})
	rec.checkAttributes(t, ms, e.table, "doc:1")

	rec.checkSpanModes(t, "[acquired/exclusive not_acquired/shared acquired/shared acquired/shared]", "shared")
}
