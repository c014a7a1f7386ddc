package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestFaultCancelledWaiterLeavesQueue: a waiter that gives up (its context
// is cancelled) leaves the server's queue at once, PROCESSLIST shows its
// locking read gone within 50 ms of the call's return, and the live waiter
// queued behind it is granted as fast after the holder's commit as when
// nobody gave up (the server does not first grant the lock to the dead
// waiter: DESIGN.md measured 31 ms instead of 1.5 ms for that). Five rounds
// of each; medians are compared and must be under 20 ms.
func TestFaultCancelledWaiterLeavesQueue(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("cancel")

	// round holds key, queues a live waiter (behind a waiter that gives up
	// when abandon is set), commits, and returns the live waiter's grant
	// latency after the commit, and the time the abandoned waiter's
	// statement stayed in PROCESSLIST after its call returned.
	round := func(abandon bool) (grant, cleanup time.Duration) {
		t.Helper()
		holder := mustLock(t, ctx, l, key)
		defer holder.Rollback()
		var dead process
		var gaveUp <-chan lockResult
		var cancel context.CancelFunc
		if abandon {
			var dctx context.Context
			dctx, cancel = context.WithCancel(ctx)
			defer cancel()
			gaveUp = lockAsync(dctx, l, key)
			dead = waitForLockWaits(t, e.sqlDB, e.table, 1)[0]
		}
		live := lockAsync(ctx, l, key)
		n := 1
		if abandon {
			n = 2
		}
		waitForLockWaits(t, e.sqlDB, e.table, n)
		if abandon {
			cancel()
			r := awaitLock(t, gaveUp, 5*time.Second)
			if !errors.Is(r.err, context.Canceled) {
				if r.k != nil {
					r.k.Rollback()
				}
				t.Fatalf("abandoned waiter: %v, want context.Canceled", r.err)
			}
			for {
				still := false
				for _, p := range lockWaits(t, e.sqlDB, e.table) {
					if p.id == dead.id {
						still = true
					}
				}
				if !still {
					cleanup = time.Since(r.at)
					break
				}
				if time.Since(r.at) > 5*time.Second {
					t.Fatalf("the abandoned waiter's statement still waits 5s after it returned")
				}
				time.Sleep(500 * time.Microsecond)
			}
			if ps := lockWaits(t, e.sqlDB, e.table); len(ps) != 1 || ps[0].id == dead.id {
				t.Fatalf("lock waits %v after the abandoned waiter left: want only the live waiter", ps)
			}
		}
		time.Sleep(5 * time.Millisecond)
		committing := time.Now()
		if err := holder.Commit(); err != nil {
			t.Fatal(err)
		}
		r := awaitLock(t, live, 5*time.Second)
		if r.err != nil {
			t.Fatalf("live waiter: %v", r.err)
		}
		grant = r.at.Sub(committing)
		if err := r.k.Commit(); err != nil {
			t.Fatal(err)
		}
		return grant, cleanup
	}

	const rounds = 5
	var plain, behind, cleanups []time.Duration
	for range rounds {
		g, _ := round(false)
		plain = append(plain, g)
		g, c := round(true)
		behind = append(behind, g)
		cleanups = append(cleanups, c)
	}
	t.Logf("grant after commit: %v median with no abandoned waiter %v, %v median behind an abandoned one %v",
		median(plain).Round(10*time.Microsecond), roundMs(plain), median(behind).Round(10*time.Microsecond), roundMs(behind))
	t.Logf("abandoned waiter's statement gone from PROCESSLIST after the call returned: median %v, max %v %v",
		median(cleanups).Round(10*time.Microsecond), maxDuration(cleanups).Round(10*time.Microsecond), roundMs(cleanups))
	// The worst round, bounded loosely enough for a loaded 2-core CI
	// machine (the alternative is innodb_lock_wait_timeout: 50 s).
	if m := maxDuration(cleanups); m > 250*time.Millisecond {
		t.Errorf("an abandoned waiter's statement stayed %v in PROCESSLIST after the call returned, want <= 250ms", m)
	}
	for _, c := range []struct {
		name string
		d    time.Duration
	}{{"without an abandoned waiter", median(plain)}, {"behind an abandoned waiter", median(behind)}} {
		if c.d >= 20*time.Millisecond {
			t.Errorf("median grant after commit %s = %v, want < 20ms", c.name, c.d)
		}
	}
}

// maxDuration returns the largest of ds.
func maxDuration(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
