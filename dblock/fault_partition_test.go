package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// partitionLease is the lease of the partition tests: short, so that they
// run in seconds.
const partitionLease = 2 * time.Second

// partitionSetup gives a partition test its table, a Locker whose pool goes
// through a relay (the holder's side of the partition) and one on a direct
// pool (the waiter's).
func partitionSetup(t *testing.T) (e env, relay interface {
	Blackhole()
	Reset()
	Latency(time.Duration)
	Heal()
}, holderL, waiterL *dblock.Locker) {
	t.Helper()
	e = setup(t)
	p, rdb := faultRelay(t)
	holderL = faultLocker(t, rdb, e.table)
	waiterL = faultLocker(t, e.db, e.table)
	return e, p, holderL, waiterL
}

// leasedLock takes key with l under partitionLease, failing the test if
// it cannot, and rolls it back when the test ends.
func leasedLock(t *testing.T, ctx context.Context, l *dblock.Locker, key dblock.Key) *dblock.Lock {
	t.Helper()
	h, err := l.Lock(ctx, key, dblock.Lease(partitionLease))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Rollback() })
	return h
}

// lockAsync takes key with l in a goroutine and reports the outcome.
func lockAsync(ctx context.Context, l *dblock.Locker, key dblock.Key, opts ...dblock.LockOption) <-chan lockResult {
	ch := make(chan lockResult, 1)
	go func() {
		k, err := l.Lock(ctx, key, opts...)
		ch <- lockResult{k: k, err: err, at: time.Now()}
	}()
	return ch
}

type lockResult struct {
	k   *dblock.Lock
	err error
	at  time.Time
}

// awaitLock waits for an asynchronous acquisition, failing after d.
func awaitLock(t *testing.T, ch <-chan lockResult, d time.Duration) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("acquisition still blocked after %v", d)
		return lockResult{}
	}
}

// commitWithin runs k.Commit, failing the test if it blocks for d.
func commitWithin(t *testing.T, k *dblock.Lock, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- k.Commit() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Commit blocked for %v", d)
		return nil
	}
}

// checkHandedOver checks the two holders of a key after the first one's
// connection failed (after, e.g. "the reset"): the lost holder's Commit
// returns ErrLockLost without blocking, the granted waiter's commits.
func checkHandedOver(t *testing.T, lost, granted *dblock.Lock, after string) {
	t.Helper()
	if err := commitWithin(t, lost, 5*time.Second); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("holder Commit after %s = %v, want ErrLockLost", after, err)
	}
	if err := granted.Commit(); err != nil {
		t.Errorf("waiter Commit: %v", err)
	}
}

// TestFaultPartitionBlackhole: the holder's connection is silently cut (no
// FIN, no RST). The holder learns it lost the lock (Lost closed) strictly
// before the server frees the key and grants it to a waiter, about one
// lease after the partition; its Commit then returns ErrLockLost.
func TestFaultPartitionBlackhole(t *testing.T) {
	e, relay, holderL, waiterL := partitionSetup(t)
	ctx := ctxT(t)
	key := dblock.Resource("partition")

	h := leasedLock(t, ctx, holderL, key)
	// A fresh answer, so that the lease counts from now.
	if err := h.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}
	partitioned := time.Now()
	relay.Blackhole()

	granted := lockAsync(ctx, waiterL, key, dblock.WaitTimeout(10*time.Second))
	waitForLockWaits(t, e.sqlDB, e.table, 1)

	lostAt, ok := closedWithin(h.Lost(), 10*time.Second)
	if !ok {
		t.Fatalf("Lost not closed %v after the partition (lease %v)", time.Since(partitioned), partitionLease)
	}
	r := awaitLock(t, granted, 15*time.Second)
	if r.err != nil {
		t.Fatalf("waiter: %v, want the lock once the server ended the partitioned holder's transaction", r.err)
	}
	defer r.k.Rollback()

	detect, grant := lostAt.Sub(partitioned), r.at.Sub(partitioned)
	t.Logf("blackhole at 0: holder Lost at %v, waiter granted at %v: detection margin %v (lease %v)",
		detect.Round(time.Millisecond), grant.Round(time.Millisecond), r.at.Sub(lostAt).Round(time.Millisecond), partitionLease)
	if !lostAt.Before(r.at) {
		t.Errorf("the waiter was granted (%v) before the holder's Lost closed (%v): two holders believed they held %s",
			grant, detect, key)
	}
	within(t, "the grant to the waiter after the partition", grant, 1500*time.Millisecond, opTimeout)
	if err := h.Err(); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("holder Err() = %v, want ErrLockLost", err)
	}
	checkHandedOver(t, h, r.k, "the partition")
}

