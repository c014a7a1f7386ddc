package dblock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview20HolderInsideDoPoolOfOne: Holder called by a holder on a
// pool of one connection waits for a pool connection (its probe's, on
// MariaDB) that the caller holds. That is documented on Holder; what must
// hold is that the wait is bounded by Holder's context and the error says
// what it waited for, and that nothing is left behind.
func TestReview20HolderInsideDoPoolOfOne(t *testing.T) {
	e := setup(t)
	e.sqlDB.SetMaxOpenConns(1)
	l := e.locker(t)
	t.Cleanup(func() { _ = l.Close() })
	ctx := ctxT(t)
	key := dblock.Resource("review20-holder-pool1")
	var h dblock.Holder
	var herr error
	var took time.Duration
	err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		start := time.Now()
		h, herr = l.Holder(hctx, key)
		took = time.Since(start)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Holder of the caller's own key on a pool of one: %+v, %v after %v", h, herr, took.Round(time.Millisecond))
	if !errors.Is(herr, context.DeadlineExceeded) || !strings.Contains(herr.Error(), "a pool connection for the probe") {
		t.Errorf("Holder inside Do on a pool of one = %v, want its context's deadline, naming the pool connection it waited for", herr)
	}
}

// TestReview20HolderCancelledProbeWithdrawn: Holder's context is cancelled
// while its probe is queued behind the holder and a real waiter; Holder
// must return (with the cause) and withdraw the probe, so that when the
// holder releases the waiter gets the key and the probe never does. The
// waiter queues first: a probe queued first is answered (and withdrawn)
// as soon as the server's lock views show it, which may be before a
// waiter started after it queues on a loaded machine.
func TestReview20HolderCancelledProbeWithdrawn(t *testing.T) {
	e, l := setupLocker(t)
	other := faultLocker(t, otherPool(t), e.table)
	ctx := ctxT(t)
	key := dblock.Resource("review20-probe-cancel")
	holder := holdKey(t, ctx, other, key)
	waiter := lockLater(t, ctx, other, key)
	waitForLockWaits(t, e.sqlDB, e.table, 1) // the waiter is queued

	hctx, cancel := context.WithCancelCause(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := l.Holder(hctx, key)
		done <- err
	}()
	// The probe is queued behind them: cancel as soon as its statement
	// shows in PROCESSLIST (live), long before the server's lock views
	// (a cache) can name the holder to it.
	waitFor(t, "the Holder probe in PROCESSLIST", func() bool {
		var n int
		if err := e.sqlDB.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%txlock-holder%' AND ID <> CONNECTION_ID()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	why := errors.New("review20: caller gave up")
	start := time.Now()
	cancel(why)
	err := <-done
	took := time.Since(start)
	t.Logf("Holder after its context was cancelled: %v, returned %v later", err, took.Round(time.Millisecond))
	if !errors.Is(err, why) {
		t.Errorf("Holder = %v, want the context's cause", err)
	}
	ps := waitForLockWaits(t, e.sqlDB, e.table, 1) // only the waiter is left
	t.Logf("left queued: %v", ps)
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	select {
	case lk := <-waiter:
		if lk != nil {
			_ = lk.Rollback()
		}
	case <-time.After(opTimeout):
		t.Fatal("the waiter was not granted the key after the holder released it")
	}
}
