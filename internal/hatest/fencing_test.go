package hatest_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
)

// TestFencingAcrossFailovers: workers take a key with fencing tokens,
// through the relay, while the primary is SIGKILLed, the replica promoted
// (after applying its relay log), the relay switched and a new replica
// attached; three times. With semi-sync, the first token handed out after
// each failover must exceed every token handed out before it. With async
// replication the test measures whether tokens went back, and reports it.
func TestFencingAcrossFailovers(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	for _, c := range []struct {
		name                   string
		semi, careful, ballast bool
	}{
		{"semisync", true, true, false},
		{"semisync-lagging-replica", true, true, true},
		{"async", false, true, false},
		{"async-lagging-replica", false, true, true},
		// STOP SLAVE at once, without waiting for the relay log to be
		// applied: what a hasty failover script does.
		{"async-hasty-promotion", false, false, false},
		// The same with heavy writes beside the lock, so that the
		// replica's single SQL thread lags behind the primary.
		{"async-hasty-promotion-lagging-replica", false, false, true},
	} {
		t.Run(c.name, func(t *testing.T) { testFencing(t, c.semi, c.careful, c.ballast) })
	}
}

type observation struct {
	token int64
	epoch int64
}

func testFencing(t *testing.T, semi, careful, ballast bool) {
	const (
		rounds  = 3
		workers = 4
		load    = 700 * time.Millisecond
	)
	p := hatest.StartPair(t, semi)
	t.Logf("HA-RESULT setup of primary+replica (semi-sync %v): %v", semi, p.Setup.Round(time.Millisecond))
	setupSchema(t, p)
	db := openGorm(t, p.Relay.DSN("app", "app"))
	l := newLocker(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := dblock.Resource("ha:fence")
	if _, err := acquireCommit(ctx, l, key, 10*time.Second); err != nil {
		t.Fatalf("first acquisition: %v", err)
	}
	hatest.CatchUp(t, p.Primary, p.Replica, 30*time.Second)

	if ballast {
		startBallast(ctx, t, p)
	}

	// epoch is even while a primary serves (2r in round r) and odd during
	// a failover; an observation counts only if its Lock began and ended
	// in the same even epoch.
	var epoch atomic.Int64
	var mu sync.Mutex
	var obs []observation
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
					mu.Lock()
					obs = append(obs, observation{tok, e})
					mu.Unlock()
				}
				_ = lk.Commit()
				acancel()
			}
		})
	}

	primary, replica := p.Primary, p.Replica
	wentBack := 0
	for r := range rounds {
		time.Sleep(load)
		epoch.Store(int64(2*r + 1))
		killed := time.Now()
		if err := primary.Kill(); err != nil {
			t.Fatal(err)
		}
		if careful {
			hatest.PromoteAfterRelayLog(t, replica, 5*time.Second)
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

		// Wait for the first tokens of the new epoch.
		deadline := time.Now().Add(20 * time.Second)
		var maxBefore, minAfter int64 = 0, -1
		var nBefore, nAfter int
		for {
			mu.Lock()
			maxBefore, minAfter, nBefore, nAfter = 0, -1, 0, 0
			for _, o := range obs {
				switch o.epoch {
				case int64(2 * r):
					nBefore++
					maxBefore = max(maxBefore, o.token)
				case int64(2*r + 2):
					nAfter++
					if minAfter < 0 || o.token < minAfter {
						minAfter = o.token
					}
				}
			}
			mu.Unlock()
			if nAfter >= workers || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if nAfter == 0 {
			t.Fatalf("round %d: no acquisition after the failover within 20 s", r+1)
		}
		back := minAfter <= maxBefore
		if back {
			wentBack++
		}
		t.Logf("HA-RESULT fencing round %d (semi-sync %v, relay log applied before promotion %v, ballast %v): %d tokens before, max %d; counter on the promoted replica %s; first tokens after, min %d; went back: %v; kill→promoted+switched %v, kill→new replica attached %v",
			r+1, semi, careful, ballast, nBefore, maxBefore, counter, minAfter, back, promoted.Round(time.Millisecond), attached.Round(time.Millisecond))
		if semi && back {
			t.Errorf("round %d: semi-sync failover: token %d after the failover is not above %d handed out before", r+1, minAfter, maxBefore)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("HA-RESULT fencing (semi-sync %v, relay log applied before promotion %v, ballast %v): tokens went back in %d of %d failovers", semi, careful, ballast, wentBack, rounds)
}

// startBallast writes big transactions through the relay (as root, so that
// it follows the failovers) until ctx ends: the primary commits them in
// parallel, the replica applies them one by one and lags.
func startBallast(ctx context.Context, t *testing.T, p *hatest.Pair) {
	p.Primary.Exec(t, "CREATE TABLE IF NOT EXISTS test.ha_ballast (id BIGINT AUTO_INCREMENT PRIMARY KEY, b MEDIUMBLOB)")
	hatest.CatchUp(t, p.Primary, p.Replica, 30*time.Second)
	db, err := sql.Open("mysql", p.Relay.DSN("root", ""))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { wg.Wait(); _ = db.Close() })
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := db.ExecContext(ctx, "INSERT INTO ha_ballast (b) SELECT REPEAT('x', 100000) FROM seq_1_to_20")
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
}
