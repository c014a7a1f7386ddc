package dblock_test

// Review 22: Resign racing the keepalive, a KILL of the leader's
// connection, and a follower's grant.

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestReview22ResignRaces: rounds of a leader (Lease 1 s: a keepalive
// every third of a second) that resigns at varying points of its
// keepalive cycle, in some rounds while its connection is killed from
// another session, with a follower waiting. Each round: Resign returns,
// Done is closed, Err is nil or ErrLockLost, the follower leads after it
// with a higher token, and the election is free at the end. The pauses
// between rounds vary the point of the keepalive cycle the Resign meets
// (not a wait for a condition). Run with -race.
func TestReview22ResignRaces(t *testing.T) {
	e, l := setupLocker(t, dblock.Defaults(dblock.Lease(time.Second)))
	ctx := ctxT(t)
	key := dblock.Resource("review22:resign")
	el := l.Election(key)
	name := electionLock(t, e, key)
	rounds := 8
	if os.Getenv("TXLOCK_TORTURE") != "" {
		rounds = 100
	}
	cur, err := el.Campaign(ctx, "v0")
	if err != nil {
		t.Fatal(err)
	}
	var lost int
	for i := 1; i <= rounds; i++ {
		next := campaignAsync(ctx, el, "v"+string(rune('0'+i%10)))
		waitForNamedLockWaits(t, e.sqlDB, name, 1)
		// Vary where in the keepalive cycle the Resign lands.
		time.Sleep(time.Duration(i%4) * 110 * time.Millisecond)
		var wg sync.WaitGroup
		if i%2 == 0 {
			id := namedLockHolder(t, e.sqlDB, name)
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = e.db.Exec("KILL CONNECTION ?", id).Error // may find it gone
			}()
		}
		rerr := cur.Resign(ctx)
		wg.Wait()
		if !isClosed(cur.Done()) {
			t.Fatalf("round %d: Done open after Resign", i)
		}
		if err := cur.Err(); err != nil {
			if !errors.Is(err, dblock.ErrLockLost) {
				t.Fatalf("round %d: Err = %v", i, err)
			}
			lost++
		}
		r := <-next
		if r.err != nil {
			t.Fatalf("round %d: the follower: %v (Resign: %v)", i, r.err, rerr)
		}
		if r.ld.Token() <= cur.Token() {
			t.Fatalf("round %d: token %d after %d", i, r.ld.Token(), cur.Token())
		}
		cur = r.ld
	}
	if err := cur.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	assertElectionFree(t, e, key)
	t.Logf("%d rounds, %d lost to the KILL before Resign", rounds, lost)
}

// TestReview22ObserveCancelled: Observe's channel is closed when its ctx
// ends, also while nobody reads it and while a leader is being delivered;
// nothing of it is left (the goroutine check of setup).
func TestReview22ObserveCancelled(t *testing.T) {
	_, _, ctx, el := setupElection(t, "review22:obscancel")
	ld := mustCampaign(t, ctx, el, "a")
	octx, cancel := context.WithCancel(ctx)
	ch := el.Observe(octx)
	// Nobody reads: the observer is blocked delivering "a".
	cancel()
	select {
	case v, ok := <-ch:
		if ok {
			// Delivered in the race with the cancel: then the close follows.
			t.Logf("delivered %q as ctx ended", v)
			if _, ok := <-ch; ok {
				t.Fatal("a second value after ctx ended")
			}
		}
	case <-time.After(opTimeout):
		t.Fatal("Observe's channel not closed after ctx ended")
	}
	_ = ld.Resign(ctx)
	done, c2 := context.WithCancel(ctx)
	c2()
	if _, ok := <-el.Observe(done); ok {
		t.Fatal("Observe of an ended ctx delivered a value")
	}
}
