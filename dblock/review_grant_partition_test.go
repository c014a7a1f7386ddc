package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// A waiter whose grant is answered into a silent partition (a frozen VM,
// a SIGSTOPped process, a network that drops the answer), on a fresh pool
// connection. Before the fix (the Locker set the bound only after the
// grant):
//
//   - the server keeps the row until the session's idle bound, wait_timeout
//     (8 h by default), not the lease: the lease was to bound how long a
//     lock outlives a holder that stopped talking to the server;
//   - the waiter's own call is not bounded by its WaitTimeout: on MariaDB
//     the wait is bounded by the server (max_statement_time), which has
//     answered already, and nothing bounds the read of the answer on the
//     client, so Lock blocks until TCP gives up (never, through the relay).

func TestReviewGrantIntoPartition(t *testing.T) {
	e, relay, waiterL, otherL := partitionSetup(t)
	ctx := cancelOnly(t) // no deadline: WaitTimeout is the bound asked for
	key := dblock.Resource("grant-partition")

	holder, err := otherL.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	type res struct {
		lk  *dblock.Lock
		err error
		at  time.Time
	}
	waited := make(chan res, 1)
	start := time.Now()
	go func() {
		lk, err := waiterL.Lock(ctx, key, dblock.WaitTimeout(5*time.Second), dblock.Lease(2*time.Second))
		waited <- res{lk, err, time.Now()}
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	relay.Blackhole() // the waiter's answer will not come back
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	granted := time.Now()

	// The server granted the key to the waiter, which can no longer talk
	// to it. A third process should get it within about a lease (2 s);
	// give it ten.
	third, err := otherL.Lock(context.Background(), key, dblock.WaitTimeout(20*time.Second))
	if err != nil {
		if errors.Is(err, dblock.ErrNotAcquired) {
			t.Errorf("a waiter granted into a partition %v ago (lease 2 s) still holds the key: %v; "+
				"the grant's connection had no idle bound yet (wait_timeout, 8 h, applies)", time.Since(granted).Round(time.Millisecond), err)
		} else {
			t.Fatal(err)
		}
	} else {
		t.Logf("a third process got the key %v after the grant into the partition", time.Since(granted).Round(time.Millisecond))
		_ = third.Rollback()
	}

	// The waiter's call is bounded too: WaitTimeout, then the library's
	// interruption and, without an answer, the connection closed; within
	// the generous ceiling of opTimeout.
	select {
	case r := <-waited:
		t.Logf("the waiter's Lock returned after %v: %v", r.at.Sub(start).Round(time.Millisecond), r.err)
		if r.lk != nil {
			_ = r.lk.Rollback()
		}
		if r.err == nil {
			t.Errorf("the waiter's Lock succeeded although its connection was cut off")
		}
	case <-time.After(opTimeout):
		t.Errorf("the waiter's Lock(WaitTimeout(5s)) is still blocked %v after it began: WaitTimeout does not bound a call whose answer is lost",
			time.Since(start).Round(time.Millisecond))
		relay.Reset()
		r := <-waited
		t.Logf("after a reset, the waiter's Lock returned: %v", r.err)
		if r.lk != nil {
			_ = r.lk.Rollback()
		}
	}
}
