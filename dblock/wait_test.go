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
)

// MariaDB error numbers the waits end with.
const (
	erStatementTimeout = 1969 // max_statement_time
)

// checkNotAcquired checks that the acquisition what failed with
// ErrNotAcquired, wrapping the server's error number.
func checkNotAcquired(t *testing.T, what string, err error, number uint16) {
	t.Helper()
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("%s = %v, want ErrNotAcquired", what, err)
	}
	if number == 0 {
		// Not waiting is refused in the library's words: the server's
		// zero-second wait (1205) is not passed on as if a wait ran out.
		if me := (*gomysql.MySQLError)(nil); errors.As(err, &me) {
			t.Errorf("%s: server error %d, want none", what, me.Number)
		}
		return
	}
	if n := mysqlNumber(t, err); n != number {
		t.Errorf("server error %d, want %d", n, number)
	}
}

// TestWaitTimeout: a WaitTimeout(1s) acquisition of a held key fails with
// ErrNotAcquired after about 1 s, wrapping the server's error 1969.
func TestWaitTimeout(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("held")
	holdKey(t, ctx, l, key)

	start := time.Now()
	k, err := l.Lock(ctx, key, dblock.WaitTimeout(time.Second))
	elapsed := time.Since(start)
	if err == nil {
		_ = k.Rollback()
		t.Fatal("Lock of a held key succeeded")
	}
	checkNotAcquired(t, "Lock", err, erStatementTimeout)
	within(t, "WaitTimeout(1s)", elapsed, 900*time.Millisecond, opTimeout)
	// The holder still holds the key.
	assertHeld(t, l, key)
}

// TestWaitTimeoutSubSecond: WaitTimeout(300ms) is honoured although the
// server's lock-wait timeout takes whole seconds.
func TestWaitTimeoutSubSecond(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("held")
	holdKey(t, ctx, l, key)

	start := time.Now()
	err := l.Do(ctx, key, fnMustNotRun(t), dblock.WaitTimeout(300*time.Millisecond))
	elapsed := time.Since(start)
	checkNotAcquired(t, "Do", err, erStatementTimeout)
	within(t, "WaitTimeout(300ms)", elapsed, 250*time.Millisecond, opTimeout)
}

// TestWaitTimeoutDefault: WaitTimeout given through Defaults at New
// applies to every acquisition; a call's own option overrides it.
func TestWaitTimeoutDefault(t *testing.T) {
	_, l := setupLocker(t, dblock.Defaults(dblock.WaitTimeout(300*time.Millisecond)))
	ctx := ctxT(t)
	key := dblock.Resource("held")
	holdKey(t, ctx, l, key)

	start := time.Now()
	_, err := l.Lock(ctx, key)
	within(t, "Defaults(WaitTimeout(300ms))", time.Since(start), 250*time.Millisecond, opTimeout)
	checkNotAcquired(t, "Lock", err, erStatementTimeout)
	// NoWait wins over the default: no server error (the held row is
	// skipped), not the 1969 of the default's statement timeout.
	start = time.Now()
	_, err = l.Lock(ctx, key, dblock.NoWait())
	within(t, "NoWait over Defaults(WaitTimeout(300ms))", time.Since(start), 0, opTimeout)
	checkNotAcquired(t, "Lock(NoWait)", err, 0)
}

// TestContextDeadlineBoundsWait: without WaitTimeout, the context's
// deadline bounds the wait; the error says both ErrNotAcquired and
// context.DeadlineExceeded.
func TestContextDeadlineBoundsWait(t *testing.T) {
	_, l := setupLocker(t)
	key := dblock.Resource("held")
	holdKey(t, ctxT(t), l, key)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	k, err := l.Lock(ctx, key)
	elapsed := time.Since(start)
	if err == nil {
		_ = k.Rollback()
		t.Fatal("Lock of a held key succeeded")
	}
	checkDeadlineError(t, err)
	within(t, "a 500ms context deadline", elapsed, 400*time.Millisecond, 2*time.Second)
	// A deadline shorter than WaitTimeout wins too.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	start = time.Now()
	_, err = l.Lock(ctx2, key, dblock.WaitTimeout(10*time.Second))
	checkDeadlineError(t, err)
	within(t, "a 300ms context deadline under WaitTimeout(10s)", time.Since(start), 200*time.Millisecond, 2*time.Second)
}

