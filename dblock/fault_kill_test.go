package dblock_test

import (
	"context"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestFaultKillHolder: a holder process killed with SIGKILL gives its lock
// up as soon as the kernel closes its socket: the server ends its session
// and grants the key to the waiter, before the waiter's opTimeout (a lock
// that outlived its process would be held for the lease, 60 s by
// default). Five rounds; the time from the kill to the waiter's grant is
// logged (docs/PROTOCOL.md: 2–3 ms).
func TestFaultKillHolder(t *testing.T) {
	e, l := setupLocker(t)
	const rounds = 5
	var took []time.Duration
	for i := range rounds {
		key := dblock.Resource("kill")
		c := startChild(t, "hold", envFaultTable+"="+e.table, envFaultKey+"=kill")
		c.expect(t, "HELD", opTimeout)

		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		granted := make(chan result, 1)
		var k *dblock.Lock
		go func() {
			var err error
			k, err = l.Lock(ctx, key)
			granted <- result{err: err, at: time.Now()}
		}()
		waitForLockWaits(t, e.sqlDB, e.table, 1)
		killed := c.kill(t)
		r := <-granted
		c.reap(t, opTimeout)
		if r.err != nil {
			cancel()
			t.Fatalf("round %d: the waiter got %v, want the lock after the holder was killed", i, r.err)
		}
		took = append(took, r.at.Sub(killed))
		if err := k.Commit(); err != nil {
			t.Errorf("round %d: Commit: %v", i, err)
		}
		cancel()
		if k.Err() != nil {
			t.Errorf("round %d: Err after Commit = %v", i, k.Err())
		}
	}
	m := median(took)
	t.Logf("kill -9 of the holder to the waiter's grant: median %v over %d rounds (all: %v)", m.Round(10*time.Microsecond), rounds, roundMs(took))
}
