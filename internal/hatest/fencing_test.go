package hatest_test

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
)

// TestFencingAcrossFailovers: workers take a key with fencing tokens,
// through the relay, while the primary is SIGKILLed, the replica promoted,
// the relay switched and a new replica attached; three times. With
// semi-sync, the first token handed out after each failover must exceed
// every token handed out before it. With async replication the test
// measures whether tokens went back, and reports it.
//
// Two ways to promote. Careful (PromoteAfterRelayLog): the replica applies
// everything it has received first; that is a precondition, and the test
// fails if it cannot happen. Hasty (Promote): STOP SLAVE at once, by
// design without waiting, what a hasty failover script does; what the
// replica had received but not applied is dropped, and the test measures
// how often that sends tokens back.
func TestFencingAcrossFailovers(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	for _, c := range []struct {
		name    string
		semi    bool
		promote promotion
		ballast bool
	}{
		{"semisync", true, careful, false},
		{"semisync-lagging-replica", true, careful, true},
		{"async", false, careful, false},
		{"async-lagging-replica", false, careful, true},
		{"async-hasty-promotion", false, hasty, false},
		// The same with heavy writes beside the lock, so that the
		// replica's single SQL thread lags behind the primary.
		{"async-hasty-promotion-lagging-replica", false, hasty, true},
	} {
		t.Run(c.name, func(t *testing.T) { testFencing(t, c.semi, c.promote, c.ballast) })
	}
}

// promotion is how the fencing test promotes the replica.
type promotion bool

const (
	careful promotion = true  // apply the relay log first (a precondition)
	hasty   promotion = false // STOP SLAVE at once, without waiting
)

type observation struct {
	token int64
	epoch int64
}

// observations is what the fencing test's workers saw, shared with the
// goroutine that runs the failovers.
type observations struct {
	mu  sync.Mutex
	obs []observation
}

func (o *observations) add(ob observation) {
	o.mu.Lock()
	o.obs = append(o.obs, ob)
	o.mu.Unlock()
}

// in returns how many tokens were observed in epoch e, and their lowest
// and highest (-1 and 0 when there were none).
func (o *observations) in(e int64) (n int, lo, hi int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	lo = -1
	for _, ob := range o.obs {
		if ob.epoch != e {
			continue
		}
		n++
		hi = max(hi, ob.token)
		if lo < 0 || ob.token < lo {
			lo = ob.token
		}
	}
	return n, lo, hi
}

