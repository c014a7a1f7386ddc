package dblock_test

// Review 22: a dead leader's row matched again after a restart.

import (
	"database/sql/driver"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/faultproxy"
	"github.com/txlock/txlock/internal/testdb"
)

// TestReview22RestartReusedConnectionID: the leader row counts while
// conn_id = IS_USED_LOCK(name). After a server restart connection ids
// start again from 1: a new campaigner whose pinned connection gets the
// dead leader's id is granted the named lock, and from its grant until its
// own row is written the dead leader's row matches again. Leader then
// names the dead leader (whose Done closed at the restart) and returns its
// value. The new campaigner's side pool is slow (a relay with latency), so
// that the window between its grant and its write is wide.
//
// Promise checked: Leader never names a dead leader.
func TestReview22RestartReusedConnectionID(t *testing.T) {
	verifyNoGoroutineLeak(t)
	srv := testdb.ThrowawayFor(t)
	dbA := faultOpen(t, srv.DSN())
	table := testdb.Table(t, dbA)
	sqlA, err := dbA.DB()
	if err != nil {
		t.Fatal(err)
	}
	ev := env{db: dbA, sqlDB: sqlA, table: table}
	lA := faultLocker(t, dbA, table, dblock.Defaults(dblock.Lease(2*time.Second)))
	ctx := ctxT(t)
	key := dblock.Resource("review22:reuse")
	name := electionLock(t, ev, key)

	a, err := lA.Election(key).Campaign(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	defer rb(a)
	idA := namedLockHolder(t, sqlA, name)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(opTimeout):
		t.Fatal("A's Done still open after the restart")
	}
	t.Logf("A (token %d, connection %d) lost: %v", a.Token(), idA, a.Err())

	// B's pool: one connection, whose id is A's.
	dbB := faultOpen(t, srv.DSN())
	sqlB, err := dbB.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlB.SetMaxOpenConns(1)
	for {
		c, err := sqlB.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
			t.Fatal(err)
		}
		if id == idA {
			_ = c.Close() // idle in the pool: the campaign pins it
			break
		}
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
		_ = c.Close()
		if id > idA {
			t.Skipf("connection ids after the restart passed %d (at %d): no reuse to test", idA, id)
		}
	}
	relay, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Close() })
	rdsn, err := relay.DSN(srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	side := faultOpen(t, rdsn)
	sideB, err := side.DB()
	if err != nil {
		t.Fatal(err)
	}
	if err := sideB.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	lB := faultLocker(t, dbB, table, dblock.SideDB(sideB), dblock.Defaults(dblock.Lease(5*time.Second)))
	lC := faultLocker(t, faultOpen(t, srv.DSN()), table)
	w := watchLeader(ctx, lC.Election(key))
	relay.Latency(200 * time.Millisecond)
	b, err := lB.Election(key).Campaign(ctx, "B")
	relay.Heal()
	seen := w.halt()
	if err != nil {
		t.Fatalf("B's campaign: %v", err)
	}
	defer rb(b)
	idB := namedLockHolder(t, sqlA, name)
	t.Logf("B leads with token %d on connection %d (A's was %d); Leader values seen during B's campaign: %v", b.Token(), idB, idA, seen)
	if seen["A"] > 0 {
		t.Errorf("Leader named the dead leader A %d times after the restart (its connection id %d was reused by B's campaign, granted but not yet written)", seen["A"], idA)
	}
}
