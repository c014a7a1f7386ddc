package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// maxHoldBound is the MaxHold of the fault tests: long enough for fn to
// write and get stuck, short enough to keep the tests quick.
const maxHoldBound = 300 * time.Millisecond

// maxHoldStuck runs a Do of key on l with MaxHold(maxHoldBound) whose fn
// writes k=1 through tx, then gets stuck in stuck until release is
// closed. Another Locker, other, waits for the key meanwhile. It checks
// the order: fn's context was cancelled with a cause naming MaxHold
// before other was granted the key; then it releases fn and returns Do's
// error. It logs the measured delays.
func maxHoldStuck(t *testing.T, l, other *dblock.Locker, kv string, key dblock.Key,
	stuck func(ctx context.Context, tx *gorm.DB, release <-chan struct{}) error) error {
	t.Helper()
	ctx := ctxT(t)
	entered := make(chan context.Context, 1)
	release := make(chan struct{})
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
			if err := put(tx, kv, "k", 1); err != nil {
				return err
			}
			entered <- ctx
			return stuck(ctx, tx, release)
		}, dblock.MaxHold(maxHoldBound))
	}()
	var fnCtx context.Context
	select {
	case fnCtx = <-entered:
	case err := <-done:
		t.Fatalf("Do returned before fn got stuck: %v", err)
	}
	granted := time.Now()
	lk, err := other.Lock(ctx, key, dblock.WaitTimeout(opTimeout))
	if err != nil {
		close(release)
		t.Fatalf("the other holder waited %v and was not granted the key: %v", time.Since(granted), err)
	}
	grantedAt := time.Now()
	// The order: the stuck holder's context ended before the grant.
	cause := context.Cause(fnCtx)
	if fnCtx.Err() == nil || !errors.Is(cause, dblock.ErrLockLost) {
		t.Errorf("the other holder was granted the key while the stuck holder's context was not cancelled with ErrLockLost (cause %v)", cause)
	}
	mustContain(t, cause, "MaxHold(300ms) ran out")
	if err := lk.Rollback(); err != nil {
		t.Fatal(err)
	}
	close(release)
	var doErr error
	select {
	case doErr = <-done:
	case <-time.After(opTimeout):
		t.Fatalf("Do did not return %v after fn was released", opTimeout)
	}
	t.Logf("MaxHold(%v): the other holder was granted the key %v after fn started (%v after MaxHold ran out); Do returned %v",
		maxHoldBound, grantedAt.Sub(start).Round(time.Millisecond), (grantedAt.Sub(start) - maxHoldBound).Round(time.Millisecond), doErr)
	return doErr
}

// wantMaxHoldLoss checks Do's error after MaxHold ran out, and that fn's
// write through tx was rolled back.
func wantMaxHoldLoss(t *testing.T, e env, kv string, err error) {
	t.Helper()
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Fatalf("Do = %v, want ErrLockLost", err)
	}
	mustContain(t, err, "MaxHold(300ms) ran out")
	if v := get(t, e.db, kv, "k"); v != -1 {
		t.Errorf("fn's write through tx is committed (k=%d) after MaxHold took the lock away", v)
	}
}

