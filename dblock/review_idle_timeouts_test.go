package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// The lease rests on the session's idle bound being the lease. MariaDB has
// three idle bounds for a session inside a transaction, and picks the most
// specific one that is set (sql_class.h, THD::get_net_wait_timeout):
// idle_write_transaction_timeout for a transaction that wrote,
// idle_readonly_transaction_timeout for one that did not, and only then
// idle_transaction_timeout, the one the Locker checks and sets. A service
// that sets either of the other two (DSN, my.cnf, SET GLOBAL) gets a lease
// the server does not keep.

// reviewIdleDSN returns the test server's DSN with the session variable
// name set to value on every connection (as a DSN parameter).
func reviewIdleDSN(t *testing.T, name, value string) *gorm.DB {
	t.Helper()
	dsn := dsnWith(t, func(c *gomysql.Config) {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params[name] = value
	})
	return testdb.OpenDSN(t, dsn)
}

// TestReviewIdleWriteTimeoutEndsLeaseEarly: a holder that wrote and then
// idles (an outbound call, a computation) longer than the session's
// idle_write_transaction_timeout is ended by the server, and another holder
// gets the key, while the first one's fn context, Lost and Err still say it
// holds the lock. The holder must learn first (the lease contract), or the
// Locker must make the server's bound the lease.
func TestReviewIdleWriteTimeoutEndsLeaseEarly(t *testing.T) {
	e := setup(t)
	kv := e.kvTable(t)
	holderDB := reviewIdleDSN(t, "idle_write_transaction_timeout", "2")
	holder := faultLocker(t, holderDB, e.table)
	other := e.locker(t)
	defer other.Close()
	ctx := ctxT(t)
	key := dblock.Resource("idle-write")

	var violation error
	err := holder.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "a", 1); err != nil {
			return err
		}
		start := time.Now()
		// Idle on the holder's connection for 6 s (lease 10 s: well inside
		// the lease, whose keepalive pings only after a third of it), while
		// another process tries the key.
		for time.Since(start) < 6*time.Second {
			if fctx.Err() != nil {
				return fctx.Err() // the holder learnt of the loss: fine
			}
			if err := freeForOther(other, key); err == nil {
				violation = fmt.Errorf("another process took %s %v after the holder's last statement, while the holder's fn context was still live (Err %v)",
					key, time.Since(start).Round(time.Millisecond), fctx.Err())
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}, dblock.Lease(10*time.Second))
	t.Logf("Do returned %v", err)
	if violation != nil {
		t.Errorf("mutual exclusion: %v; the session's idle_write_transaction_timeout (2 s) overrides the idle_transaction_timeout the Locker sets (lease 10 s)", violation)
	}
}

// TestReviewIdleReadonlyTimeoutEndsLeaseEarly is the same for a lock-only
// transaction (a locking read is not a write) and the session's
// idle_readonly_transaction_timeout, through a Lock handle: Lost stays
// open while another process holds the key.
func TestReviewIdleReadonlyTimeoutEndsLeaseEarly(t *testing.T) {
	e := setup(t)
	holderDB := reviewIdleDSN(t, "idle_readonly_transaction_timeout", "2")
	holder := faultLocker(t, holderDB, e.table)
	other := e.locker(t)
	defer other.Close()
	ctx := ctxT(t)
	key := dblock.Resource("idle-readonly")

	lk, err := holder.Lock(ctx, key, dblock.Lease(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	start := time.Now()
	for time.Since(start) < 6*time.Second {
		if isClosed(lk.Lost()) {
			t.Logf("Lost closed after %v: %v", time.Since(start), lk.Err())
			return
		}
		if err := freeForOther(other, key); err == nil {
			t.Fatalf("mutual exclusion: another process took %s %v after the grant while the holder's Lost was open and Err() = %v: "+
				"the session's idle_readonly_transaction_timeout (2 s) overrides the lease (10 s)",
				key, time.Since(start).Round(time.Millisecond), lk.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReviewIdleReadonlyTimeoutOutlivesLease: the other way round, a
// session idle_readonly_transaction_timeout above the lease (here 120 s,
// lease 2 s) keeps the lock of a silently cut-off holder for that long,
// not for the lease: the holder declares it lost after 1.6 s, but a waiter
// bounded at 20 s (ten leases) never gets it.
func TestReviewIdleReadonlyTimeoutOutlivesLease(t *testing.T) {
	e := setup(t)
	p, _ := faultRelay(t)
	relayed, err := p.DSN(dsnWith(t, func(c *gomysql.Config) {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params["idle_readonly_transaction_timeout"] = "120"
	}))
	if err != nil {
		t.Fatal(err)
	}
	holder := faultLocker(t, testdb.OpenDSN(t, relayed), e.table)
	waiter := e.locker(t)
	defer waiter.Close()
	ctx := ctxT(t)
	key := dblock.Resource("idle-long")

	lk, err := holder.Lock(ctx, key, dblock.Lease(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	cut := time.Now()
	p.Blackhole()
	if _, ok := closedWithin(lk.Lost(), 10*time.Second); !ok {
		t.Fatal("Lost not closed 10 s after the partition")
	}
	t.Logf("holder Lost %v after the partition: %v", time.Since(cut).Round(time.Millisecond), lk.Err())
	w, err := waiter.Lock(ctx, key, dblock.WaitTimeout(20*time.Second))
	if err != nil {
		if errors.Is(err, dblock.ErrNotAcquired) {
			t.Fatalf("the key of a holder cut off %v ago (lease 2 s) is still held: %v; "+
				"the session's idle_readonly_transaction_timeout (120 s) is the server's bound, not the lease", time.Since(cut).Round(time.Millisecond), err)
		}
		t.Fatal(err)
	}
	t.Logf("waiter granted %v after the partition", time.Since(cut).Round(time.Millisecond))
	_ = w.Rollback()
}
