package dblock_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview20HolderInsideDoPoolOfOne shows (FAILS NOW) that Holder
// called by a holder on a pool of one connection (logging who holds its
// own key, or a key of a batch) waits for a pool connection the caller
// holds: its probe takes a connection of the Locker's pool, not of the
// side pool the rest of Holder uses. It hangs until the caller's context
// ends (forever under context.Background), the self-deadlock the side
// pool exists to avoid.
//
// Expected: an answer (the holder is the caller's own connection) or a
// clear error at once, never a wait on the caller's own connection.
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
	if errors.Is(herr, context.DeadlineExceeded) {
		t.Errorf("Holder waited until its context ended (%v) for the pool connection its caller holds: %v", took.Round(time.Millisecond), herr)
	}
}

// TestReview20HoldersTakeFreeKeys shows (FAILS NOW) that an observer
// takes keys from users: on MariaDB, Holders locks every free key row
// of the table (FOR UPDATE SKIP LOCKED, up to 500 at a time) and Holder
// the looked-at free key, in a transaction of their own. A TryLock (or a
// NoWait job: examples/singleton) of a free key that meets such a probe
// fails with ErrNotAcquired although nobody holds the key: a monitoring
// loop calling Holders (`txlock locks` in a watch) makes scheduled NoWait
// jobs skip runs. Documented as "a free row is then locked for a moment,
// like any lock", which understates it for TryLock users.
//
// Expected (a judgement call, since it is documented): an inspection
// never makes an acquisition of a free key fail. Any lock the probe takes
// on a free row conflicts with FOR UPDATE NOWAIT, so the fix is not to
// lock free rows at all (queue the blocking probe only on rows that the
// lock views, or a non-locking look, suggest are held), or to say in
// Holder's and Holders' doc comments that they make TryLock fail.
func TestReview20HoldersTakeFreeKeys(t *testing.T) {
	e, l := setupLocker(t)
	user := faultLocker(t, otherPool(t), e.table)
	ctx := ctxT(t)
	key := dblock.Resource("review20-observed")
	if err := user.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var probes atomic.Int64
	stop := review20Loop(func() bool {
		if _, err := l.Holders(ctx, dblock.Key{}); err != nil {
			t.Errorf("Holders: %v", err)
			return false
		}
		probes.Add(1)
		return true
	})
	tries, failed := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		lk, err := user.TryLock(ctx, key)
		tries++
		switch {
		case err == nil:
			_ = lk.Rollback()
		case errors.Is(err, dblock.ErrNotAcquired):
			failed++
		default:
			t.Fatal(err)
		}
	}
	stop()
	t.Logf("TryLock of a key nobody holds, beside a Holders loop (%d calls): %d of %d failed with ErrNotAcquired", probes.Load(), failed, tries)
	if failed > 0 {
		t.Errorf("%d of %d TryLock of a free key failed because an observer (Holders) had locked it", failed, tries)
	}
}

// TestReview20HolderCancelledProbeWithdrawn: Holder's context is cancelled
// while its probe is queued behind the holder; Holder must return (with
// the cause) and withdraw the probe, so that when the holder releases a
// real waiter queued behind the probe gets the key and the probe never
// does. HELD (see report): kept as a regression test.
func TestReview20HolderCancelledProbeWithdrawn(t *testing.T) {
	e, l := setupLocker(t)
	other := faultLocker(t, otherPool(t), e.table)
	ctx := ctxT(t)
	key := dblock.Resource("review20-probe-cancel")
	holder := holdKey(t, ctx, other, key)

	hctx, cancel := context.WithCancelCause(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := l.Holder(hctx, key)
		done <- err
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1) // the probe is queued
	waiter := lockLater(t, ctx, other, key)
	waitForLockWaits(t, e.sqlDB, e.table, 2) // and the waiter behind it
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