// TestFaultPartitionReset: the holder's connection is reset (RST both
// ways). The server frees the key at once, so the waiter is granted
// promptly, and the holder's Lost closes (its keepalive finds the
// connection dead, or the lease runs out); both delays are logged.
func TestFaultPartitionReset(t *testing.T) {
	e, relay, holderL, waiterL := partitionSetup(t)
	ctx := ctxT(t)
	key := dblock.Resource("reset")

	h := leasedLock(t, ctx, holderL, key)
	if err := h.KeepAlive(ctx); err != nil {
		t.Fatal(err)
	}
	granted := lockAsync(ctx, waiterL, key, dblock.WaitTimeout(10*time.Second))
	waitForLockWaits(t, e.sqlDB, e.table, 1)

	reset := time.Now()
	relay.Reset()
	r := awaitLock(t, granted, 15*time.Second)
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	defer r.k.Rollback()
	lostAt, ok := closedWithin(h.Lost(), 5*time.Second)
	if !ok {
		t.Fatalf("Lost not closed 5s after the reset")
	}
	t.Logf("reset at 0: waiter granted at %v, holder Lost at %v",
		r.at.Sub(reset).Round(time.Millisecond), lostAt.Sub(reset).Round(time.Millisecond))
	within(t, "the grant to the waiter after the reset", r.at.Sub(reset), 0, opTimeout)
	within(t, "the holder's Lost after the reset", lostAt.Sub(reset), 0, opTimeout)
	t.Logf("the holder's Err: %v", h.Err())
	checkHandedOver(t, h, r.k, "the reset")
}

// TestFaultPartitionLatency: 50 ms each way between holder and server, a
// 2 s lease: a holder that keeps working (statements every 100 ms, then an
// idle stretch) for 3 s never loses its lock, and commits.
func TestFaultPartitionLatency(t *testing.T) {
	_, relay, holderL, waiterL := partitionSetup(t)
	ctx := ctxT(t)
	key := dblock.Resource("latency")

	relay.Latency(50 * time.Millisecond)
	h := leasedLock(t, ctx, holderL, key)
	start := time.Now()
	var stmts int
	for time.Since(start) < 1500*time.Millisecond {
		var one int
		if err := h.Tx().Raw("SELECT 1").Row().Scan(&one); err != nil {
			t.Fatalf("statement %d under latency: %v", stmts, err)
		}
		stmts++
		time.Sleep(100 * time.Millisecond)
	}
	// Then idle: the keepalive, slowed by the latency too, keeps it.
	for time.Since(start) < 3*time.Second {
		if isClosed(h.Lost()) {
			break
		}
		assertHeld(t, waiterL, key)
		time.Sleep(250 * time.Millisecond)
	}
	if isClosed(h.Lost()) {
		t.Fatalf("false loss under 50ms latency after %v: %v", time.Since(start), h.Err())
	}
	t.Logf("%d statements then idle, %v under 50ms latency with a %v lease: still held", stmts, time.Since(start).Round(time.Millisecond), partitionLease)
	if err := commitWithin(t, h, 5*time.Second); err != nil {
		t.Errorf("Commit: %v", err)
	}
}