// checkDeadlineError checks the error of an acquisition whose wait the
// context's deadline bounded: it must say both ErrNotAcquired and
// context.DeadlineExceeded, whichever ended the wait: the server's
// statement timeout (1969, asked for 10 ms before the deadline), the
// library's interruption at the deadline (1317), or, when the server did
// not answer that either, the closed connection. Which one it was depends
// on the machine's load: it is logged, not asserted.
func checkDeadlineError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock = %v, want ErrNotAcquired and context.DeadlineExceeded: the wait ran out", err)
	}
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		t.Logf("the wait ended with the server's error %d", me.Number)
	} else {
		t.Logf("the wait ended without a server error: %v", err)
	}
}

// TestTryLockHeld: TryLock, and Lock or Do with NoWait, of a held key fail
// at once with ErrNotAcquired, in the library's words (no server error:
// the held row is skipped).
func TestTryLockHeld(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.User("u-7")
	holdKey(t, ctx, l, key)

	for _, c := range []struct {
		name string
		try  func() error
	}{
		{"TryLock", func() error {
			k, err := l.TryLock(ctx, key)
			if err == nil {
				_ = k.Rollback()
			}
			return err
		}},
		{"Lock(NoWait)", func() error {
			k, err := l.Lock(ctx, key, dblock.NoWait())
			if err == nil {
				_ = k.Rollback()
			}
			return err
		}},
		{"Do(NoWait)", func() error {
			return l.Do(ctx, key, fnMustNotRun(t), dblock.NoWait())
		}},
		{"TryLock over WaitTimeout", func() error {
			k, err := l.TryLock(ctx, key, dblock.WaitTimeout(5*time.Second))
			if err == nil {
				_ = k.Rollback()
			}
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			err := c.try()
			elapsed := time.Since(start)
			// No server error: a held row is refused at once, not after
			// a wait; a WaitTimeout(5s) would end with 1969.
			checkNotAcquired(t, c.name, err, 0)
			within(t, c.name, elapsed, 0, opTimeout)
		})
	}
}

// TestHandOff: Lock waits while the key is held, and gets it once the
// holder commits; the holder's writes are visible to the new holder.
func TestHandOff(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	ctx := ctxT(t)
	key := dblock.Resource("order:42")
	holder := mustLock(t, ctx, l, key)
	if err := put(holder.Tx(), kv, "state", 1); err != nil {
		t.Fatal(err)
	}

	got := make(chan result, 1)
	var seen int64 = -2
	go func() {
		k, err := l.Lock(ctx, key)
		if err == nil {
			err = k.Tx().Raw("SELECT v FROM `" + kv + "` WHERE k = 'state'").Row().Scan(&seen)
			if cerr := k.Commit(); err == nil {
				err = cerr
			}
		}
		got <- result{err: err, at: time.Now()}
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	select {
	case r := <-got:
		t.Fatalf("Lock returned while the key was held: %v", r.err)
	case <-time.After(200 * time.Millisecond):
	}
	committed := time.Now()
	if err := holder.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("waiting Lock: %v", r.err)
	}
	within(t, "the hand-off after Commit", r.at.Sub(committed), 0, opTimeout)
	if seen != 1 {
		t.Errorf("the new holder read %d, want the previous holder's committed 1", seen)
	}
}

