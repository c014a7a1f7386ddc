package dblock_test

// The lease as a bound users can rely on: a statement shorter than the
// documented bound keeps the lock, a nested wait is capped at the lease
// left, and a holder paused past its lease between the grant and its
// fencing token never gets a token.

import (
	"context"
	"errors"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestStatementWithinLeaseKeepsLock (issue 14 item 10, first half): with
// Lease(3s), fn is idle 0.9 s and then runs a 1.6 s statement: both are
// well within "lease minus the margin", so the lock is kept and Do
// commits fn's write.
func TestStatementWithinLeaseKeepsLock(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	start := time.Now()
	var stmt time.Duration
	err := l.Do(ctx, dblock.Resource("k"), func(ctx context.Context, tx *gorm.DB) error {
		time.Sleep(900 * time.Millisecond) // the holder's idle time is the behaviour under test
		s := time.Now()
		if err := tx.Exec("SELECT SLEEP(1.6)").Error; err != nil {
			return err
		}
		stmt = time.Since(s)
		return put(tx, kv, "w", 1)
	}, dblock.Lease(3*time.Second))
	t.Logf("Do with Lease(3s), 0.9 s idle then a %v statement: %v after %v", stmt.Round(time.Millisecond), err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Errorf("Do = %v, want nil (ErrLockLost: the bound on a statement is not lease minus the margin)", err)
	}
	if v := get(t, e.db, kv, "w"); v != 1 {
		t.Errorf("fn's write: %d, want it committed (1)", v)
	}
}

// TestNestedWaitCappedAtLease (issue 14 item 10, second half): with
// Lease(3s) and the server's lock wait timeout far above it (50 s, set in
// the DSN), a nested Do of a key held elsewhere, with no WaitTimeout and no
// deadline, must give up within the lease left: ErrNotAcquired, not the
// outer lock lost. The outer Do then commits fn's writes.
func TestNestedWaitCappedAtLease(t *testing.T) {
	e := setup(t)
	db := faultOpen(t, dsnWith(t, func(c *gomysql.Config) {
		c.Params = map[string]string{"innodb_lock_wait_timeout": "50"}
	}))
	l := faultLocker(t, db, e.table)
	holder := e.locker(t)
	defer holder.Close()
	kv := e.kvTable(t)
	a, b := dblock.Resource("a"), dblock.Resource("b")
	holdKey(t, ctxT(t), holder, b)
	var nested error
	var waited time.Duration
	err := l.Do(cancelOnly(t), a, func(ctx context.Context, tx *gorm.DB) error {
		if err := put(tx, kv, "before", 1); err != nil {
			return err
		}
		start := time.Now()
		nested = l.Do(ctx, b, fnMustNotRun(t))
		waited = time.Since(start)
		return put(tx, kv, "after", 1)
	}, dblock.Lease(3*time.Second))
	t.Logf("nested Do returned after %v: %v; outer Do: %v", waited.Round(time.Millisecond), nested, err)
	if !errors.Is(nested, dblock.ErrNotAcquired) || errors.Is(nested, dblock.ErrLockLost) {
		t.Errorf("nested Do = %v, want ErrNotAcquired, not ErrLockLost", nested)
	}
	if err != nil {
		t.Errorf("outer Do = %v, want nil", err)
	}
	if bv, av := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); bv != 1 || av != 1 {
		t.Errorf("fn's writes before=%d after=%d, want both committed (1)", bv, av)
	}
}

// TestPausedBeforeFencingNoToken (issue 14 item 4): the holder's side pool
// (where the fencing counter is bumped) is slow: each way takes 1.2 s, so
// the bump (a prepared statement: prepare, then execute) reaches the server
// 3.6 s after the grant and is answered after 4.8 s, beyond the Lease(2s)
// (one round trip, with interpolateParams, would be answered after 2.4 s:
// still beyond). Meanwhile
// the server ends the idle holder's transaction and a waiter on another
// Locker gets the key and its token. The paused holder's Lock must return
// ErrLockLost, never a token (its bump reached the server after the
// waiter's: its token would be the higher one).
func TestPausedBeforeFencingNoToken(t *testing.T) {
	e := setup(t)
	relay, rdb := faultRelay(t)
	side, err := rdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	holder := faultLocker(t, e.db, e.table, dblock.SideDB(side))
	waiter := e.locker(t)
	defer waiter.Close()
	ctx := ctxT(t)
	key := dblock.Resource("k")

	// The key's row and counter exist, the id is cached and the side pool
	// has an idle connection: from now on only the bump uses the relay.
	var first int64
	if err := holder.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
		first, _ = dblock.TokenFrom(ctx, key)
		return nil
	}, dblock.Fencing()); err != nil {
		t.Fatal(err)
	}
	relay.Latency(1200 * time.Millisecond)

	type held struct {
		k   *dblock.Lock
		err error
		at  time.Time
	}
	paused := make(chan held, 1)
	go func() {
		k, err := holder.Lock(ctx, key, dblock.Lease(2*time.Second), dblock.Fencing())
		paused <- held{k, err, time.Now()}
	}()
	// The holder is granted the key (its bump is on its way): then a waiter
	// queues on another Locker.
	waitFor(t, "the paused holder to be granted the key", func() bool { return heldByOther(waiter, key) == nil })
	w := awaitLock(t, lockAsync(ctx, waiter, key, dblock.Fencing(), dblock.WaitTimeout(opTimeout)), opTimeout)
	if w.err != nil {
		t.Fatalf("the waiter: %v", w.err)
	}
	defer w.k.Rollback()
	var p held
	select {
	case p = <-paused:
	case <-time.After(opTimeout):
		t.Fatalf("the paused holder's Lock still blocked %v after the waiter got the key", opTimeout)
	}
	relay.Heal()
	if p.k != nil {
		defer p.k.Rollback()
		t.Errorf("the paused holder's Lock returned a lock with token %d (waiter's %d, earlier %d; Err at return: %v), want ErrLockLost and no token",
			p.k.Token(), w.k.Token(), first, p.k.Err())
	}
	t.Logf("earlier token %d; waiter granted with token %d %v before the paused holder's Lock returned: %v",
		first, w.k.Token(), p.at.Sub(w.at).Round(time.Millisecond), p.err)
	if p.k == nil && !errors.Is(p.err, dblock.ErrLockLost) {
		t.Errorf("the paused holder's Lock = %v, want ErrLockLost", p.err)
	}
	if w.k.Token() <= first {
		t.Errorf("the waiter's token %d is not above the earlier %d", w.k.Token(), first)
	}
	if err := w.k.Commit(); err != nil {
		t.Errorf("the waiter's Commit: %v", err)
	}
}