// TestFaultMaxHoldStuckInGo: fn is stuck in Go code that ignores its
// context; MaxHold ends the transaction (its writes roll back) and
// another holder gets the key; fn's Commit, when it comes back, refuses.
func TestFaultMaxHoldStuckInGo(t *testing.T) {
	e, l := setupLocker(t)
	other := faultLocker(t, otherPool(t), e.table)
	kv := e.kvTable(t)
	err := maxHoldStuck(t, l, other, kv, dblock.Resource("stuck-go"), func(_ context.Context, _ *gorm.DB, release <-chan struct{}) error {
		<-release
		return nil
	})
	wantMaxHoldLoss(t, e, kv, err)
	mustContain(t, err, "not committed")
	// The Locker's pool still serves locks.
	if err := l.Do(ctxT(t), dblock.Resource("stuck-go"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestFaultMaxHoldStuckInStatement: fn is stuck in a statement on the
// lock's transaction that its context does not interrupt (SLEEP(100)
// under a context without cancellation): only the KILL of the lock's
// connection from the side pool frees the key.
func TestFaultMaxHoldStuckInStatement(t *testing.T) {
	e, l := setupLocker(t)
	other := faultLocker(t, otherPool(t), e.table)
	kv := e.kvTable(t)
	var stmtErr error
	err := maxHoldStuck(t, l, other, kv, dblock.Resource("stuck-stmt"), func(ctx context.Context, tx *gorm.DB, _ <-chan struct{}) error {
		_, stmtErr = dblock.SQL(tx).ExecContext(context.WithoutCancel(ctx), "SELECT SLEEP(100)")
		return stmtErr
	})
	t.Logf("the stuck statement returned %v", stmtErr)
	if stmtErr == nil {
		t.Error("SLEEP(100) returned without an error: it was not interrupted")
	}
	wantMaxHoldLoss(t, e, kv, err)
}

// TestFaultMaxHoldHandleStuckInStatement: the holder of a Lock handle is
// stuck in a statement waiting for a row lock that a third transaction
// holds (a lock wait of 100 s, under a context without cancellation),
// and never calls Commit or Rollback. Nothing of the handle's own ends
// the lock then: MaxHold's KILL must be sent when the bound runs out, not
// when the handle is released.
func TestFaultMaxHoldHandleStuckInStatement(t *testing.T) {
	e, l := setupLocker(t)
	other := faultLocker(t, otherPool(t), e.table)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "blocker", 1); err != nil {
		t.Fatal(err)
	}
	third := e.db.Begin()
	if err := third.Exec("SELECT v FROM `" + kv + "` WHERE k = 'blocker' FOR UPDATE").Error; err != nil {
		t.Fatal(err)
	}
	defer third.Rollback()
	ctx := ctxT(t)
	key := dblock.Resource("stuck-handle")
	lk, err := l.Lock(ctx, key, dblock.MaxHold(maxHoldBound))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stmtDone := make(chan error, 1)
	go func() {
		_, err := dblock.SQL(lk.Tx()).ExecContext(context.WithoutCancel(ctx),
			"SET STATEMENT innodb_lock_wait_timeout = 100 FOR SELECT v FROM `"+kv+"` WHERE k = 'blocker' FOR UPDATE")
		stmtDone <- err
	}()
	lk2, err := other.Lock(ctx, key, dblock.WaitTimeout(opTimeout))
	if err != nil {
		t.Fatalf("the other holder waited %v and was not granted the key: %v", time.Since(start).Round(time.Millisecond), err)
	}
	granted := time.Since(start)
	select {
	case <-lk.Lost():
	default:
		t.Error("the other holder was granted the key before the stuck handle's Lost was closed")
	}
	if !errors.Is(lk.Err(), dblock.ErrLockLost) {
		t.Errorf("the stuck handle's Err = %v, want ErrLockLost", lk.Err())
	}
	t.Logf("MaxHold(%v) of a handle stuck in a lock wait: the other holder was granted the key %v after the statement started; the statement returned %v",
		maxHoldBound, granted.Round(time.Millisecond), <-stmtDone)
	if err := lk2.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := lk.Rollback(); err != nil {
		t.Errorf("Rollback of the handle after MaxHold: %v", err)
	}
}

// TestFaultMaxHoldDBInsteadOfTx: fn writes through the pool instead of its
// transaction, on a pool of one connection, which the lock's transaction
// holds: without a bound it waits forever. MaxHold takes the lock away,
// the other holder gets the key, and the pool's write, let through once
// the connection is freed, runs in autocommit (the caller's bug, not a
// lock's write).
func TestFaultMaxHoldDBInsteadOfTx(t *testing.T) {
	e := setup(t)
	small := otherPool(t)
	sqlSmall, err := small.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlSmall.SetMaxOpenConns(1)
	l := faultLocker(t, small, e.table)
	other := faultLocker(t, otherPool(t), e.table)
	kv := e.kvTable(t)
	var poolErr error
	err = maxHoldStuck(t, l, other, kv, dblock.Resource("db-not-tx"), func(_ context.Context, _ *gorm.DB, _ <-chan struct{}) error {
		poolErr = put(small, kv, "pool", 1) // no context: waits for the one connection
		return poolErr
	})
	wantMaxHoldLoss(t, e, kv, err)
	t.Logf("the write through the pool returned %v; it committed in autocommit: %v", poolErr, get(t, e.db, kv, "pool") == 1)
}

// TestFaultMaxHoldLock: a Lock handle held past MaxHold: Lost is closed,
// Err and Commit say MaxHold, and the key goes to another holder.
func TestFaultMaxHoldLock(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("maxhold-lock")
	lk, err := l.Lock(ctx, key, dblock.MaxHold(maxHoldBound))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	start := time.Now()
	at, ok := closedWithin(lk.Lost(), opTimeout)
	if !ok {
		t.Fatalf("Lost not closed %v after MaxHold(%v)", opTimeout, maxHoldBound)
	}
	within(t, "Lost after MaxHold", at.Sub(start), 0, opTimeout)
	if err := lk.Err(); !errors.Is(err, dblock.ErrLockLost) {
		t.Fatalf("Err = %v, want ErrLockLost", err)
	}
	mustContain(t, lk.Err(), "MaxHold(300ms) ran out")
	other := faultLocker(t, otherPool(t), e.table)
	assertFreeSoon(t, other, key)
	err = lk.Commit()
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Fatalf("Commit after MaxHold = %v, want ErrLockLost", err)
	}
	mustContain(t, err, "MaxHold(300ms)", "writes not committed")
}

// TestFaultMaxHoldNested: a bound set inside a transaction the Locker
// opened bounds that whole transaction, and the shortest bound wins,
// whichever call set it.
func TestFaultMaxHoldNested(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	for _, c := range []struct{ outer, inner time.Duration }{
		{time.Hour, maxHoldBound},
		{maxHoldBound, time.Hour},
	} {
		start := time.Now()
		err := l.Do(ctx, dblock.Resource("outer"), func(ctx context.Context, _ *gorm.DB) error {
			return l.Do(ctx, dblock.Resource("inner"), func(ctx context.Context, _ *gorm.DB) error {
				<-ctx.Done() // a holder that honours its context
				return context.Cause(ctx)
			}, dblock.MaxHold(c.inner))
		}, dblock.MaxHold(c.outer))
		t.Logf("outer MaxHold(%v), inner MaxHold(%v): Do returned after %v: %v", c.outer, c.inner, time.Since(start).Round(time.Millisecond), err)
		if !errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("Do = %v, want ErrLockLost", err)
		}
		mustContain(t, err, "MaxHold(300ms) ran out")
	}
}

