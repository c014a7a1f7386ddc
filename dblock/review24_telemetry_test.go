package dblock_test

import (
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestReview24TelemetryWaitingContainer: under the hierarchy, an exclusive
// Lock of a resource waits for its container, Global, which another
// transaction holds exclusively. txlock.waiting counts that acquisition
// under granularity "global" and mode "exclusive" (lockKey measures the
// row it reads, in the call's mode), not under "resource": a dashboard
// shows an exclusive waiter for Global that nobody is, and no waiter for
// the resource that one is.
func TestReview24TelemetryWaitingContainer(t *testing.T) {
	e := setup(t)
	e.setHierarchy(t, true)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	r := dblock.Resource("r24:tel")
	assertFree(t, l, r) // the Locker learns the setting
	g := holdKey(t, ctx, l, dblock.Global())
	defer g.Rollback()
	done := make(chan error, 1)
	go func() {
		lk, err := l.Lock(ctx, r)
		if err == nil {
			_ = lk.Rollback()
		}
		done <- err
	}()
	waitingStatement(t, e.db, e.table, "LOCK IN SHARE MODE")
	ms := rec.collect(t)
	res := sumOf(t, ms, "txlock.waiting", "{acquisition}", map[string]string{"granularity": "resource", "txlock.mode": "exclusive"})
	glob := sumOf(t, ms, "txlock.waiting", "{acquisition}", map[string]string{"granularity": "global", "txlock.mode": "exclusive"})
	t.Logf("waiting while Lock(resource) waits for its container: resource %d, global (exclusive) %d", res, glob)
	_ = g.Rollback()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res != 1 || glob != 0 {
		t.Errorf("txlock.waiting: resource %d, global exclusive %d while one resource acquisition waits, want 1 and 0", res, glob)
	}
}
