package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestTelemetrySemaphore: a key taken with Permits is measured under
// txlock.mode "semaphore" (acquisitions by outcome, the waiting counter
// while a call queues for a permit, holds, losses and both spans), the
// key's own lock beside it under "exclusive", and neither mode's
// measurements reach the other's.
func TestTelemetrySemaphore(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("export:1")
	const n = 2
	sem := map[string]string{"granularity": "resource", "txlock.mode": "semaphore"}
	exclusive := map[string]string{"granularity": "resource", "txlock.mode": "exclusive"}

	var holders []*dblock.Lock
	for range n {
		p, err := l.TryLock(ctx, key, dblock.Permits(n), dblock.Lease(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Rollback()
		holders = append(holders, p)
	}
	if _, err := l.TryLock(ctx, key, dblock.Permits(n)); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("TryLock with every permit held = %v, want ErrNotAcquired", err)
	}
	// The key's lock is apart from its semaphore, and measured apart.
	own := mustLock(t, ctx, l, key)
	if err := own.Commit(); err != nil {
		t.Fatal(err)
	}
	type granted struct {
		lk  *dblock.Lock
		err error
	}
	queued := make(chan granted, 1)
	go func() {
		lk, err := l.Lock(ctx, key, dblock.Permits(n), dblock.Lease(time.Second))
		queued <- granted{lk, err}
	}()
	waitingStatement(t, e.db, schema.PermitTable(e.table), "FORCE INDEX (PRIMARY)")
	ms := rec.collect(t)
	ws, wx := sumOf(t, ms, "txlock.waiting", "{acquisition}", sem), sumOf(t, ms, "txlock.waiting", "{acquisition}", exclusive)
	t.Logf("waiting while a call queues for a permit: semaphore %d, exclusive %d", ws, wx)
	if ws != 1 || wx != 0 {
		t.Errorf("waiting: semaphore %d, exclusive %d while one call queues for a permit, want 1 and 0", ws, wx)
	}
	if err := holders[0].Commit(); err != nil {
		t.Fatal(err)
	}
	g := <-queued
	if g.err != nil {
		t.Fatalf("the queued permit request: %v", g.err)
	}
	defer g.lk.Rollback()
	// A holder of a permit loses it with its connection.
	killUntilLost(t, e.db, holders[1])
	_ = holders[1].Rollback()
	// Through Do, on the permit the lost holder gave back.
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(n)); err != nil {
		t.Fatalf("Do with a free permit: %v", err)
	}
	if err := g.lk.Commit(); err != nil {
		t.Fatal(err)
	}

	ms = rec.collect(t)
	// Holds: two Commits, the loss and the Do (semaphore), the key's lock.
	checkModes(t, ms, map[string]modeFigures{
		"semaphore": {acquired: map[string]uint64{"acquired": 4, "not_acquired": 1}, holds: 4, lost: 1},
		"exclusive": {acquired: map[string]uint64{"acquired": 1}, holds: 1},
	}, map[string]map[string]string{"semaphore": sem, "exclusive": exclusive})
	rec.checkAttributes(t, ms, e.table, "export:1")

	rec.checkSpanModes(t, "[acquired/semaphore acquired/semaphore not_acquired/semaphore acquired/exclusive acquired/semaphore acquired/semaphore]", "semaphore")
}