// TestMaxHoldRefused: MaxHold is refused, before anything is locked, in
// a transaction the caller owns and with a bound that is not positive.
func TestMaxHoldRefused(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("maxhold-refused")
	tx := e.db.Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, key, dblock.MaxHold(time.Second))
	mustContain(t, err, "MaxHold cannot bound a lock in a transaction of yours")
	err = l.Do(dblock.WithTx(ctx, tx), key, fnMustNotRun(t), dblock.MaxHold(time.Second))
	mustContain(t, err, "MaxHold cannot bound a lock in a transaction of yours")
	assertFree(t, l, key)
	for _, d := range []time.Duration{0, -time.Second} {
		err := l.Do(ctx, key, fnMustNotRun(t), dblock.MaxHold(d))
		mustContain(t, err, "MaxHold must be positive")
	}
	// A holder that finishes within its bound is not touched; a Lock's
	// own transaction is the Locker's, so LockTx in it takes MaxHold.
	lk, err := l.Lock(ctx, key, dblock.MaxHold(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.LockTx(ctx, lk.Tx(), dblock.Resource("maxhold-refused-2"), dblock.MaxHold(time.Hour)); err != nil {
		t.Fatalf("LockTx in a Lock's transaction with MaxHold: %v", err)
	}
	if err := lk.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := lk.Err(); err != nil {
		t.Fatalf("Err after a Commit within the bound: %v", err)
	}
	// A Locker-wide MaxHold (Defaults) bounds the Locker's own
	// transactions and leaves a caller's alone, rather than refuse every
	// LockTx.
	bounded := e.locker(t, dblock.Defaults(dblock.MaxHold(maxHoldBound)))
	defer bounded.Close()
	if err := bounded.LockTx(ctx, tx, key); err != nil {
		t.Fatalf("LockTx with a default MaxHold: %v", err)
	}
	if err := bounded.LockTx(ctx, tx, key, dblock.MaxHold(time.Hour)); err == nil {
		t.Fatal("LockTx with MaxHold passed to the call, beside a default: accepted, want refused")
	}
	lk, err = bounded.Lock(ctx, dblock.Resource("maxhold-default"))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	if _, ok := closedWithin(lk.Lost(), opTimeout); !ok {
		t.Fatalf("a Lock of a Locker with Defaults(MaxHold(%v)) still held after %v", maxHoldBound, opTimeout)
	}
	mustContain(t, lk.Err(), "MaxHold(300ms) ran out")
}

// BenchmarkMaxHold is Do with MaxHold beside Do without: one round trip
// more (the connection's id), and a timer.
func BenchmarkMaxHold(b *testing.B) {
	benchOptions(b, dblock.Resource("bench:maxhold"), []optionCase{
		{"Do", nil, nil},
		{"Do-MaxHold", []dblock.LockOption{dblock.MaxHold(time.Hour)}, nil},
	})
}
