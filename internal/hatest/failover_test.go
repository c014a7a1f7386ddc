package hatest_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
)

// TestReplicaFailover: a holder and waiters on the primary; the primary is
// SIGKILLed; the holder learns it lost the lock (Lost, then Commit wrapping
// ErrLockLost); the replica is promoted and the relay switched; new
// acquisitions succeed through the same *gorm.DB. It measures kill to
// acquire-and-commit.
func TestReplicaFailover(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	for _, semi := range []bool{false, true} {
		name := "async"
		if semi {
			name = "semisync"
		}
		t.Run(name, func(t *testing.T) { testReplicaFailover(t, semi) })
	}
}

func testReplicaFailover(t *testing.T, semi bool) {
	p := hatest.StartPair(t, semi)
	t.Logf("HA-RESULT setup of primary+replica (semi-sync %v): %v", semi, p.Setup.Round(time.Millisecond))
	setupSchema(t, p)

	db := openGorm(t, p.Relay.DSN("app", "app"))
	l := newLocker(t, db)
	ctx := context.Background()
	key := dblock.Resource("ha:failover")

	// Warm up: the key's row exists, and reached the replica.
	if _, err := acquireCommit(ctx, l, key, hatest.Ceiling); err != nil {
		t.Fatalf("first acquisition: %v", err)
	}
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)

	holder, err := l.Lock(ctx, key, dblock.Lease(2*time.Second))
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	defer func() { _ = holder.Rollback() }()
	if err := holder.Tx().Exec("UPDATE ha_business SET v = v + 100 WHERE id = 1").Error; err != nil {
		t.Fatalf("holder write: %v", err)
	}

	const waiters = 3
	var wg sync.WaitGroup
	waitErrs := make([]error, waiters)
	for i := range waiters {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, hatest.Ceiling)
			defer cancel()
			lk, err := l.Lock(wctx, key)
			if err == nil {
				// Granted on the dying primary? Only if the holder's
				// session ended first; it must not commit there.
				err = lk.Commit()
				if err == nil {
					err = errors.New("waiter committed on the old primary")
				}
			}
			waitErrs[i] = err
		})
	}
	waitLockWaiters(t, p.Primary, waiters)

	killed := time.Now()
	if err := p.Primary.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	lost := lostAfter(holder, killed, hatest.Ceiling)

	hatest.PromoteAfterRelayLog(t, p.Replica, hatest.Ceiling)
	promoted := time.Since(killed)
	p.Relay.Switch(p.Replica.Addr())
	attempts, err := acquireCommit(ctx, l, key, hatest.Ceiling)
	if err != nil {
		t.Fatalf("acquire-and-commit on the promoted replica through the same *gorm.DB: %v", err)
	}
	acquired := time.Since(killed)
	// A promoted semi-sync node has no replica of its own yet: its first
	// commit waits rpl_semi_sync_master_timeout (10 s) for an ack, then
	// semi-sync falls back to async.
	t.Logf("HA-RESULT failover (semi-sync %v): kill→promoted %v, kill→acquire-and-commit through the relay %v (%d attempts; with semi-sync this includes the promoted node's wait for a replica ack, rpl_semi_sync_master_timeout)",
		semi, promoted.Round(time.Microsecond), acquired.Round(time.Microsecond), attempts)

	d := <-lost
	if d < 0 {
		t.Errorf("holder: Lost() not closed within %v of the kill", hatest.Ceiling)
	} else {
		t.Logf("HA-RESULT holder Lost() closed %v after the kill (Lease 2s)", d.Round(time.Millisecond))
	}
	cerr := holder.Commit()
	if !errors.Is(cerr, dblock.ErrLockLost) {
		t.Errorf("holder Commit after the kill = %v, want ErrLockLost", cerr)
	}
	wg.Wait()
	for i, err := range waitErrs {
		if err == nil {
			t.Errorf("waiter %d: no error", i)
		}
		t.Logf("waiter %d on the killed primary: %v (ErrLockLost %v)", i, err, errors.Is(err, dblock.ErrLockLost))
	}

	// The holder's +100 was never committed; on the new primary v counts
	// only acknowledged acquire-and-commit cycles.
	v, err := p.Replica.QueryString(ctx, "SELECT v FROM ha_business WHERE id = 1")
	if err != nil {
		t.Fatal(err)
	}
	if v != "2" {
		t.Errorf("business value on the new primary = %s, want 2 (two committed cycles, the holder's write dropped)", v)
	}
}