// TestCancelWhileWaiting: a waiter whose context is cancelled returns at
// once with context.Canceled, its statement leaves the server's queue (the
// library kills it), and a live waiter queued behind it gets the key as
// soon as the holder commits.
func TestCancelWhileWaiting(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("hot")
	holder := holdKey(t, ctx, l, key)

	// The waiter that gives up.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waiterStart := time.Now()
	gaveUp := make(chan result, 1)
	go func() {
		err := l.Do(wctx, key, func(context.Context, *gorm.DB) error {
			t.Error("the cancelled waiter's fn ran")
			return nil
		})
		gaveUp <- result{err: err, at: time.Now()}
	}()
	dead := waitForLockWaits(t, e.sqlDB, e.table, 1)[0]

	// A live waiter, queued behind it.
	granted := make(chan result, 2)
	go func() {
		err := l.Do(ctx, key, func(context.Context, *gorm.DB) error {
			granted <- result{at: time.Now()}
			return nil
		})
		if err != nil {
			granted <- result{err: err, at: time.Now()}
		}
	}()
	waiting := waitForLockWaits(t, e.sqlDB, e.table, 2)
	var live process
	for _, p := range waiting {
		if p.id != dead.id {
			live = p
		}
	}

	time.Sleep(time.Until(waiterStart.Add(100 * time.Millisecond)))
	cancelled := time.Now()
	cancel()
	r := <-gaveUp
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", r.err)
	}
	if errors.Is(r.err, dblock.ErrNotAcquired) {
		t.Errorf("cancelled waiter: %v also says ErrNotAcquired", r.err)
	}
	// "At once": a few milliseconds, logged; the alternative,
	// innodb_lock_wait_timeout, is 50 s, above the ceiling.
	within(t, "the return of the cancelled waiter", r.at.Sub(cancelled), 0, opTimeout)

	// Its statement leaves the server's queue while the holder still
	// holds the key (the library kills it), not at innodb_lock_wait_timeout.
	gone := false
	for time.Since(r.at) < opTimeout {
		gone = true
		for _, p := range lockWaits(t, e.sqlDB, e.table) {
			if p.id == dead.id {
				gone = false
			}
		}
		if gone {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !gone {
		t.Fatalf("connection %d still runs its locking read %v after the waiter returned: %v", dead.id, opTimeout, lockWaits(t, e.sqlDB, e.table))
	}
	t.Logf("its statement was gone from PROCESSLIST %v after it returned", time.Since(r.at))
	if ps := lockWaits(t, e.sqlDB, e.table); len(ps) != 1 || ps[0].id != live.id {
		t.Fatalf("lock waits %v, want only the live waiter's (connection %d)", ps, live.id)
	}

	committed := time.Now()
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	g := <-granted
	if g.err != nil {
		t.Fatalf("live waiter: %v", g.err)
	}
	// Not delayed by a grant to the dead waiter: its statement was gone
	// from the queue before the Commit (checked above).
	within(t, "the grant to the live waiter after Commit", g.at.Sub(committed), 0, opTimeout)
}

// TestWaitTimeoutBehindDDL: acquisitions queued behind a DDL on the lock
// table (a DROP waiting for the metadata lock a holder's transaction
// keeps) end when WaitTimeout runs out, before the DDL gives up: the
// locking read of a cached row (the server's statement timeout cuts its
// metadata wait short) and the row step of a key not seen yet (its lookup
// on the side pool is bounded by WaitTimeout too).
func TestWaitTimeoutBehindDDL(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	a, cached, fresh := dblock.Resource("a"), dblock.Resource("cached"), dblock.Resource("fresh")
	if err := l.Do(ctx, cached, nop); err != nil { // its row exists and its id is cached
		t.Fatal(err)
	}
	holdKey(t, ctx, l, a) // its transaction holds a metadata lock on the table

	conn, err := e.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 60"); err != nil {
		t.Fatal(err)
	}
	var dropConn int64
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&dropConn); err != nil {
		t.Fatal(err)
	}
	dropped := make(chan error, 1)
	go func() {
		_, err := conn.ExecContext(ctx, "DROP TABLE `"+e.table+"_fence`, `"+e.table+"`")
		dropped <- err
	}()
	waitFor(t, "the DROP waiting for its metadata lock", func() bool {
		var n int
		err := e.db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DROP TABLE `" + e.table + "%' AND STATE LIKE '%metadata lock%'").Row().Scan(&n)
		return err == nil && n > 0
	})
	for _, key := range []dblock.Key{cached, fresh} {
		start := time.Now()
		err := l.Do(ctx, key, fnMustNotRun(t), dblock.WaitTimeout(time.Second))
		took := time.Since(start)
		select {
		case derr := <-dropped:
			t.Fatalf("the DROP ended (%v) before Do(%s) returned (%v after %v): WaitTimeout did not end the wait", derr, key, err, took)
		default:
		}
		t.Logf("Do(%s, WaitTimeout(1s)) behind the DROP returned after %v: %v", key, took.Round(time.Millisecond), err)
		if !errors.Is(err, dblock.ErrNotAcquired) {
			t.Fatalf("Do(%s) = %v, want ErrNotAcquired", key, err)
		}
	}
	// Call the DROP off: the table stays.
	if err := e.db.Exec(fmt.Sprintf("KILL QUERY %d", dropConn)).Error; err != nil {
		t.Fatal(err)
	}
	if derr := <-dropped; derr == nil {
		t.Fatal("the DROP went through although a holder kept its metadata lock")
	}
}