// waitFor waits until at least n tokens were observed in epoch e, or
// hatest.Ceiling passes, and returns what in(e) returns then.
func (o *observations) waitFor(e int64, n int) (int, int64, int64) {
	deadline := time.Now().Add(hatest.Ceiling)
	for {
		got, lo, hi := o.in(e)
		if got >= n || time.Now().After(deadline) {
			return got, lo, hi
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testFencing(t *testing.T, semi bool, promote promotion, ballast bool) {
	const (
		rounds  = 3
		workers = 4
		load    = 700 * time.Millisecond // at least; and at least workers tokens
	)
	p := hatest.StartPair(t, semi)
	t.Logf("HA-RESULT setup of primary+replica (semi-sync %v): %v", semi, p.Setup.Round(time.Millisecond))
	setupSchema(t, p)
	db := openGorm(t, p.Relay.DSN("app", "app"))
	l := newLocker(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := dblock.Resource("ha:fence")
	if _, err := acquireCommit(ctx, l, key, hatest.Ceiling); err != nil {
		t.Fatalf("first acquisition: %v", err)
	}
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)

	// epoch is even while a primary serves (2r in round r) and odd during
	// a failover; an observation counts only if its Lock began and ended
	// in the same even epoch.
	var epoch atomic.Int64
	failingOver := func() bool { return epoch.Load()%2 == 1 }
	if ballast {
		startBallast(ctx, t, p, failingOver)
	}
	var obs observations
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				e := epoch.Load()
				if e%2 == 1 {
					time.Sleep(time.Millisecond)
					continue
				}
				actx, acancel := context.WithTimeout(ctx, 2*time.Second)
				lk, err := l.Lock(actx, key, dblock.Fencing(), dblock.WaitTimeout(time.Second))
				if err != nil {
					acancel()
					time.Sleep(time.Millisecond)
					continue
				}
				tok := lk.Token()
				if epoch.Load() == e {
					obs.add(observation{tok, e})
				}
				_ = lk.Commit()
				acancel()
			}
		})
	}

	primary, replica := p.Primary, p.Replica
	wentBack := 0
	for r := range rounds {
		// The load before the kill: at least load long, and at least one
		// token per worker, so that "went back" compares with something.
		time.Sleep(load)
		if n, _, _ := obs.waitFor(int64(2*r), workers); n == 0 {
			t.Fatalf("round %d: no token handed out before the kill within %v", r+1, hatest.Ceiling)
		}
		lag := "no ballast"
		if ballast {
			// The ballast pauses during failovers: let the replica fall
			// behind again before the kill.
			lag = waitLag(t, primary, replica, minLag, lagWait)
		}
		epoch.Store(int64(2*r + 1))
		killed := time.Now()
		if err := primary.Kill(); err != nil {
			t.Fatal(err)
		}
		if promote == careful {
			hatest.PromoteAfterRelayLog(t, replica, hatest.Ceiling)
		} else {
			hatest.Promote(t, replica)
		}
		counter, _ := replica.QueryString(ctx, "SELECT MAX(token) FROM tb_lock_fence")
		p.Relay.Switch(replica.Addr())
		promoted := time.Since(killed)
		next := hatest.StartReplica(t, fmt.Sprintf("replica%d", r+2), r+3, replica, semi)
		attached := time.Since(killed)
		primary, replica = replica, next
		epoch.Store(int64(2*r + 2))

		// The first tokens of the new epoch.
		nAfter, minAfter, _ := obs.waitFor(int64(2*r+2), workers)
		if nAfter == 0 {
			t.Fatalf("round %d: no acquisition after the failover within %v", r+1, hatest.Ceiling)
		}
		nBefore, _, maxBefore := obs.in(int64(2 * r))
		back := minAfter <= maxBefore
		if back {
			wentBack++
		}
		t.Logf("HA-RESULT fencing round %d (semi-sync %v, relay log applied before promotion %v, ballast %v): %d tokens before, max %d; at the kill %s; counter on the promoted replica %s; first tokens after, min %d; went back: %v; kill→promoted+switched %v, kill→new replica attached %v",
			r+1, semi, promote == careful, ballast, nBefore, maxBefore, lag, counter, minAfter, back, promoted.Round(time.Millisecond), attached.Round(time.Millisecond))
		if semi && back {
			t.Errorf("round %d: semi-sync failover: token %d after the failover is not above %d handed out before", r+1, minAfter, maxBefore)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("HA-RESULT fencing (semi-sync %v, relay log applied before promotion %v, ballast %v): tokens went back in %d of %d failovers", semi, promote == careful, ballast, wentBack, rounds)
}

// How far behind the primary a replica under ballast should be at the
// kill (transactions binlogged on the primary, not yet applied on the
// replica), and how long to wait for it before killing anyway: a
// measurement's precondition, not a check, so the round then goes on and
// the log says how far behind the replica was.
const (
	minLag  = 3
	lagWait = 30 * time.Second
)

// waitLag waits until replica has applied at least minLag transactions
// fewer than primary binlogged, or until within passes, and describes the
// positions then.
func waitLag(t *testing.T, primary, replica *hatest.Node, minLag int64, within time.Duration) string {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, perr := primary.QueryString(ctx, "SELECT @@gtid_binlog_pos")
		a, aerr := replica.QueryString(ctx, "SELECT @@gtid_slave_pos")
		cancel()
		if perr != nil || aerr != nil {
			t.Fatalf("reading the positions of %s and %s: %v, %v", primary.Name, replica.Name, perr, aerr)
		}
		behind := gtidSeq(p) - gtidSeq(a)
		if behind >= minLag || time.Since(start) > within {
			return fmt.Sprintf("%s binlogged up to %s, %s applied up to %s: %d transactions behind (after waiting %v for %d)",
				primary.Name, p, replica.Name, a, behind, time.Since(start).Round(time.Millisecond), minLag)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gtidSeq returns the sequence number of domain 0 in a GTID position such
// as "0-3-136" (0 when there is none): in GTID strict mode it grows by one
// per transaction, whichever server wrote it.
func gtidSeq(pos string) int64 {
	for _, g := range strings.Split(pos, ",") {
		parts := strings.Split(strings.TrimSpace(g), "-")
		if len(parts) == 3 && parts[0] == "0" {
			n, _ := strconv.ParseInt(parts[2], 10, 64)
			return n
		}
	}
	return 0
}

// startBallast writes big transactions through the relay (as root, so that
// it follows the failovers) until ctx ends: the primary commits them in
// parallel, the replica applies them one by one and lags. It pauses while
// paused() (a failover: the kill, the promotion and the attachment of the
// next replica, which must copy the whole binary log; writes racing that
// copy only make it longer, on a busy machine without bound).
func startBallast(ctx context.Context, t *testing.T, p *hatest.Pair, paused func() bool) {
	p.Primary.Exec(t, "CREATE TABLE IF NOT EXISTS test.ha_ballast (id BIGINT AUTO_INCREMENT PRIMARY KEY, b MEDIUMBLOB)")
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)
	db, err := sql.Open("mysql", p.Relay.DSN("root", ""))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { wg.Wait(); _ = db.Close() })
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if paused() {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				_, err := db.ExecContext(ctx, "INSERT INTO ha_ballast (b) SELECT REPEAT('x', 100000) FROM seq_1_to_20")
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
}
