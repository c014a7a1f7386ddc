package dblock_test

import (
	"context"
	"errors"
	"fmt"
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
	waitingStatement(t, e.db, "`"+schema.PermitTable(e.table)+"` FORCE INDEX (PRIMARY)")
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
	if got, want := fmt.Sprint(acquisitionsWhere(t, ms, sem)), fmt.Sprint(map[string]uint64{"acquired": 4, "not_acquired": 1}); got != want {
		t.Errorf("semaphore acquisitions by outcome %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(acquisitionsWhere(t, ms, exclusive)), fmt.Sprint(map[string]uint64{"acquired": 1}); got != want {
		t.Errorf("exclusive acquisitions by outcome %s, want %s", got, want)
	}
	if c, _ := histOf(t, ms, "txlock.held.duration", sem); c != 4 {
		t.Errorf("%d semaphore holds recorded, want 4 (two Commits, the loss, the Do)", c)
	}
	if c, _ := histOf(t, ms, "txlock.held.duration", exclusive); c != 1 {
		t.Errorf("%d exclusive holds recorded, want 1", c)
	}
	if c := sumOf(t, ms, "txlock.lost", "{lock}", sem); c != 1 {
		t.Errorf("semaphore losses = %d, want 1", c)
	}
	if c := sumOf(t, ms, "txlock.lost", "{lock}", exclusive); c != 0 {
		t.Errorf("exclusive losses = %d, want 0", c)
	}
	if w := sumOf(t, ms, "txlock.waiting", "{acquisition}", nil); w != 0 {
		t.Errorf("waiting = %d after the grants, want 0", w)
	}
	rec.checkAttributes(t, ms, e.table, "export:1")

	var modes []string
	for _, s := range rec.spansNamed("txlock.acquire") {
		modes = append(modes, spanAttr(s, "outcome")+"/"+spanAttr(s, "txlock.mode"))
	}
	want := "[acquired/semaphore acquired/semaphore not_acquired/semaphore acquired/exclusive acquired/semaphore acquired/semaphore]"
	if got := fmt.Sprint(modes); got != want {
		t.Errorf("txlock.acquire spans (outcome/mode) %s, want %s", got, want)
	}
	if dos := rec.spansNamed("txlock.Do"); len(dos) != 1 || spanAttr(dos[0], "txlock.mode") != "semaphore" {
		t.Errorf("txlock.Do spans %v, want one with txlock.mode semaphore", dos)
	}
}
