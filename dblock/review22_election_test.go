package dblock_test

// Review 22: attempts to break elections against the real server. Each
// test states the promise it checks; the ones that fail show a defect.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/faultproxy"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// leaderWatcher polls Leader on l's election of key until stopped and
// records every distinct value it saw.
type leaderWatcher struct {
	mu    sync.Mutex
	seen  map[string]int
	stop  chan struct{}
	done  chan struct{}
	reads atomic.Int64
}

func watchLeader(ctx context.Context, el *dblock.Election) *leaderWatcher {
	w := &leaderWatcher{seen: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			v, err := el.Leader(ctx)
			w.reads.Add(1)
			if err == nil {
				w.mu.Lock()
				w.seen[v]++
				w.mu.Unlock()
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return w
}

func (w *leaderWatcher) halt() map[string]int {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

// TestReview22CancelledCampaignNeverLeader: a campaign whose ctx ends
// between the grant and the end of its steps returns an error (it never
// led), but it has written the leader row first: while its session still
// holds the named lock (until the discard), Leader names it and Observe
// delivers it as a leader. Promise checked: Leader and Observe only name
// campaigners that were handed a Leadership.
//
// The campaigner's pools go through the relay with latency, so that the
// steps after the write (the confirm on the pinned connection) take a
// few hundred milliseconds: the window is wide enough for a poller.
func TestReview22CancelledCampaignNeverLeader(t *testing.T) {
	e := setup(t)
	relay, rdb := faultRelay(t)
	side := faultOpen(t, mustDSN(t, relay))
	sideDB, err := side.DB()
	if err != nil {
		t.Fatal(err)
	}
	camp := faultLocker(t, rdb, e.table, dblock.SideDB(sideDB))
	obsL := e.locker(t)
	defer obsL.Close()
	ctx := ctxT(t)
	key := dblock.Resource("review22:cancelled")
	watched := obsL.Election(key)

	// Warm the campaigner's pools (the table's rows exist), then slow them.
	ld, err := camp.Election(key).Campaign(ctx, "warm")
	if err != nil {
		t.Fatal(err)
	}
	if err := ld.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	obsCtx, stopObs := context.WithCancel(ctx)
	defer stopObs()
	obs := watched.Observe(obsCtx)
	var observed []string
	var obsMu sync.Mutex
	obsDone := make(chan struct{})
	go func() {
		defer close(obsDone)
		for v := range obs {
			obsMu.Lock()
			observed = append(observed, v)
			obsMu.Unlock()
		}
	}()
	w := watchLeader(ctx, watched)

	relay.Latency(150 * time.Millisecond)
	cctx, cancel := context.WithCancel(ctx)
	res := campaignAsync(cctx, camp.Election(key), "cancelled")
	// Cancel as soon as the campaign's row is in the table (read directly):
	// the campaign is then between its write and its hand-out (the confirm
	// on the pinned connection takes a round trip through the relay).
	waitFor(t, "the campaign's row", func() bool {
		var n int
		if err := e.sqlDB.QueryRow("SELECT COUNT(*) FROM `" + schema.LeaderTable(e.table) + "` WHERE value = 'cancelled'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	cancel()
	r := <-res
	relay.Heal()
	if r.err == nil {
		_ = r.ld.Resign(ctx)
		t.Skip("the campaign won before the cancel: no window to check")
	}
	assertElectionFree(t, e, key)
	seen := w.halt()
	stopObs()
	<-obsDone
	t.Logf("Campaign: %v; Leader reads %d, values seen %v; observed %v", r.err, w.reads.Load(), seen, observed)
	if n := seen["cancelled"]; n > 0 {
		t.Errorf("Leader named %q %d times, but its Campaign returned an error (it never led): the row is written before the campaign may still fail, and counts while the failed campaign's session holds the named lock", "cancelled", n)
	}
	for _, v := range observed {
		if v == "cancelled" {
			t.Errorf("Observe delivered %q, a campaign that returned an error (never a leader)", v)
		}
	}
}

// mustDSN is the relay's DSN of the test server.
func mustDSN(t *testing.T, relay *faultproxy.Proxy) string {
	t.Helper()
	r, err := relay.DSN(mustTestDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mustTestDSN is the test server's DSN.
func mustTestDSN(t *testing.T) string {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// TestReview22FencingLockSameKeyClearError: the documented caveat (a
// Fencing lock of the election's key held while a campaign is granted
// makes the campaign fail) must fail with the error that names it, also
// with a short lease: the grant's steps are bounded by the lease minus its
// margin (0.8 s for Lease(1s)), shorter than the 1 s the bump waits for the
// counter's row, so the bump ends on the deadline, not on the lock wait.
func TestReview22FencingLockSameKeyClearError(t *testing.T) {
	for _, lease := range []time.Duration{time.Second, 5 * time.Second} {
		t.Run(lease.String(), func(t *testing.T) {
			e, l := setupLocker(t, dblock.Defaults(dblock.Lease(lease)))
			ctx := ctxT(t)
			key := dblock.Resource("review22:fencing")
			k, err := l.Lock(ctx, key, dblock.Fencing())
			if err != nil {
				t.Fatal(err)
			}
			defer k.Rollback()
			start := time.Now()
			ld, err := l.Election(key).Campaign(ctx, "v")
			if err == nil {
				_ = ld.Resign(ctx)
				t.Fatalf("Campaign led with token %d while a Fencing lock of the key (token %d) holds its counter", ld.Token(), k.Token())
			}
			t.Logf("Campaign failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if !strings.Contains(err.Error(), "fencing counter") {
				t.Errorf("Campaign's error does not say that the key's fencing counter is held (use a key of its own): %v", err)
			}
			_ = k.Rollback()
			assertElectionFree(t, e, key)
		})
	}
}

// TestReview22TwoPoolsOneElection: the same key elected through Lockers
// on two pools of one database (same table) is one election: one leader
// at a time, in server time (the named lock's holder is the leader's
// connection), and the follower takes over on Resign with a higher token.
func TestReview22TwoPoolsOneElection(t *testing.T) {
	e, l1 := setupLocker(t)
	db2 := faultOpen(t, mustTestDSN(t))
	l2 := faultLocker(t, db2, e.table)
	ctx := ctxT(t)
	key := dblock.Resource("review22:twopools")
	name := electionLock(t, e, key)
	a := mustCampaign(t, ctx, l1.Election(key), "a")
	b := campaignAsync(ctx, l2.Election(key), "b")
	waitForNamedLockWaits(t, e.sqlDB, name, 1)
	wantLeader(t, ctx, l2.Election(key), "a")
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	rb2 := <-b
	if rb2.err != nil {
		t.Fatal(rb2.err)
	}
	defer rb(rb2.ld)
	if rb2.ld.Token() <= a.Token() {
		t.Errorf("token %d after %d", rb2.ld.Token(), a.Token())
	}
	wantLeader(t, ctx, l1.Election(key), "b")
	// Two tables: two elections (the name includes the table).
	l3 := faultLocker(t, e.db, testdb.Table(t, e.db))
	c := mustCampaign(t, ctx, l3.Election(key), "c")
	t.Logf("tokens a %d, b %d, c (other table) %d", a.Token(), rb2.ld.Token(), c.Token())
	wantLeader(t, ctx, l3.Election(key), "c")
	wantLeader(t, ctx, l1.Election(key), "b")
}

// TestReview22PausedBeforeWrite: the leader's side pool is slow (1.2 s
// each way), so that its bump and write reach the server after its lease
// (2 s) with no keepalive yet: the server ends its idle session, a
// follower on another Locker wins. The paused campaign must return an
// error, never a Leadership, and Leader must never name it once the
// follower led.
func TestReview22PausedBeforeWrite(t *testing.T) {
	e := setup(t)
	relay, rdb := faultRelay(t)
	side, err := rdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	paused := faultLocker(t, e.db, e.table, dblock.SideDB(side), dblock.Defaults(dblock.Lease(2*time.Second)))
	follower := e.locker(t)
	defer follower.Close()
	ctx := ctxT(t)
	key := dblock.Resource("review22:paused")
	name := electionLock(t, e, key)
	warm, err := paused.Election(key).Campaign(ctx, "warm")
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	relay.Latency(1200 * time.Millisecond)
	p := campaignAsync(ctx, paused.Election(key), "paused")
	waitFor(t, "the paused campaign's grant", func() bool { return namedLockHolder(t, e.sqlDB, name) != 0 })
	f := campaignAsync(ctx, follower.Election(key), "follower")
	w := watchLeader(ctx, follower.Election(key))
	var rf, rp campaignResult
	for got := 0; got < 2; got++ {
		select {
		case rf = <-f:
			if rf.err != nil {
				t.Fatalf("follower: %v", rf.err)
			}
			defer rb(rf.ld)
			f = nil
		case rp = <-p:
			p = nil
		case <-time.After(opTimeout):
			t.Fatal("campaigns blocked")
		}
	}
	relay.Heal()
	seen := w.halt()
	t.Logf("paused: %v (at %v), follower led at %v; Leader values %v", rp.err, rp.at.Format("15:04:05.000"), rf.at.Format("15:04:05.000"), seen)
	if rp.err == nil {
		defer rb(rp.ld)
		t.Errorf("the paused campaign led (token %d) though its lease ran out before its row was written; follower token %d", rp.ld.Token(), rf.ld.Token())
	}
	if rp.err != nil && !errors.Is(rp.err, dblock.ErrLockLost) {
		t.Errorf("the paused campaign = %v, want ErrLockLost (its lease ran out between the grant and the hand-out; the caller's ctx did not end, yet the error matches context.DeadlineExceeded: %v)", rp.err, errors.Is(rp.err, context.DeadlineExceeded))
	}
	if seen["paused"] > 0 {
		t.Errorf("Leader named the paused campaign %d times", seen["paused"])
	}
	wantLeader(t, ctx, follower.Election(key), "follower")
}

// TestReview22SmallPool: with a pool of one connection, a leader pins it;
// Leader and Observe (side pool) still answer, a second campaign waits
// for the pool, bounded by its ctx, and the leader resigns cleanly.
func TestReview22SmallPool(t *testing.T) {
	e, l := setupLocker(t)
	e.sqlDB.SetMaxOpenConns(1)
	defer e.sqlDB.SetMaxOpenConns(0)
	ctx := ctxT(t)
	key := dblock.Resource("review22:small")
	el := l.Election(key)
	a := mustCampaign(t, ctx, el, "a")
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	wantLeader(t, lctx, el, "a")
	octx, stop := context.WithCancel(ctx)
	if got := nextValue(t, el.Observe(octx)); got != "a" {
		t.Errorf("observed %q", got)
	}
	stop()
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if ld, err := el.Campaign(short, "b"); err == nil {
		_ = ld.Resign(ctx)
		t.Error("second campaign led")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second campaign: %v, want the deadline", err)
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	assertElectionFree(t, e, key)
}