// TestFaultIdleHolderKeptAlive: a holder idle for 3 s with a 2 s lease,
// connected, keeps its lock: the keepalive stops the server's idle timeout.
// Another Locker's TryLock fails throughout and Lost never closes.
func TestFaultIdleHolderKeptAlive(t *testing.T) {
	e, l := setupLocker(t)
	other := e.locker(t)
	defer other.Close()
	ctx := ctxT(t)
	key := dblock.Resource("idle")

	h := leasedLock(t, ctx, l, key)
	start := time.Now()
	checks := 0
	for time.Since(start) < 3*time.Second {
		assertHeld(t, other, key)
		checks++
		if isClosed(h.Lost()) {
			t.Fatalf("Lost closed after %v idle: %v", time.Since(start), h.Err())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := h.Err(); err != nil {
		t.Fatalf("Err after 3s idle = %v", err)
	}
	if err := h.Commit(); err != nil {
		t.Fatalf("Commit after 3s idle: %v", err)
	}
	t.Logf("idle 3s with a %v lease: held throughout (%d TryLocks refused)", partitionLease, checks)
	assertFree(t, other, key)
}

// TestFaultPartitionDoContext: Do's fn context is cancelled with cause
// ErrLockLost when the holder's connection is blackholed, before the server
// frees the key at the end of the lease and grants it to a waiter (an
// order of events), and Do reports an error.
func TestFaultPartitionDoContext(t *testing.T) {
	_, relay, holderL, waiterL := partitionSetup(t)
	ctx := ctxT(t)
	key := dblock.Resource("do")

	var partitioned, cancelled time.Time
	var cause error
	var granted <-chan lockResult
	err := holderL.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
		if err := tx.Exec("DO 1").Error; err != nil {
			return err
		}
		partitioned = time.Now()
		relay.Blackhole()
		// A waiter, queued while fn still runs; the server frees the key
		// once the lease is over.
		granted = lockAsync(ctx, waiterL, key, dblock.WaitTimeout(10*time.Second))
		select {
		case <-fctx.Done():
			cancelled = time.Now()
			cause = context.Cause(fctx)
		case <-time.After(10 * time.Second):
		}
		return fctx.Err()
	}, dblock.Lease(partitionLease))
	if cancelled.IsZero() {
		t.Fatal("fn's context was not cancelled within 10s of the partition")
	}
	d := cancelled.Sub(partitioned)
	t.Logf("Do: fn's context cancelled %v after the partition (lease %v), cause %v; Do returned %v",
		d.Round(time.Millisecond), partitionLease, cause, err)
	if !errors.Is(cause, dblock.ErrLockLost) {
		t.Errorf("context.Cause(fn ctx) = %v, want ErrLockLost", cause)
	}
	if err == nil {
		t.Fatal("Do returned nil after losing its lock")
	}
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Do = %v, want an error wrapping ErrLockLost", err)
	}
	r := awaitLock(t, granted, 15*time.Second)
	if r.err != nil {
		t.Fatalf("waiter: %v, want the lock once the server ended the partitioned holder's transaction", r.err)
	}
	t.Logf("the waiter was granted %v after the partition", r.at.Sub(partitioned).Round(time.Millisecond))
	if !cancelled.Before(r.at) {
		t.Errorf("the waiter was granted (%v after the partition) before fn's context was cancelled (%v): two holders believed they held %s",
			r.at.Sub(partitioned), d, key)
	}
	if err := r.k.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestFaultLostUntouchedLock: the plainest use of Lost, a holder that takes
// the lock and then only waits on Lost, while its connection is reset.
// Nothing else touches the Lock between the grant and the loss, so the
// keepalive's goroutine is the only one that synchronises with it: the
// race detector then checks that the loss is reported safely.
func TestFaultLostUntouchedLock(t *testing.T) {
	_, relay, holderL, _ := partitionSetup(t)
	ctx := ctxT(t)
	h, err := holderL.Lock(ctx, dblock.Resource("untouched"), dblock.Lease(partitionLease))
	if err != nil {
		t.Fatal(err)
	}
	relay.Reset()
	if _, ok := closedWithin(h.Lost(), 2*partitionLease); !ok {
		t.Fatalf("Lost not closed %v after the reset", 2*partitionLease)
	}
	if err := h.Err(); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Err() = %v, want ErrLockLost", err)
	}
}
