package dblock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// TestFaultServerRestart: on a throwaway mariadbd of its own, holders and
// waiters are busy when the server goes down, crashed (SIGKILL) or shut
// down (SIGTERM), and comes back on the same port and data directory.
// Every holder learns its lock is lost (Lost closed, Commit returns
// ErrLockLost, a Do returns an error), every waiter gets an error, and once
// the server is back locking works again, with no double grant and fencing
// tokens that keep increasing across the restart.
func TestFaultServerRestart(t *testing.T) {
	verifyNoGoroutineLeak(t)
	srv := testdb.ThrowawayFor(t)
	holdDB := faultOpen(t, srv.DSN())
	waitDB := faultOpen(t, srv.DSN())
	table := testdb.Table(t, holdDB)
	holders := faultLocker(t, holdDB, table)
	waiters := faultLocker(t, waitDB, table)
	sqlWait, err := waitDB.DB()
	if err != nil {
		t.Fatal(err)
	}

	for _, halt := range []struct {
		name string
		fn   func() error
	}{
		{"SIGKILL", srv.Kill},
		{"SIGTERM", srv.Stop},
	} {
		t.Run(halt.name, func(t *testing.T) {
			restartRound(t, srv, halt.fn, table, holders, waiters, sqlWait)
		})
	}
}

// restartLease is the holders' lease: their keepalive finds the dead
// connection within a third of it.
const restartLease = 2 * time.Second

// restartRound runs one halt-and-restart of srv with two Lock holders, a
// Do holder and two waiters.
func restartRound(t *testing.T, srv *testdb.Throwaway, halt func() error, table string, holders, waiters *dblock.Locker, sqlWait *sql.DB) {
	ctx := ctxT(t)
	keys := []dblock.Key{dblock.Resource("restart:a"), dblock.Resource("restart:b")}
	doKey := dblock.Resource("restart:do")

	// Two Lock holders with fencing tokens, and their waiters.
	var held []*dblock.Lock
	tokens := map[dblock.Key]int64{}
	for _, k := range keys {
		h, err := holders.Lock(ctx, k, dblock.Lease(restartLease), dblock.Fencing())
		if err != nil {
			t.Fatalf("Lock(%s): %v", k, err)
		}
		defer h.Rollback()
		held = append(held, h)
		tokens[k] = h.Token()
	}
	// A Do holder, inside fn when the server goes down.
	inFn := make(chan struct{})
	doErr := make(chan error, 1)
	var fnCause atomic.Value
	go func() {
		doErr <- holders.Do(ctx, doKey, func(fctx context.Context, tx *gorm.DB) error {
			close(inFn)
			<-fctx.Done()
			fnCause.Store(fmt.Sprint(context.Cause(fctx)))
			return fctx.Err()
		}, dblock.Lease(restartLease))
	}()
	<-inFn
	var waiting []<-chan lockResult
	for _, k := range append(keys, doKey) {
		waiting = append(waiting, lockAsync(ctx, waiters, k, dblock.WaitTimeout(15*time.Second), dblock.Lease(restartLease)))
	}
	waitForLockWaits(t, sqlWait, table, 3)

	down := time.Now()
	if err := halt(); err != nil {
		t.Fatalf("halting the server: %v", err)
	}
	t.Logf("server down in %v", time.Since(down).Round(time.Millisecond))

	// Every waiter gets an error. Except that a clean shutdown kills the
	// sessions one after the other: when a holder's session goes first, the
	// server frees its key and may grant it to a waiter whose session is
	// not killed yet. That lock dies with its session a moment later: it
	// must then be reported lost, and must not commit.
	for i, ch := range waiting {
		r := awaitLock(t, ch, 10*time.Second)
		if r.err != nil {
			t.Logf("waiter %d: error after %v: %v", i, r.at.Sub(down).Round(time.Millisecond), r.err)
			continue
		}
		at, ok := closedWithin(r.k.Lost(), opTimeout)
		if !ok {
			r.k.Rollback()
			t.Errorf("waiter %d was granted the lock while the server went down, and still holds it %v later", i, opTimeout)
			continue
		}
		err := commitWithin(t, r.k, 5*time.Second)
		t.Logf("waiter %d: granted after %v by the server going down, then lost after %v (%v); Commit: %v",
			i, r.at.Sub(down).Round(time.Millisecond), at.Sub(down).Round(time.Millisecond), r.k.Err(), err)
		if !errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("waiter %d, granted during the shutdown: Commit = %v, want ErrLockLost", i, err)
		}
	}
	// Every holder learns its lock is lost.
	for i, h := range held {
		at, ok := closedWithin(h.Lost(), opTimeout)
		if !ok {
			t.Errorf("holder %d: Lost not closed %v after the server went down", i, opTimeout)
			continue
		}
		t.Logf("holder %d: Lost after %v: %v", i, at.Sub(down).Round(time.Millisecond), h.Err())
		if err := commitWithin(t, h, 5*time.Second); !errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("holder %d: Commit = %v, want ErrLockLost", i, err)
		}
	}
	select {
	case err := <-doErr:
		t.Logf("Do holder: returned after %v: %v (fn's context cause: %v)", time.Since(down).Round(time.Millisecond), err, fnCause.Load())
		if err == nil {
			t.Error("the Do holder returned nil: it committed on a dead server")
		} else if !errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("the Do holder returned %v, want ErrLockLost", err)
		}
	case <-time.After(opTimeout):
		t.Fatalf("the Do holder still runs %v after the server went down", opTimeout)
	}

	up := time.Now()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("server back in %v", time.Since(up).Round(time.Millisecond))

	// Locking works again: a Do on each key commits, with fencing tokens
	// above those taken before the restart.
	for _, k := range append(keys, doKey) {
		err := waiters.Do(ctx, k, func(fctx context.Context, tx *gorm.DB) error {
			tok, _ := dblock.TokenFrom(fctx, k)
			if tok <= tokens[k] {
				return fmt.Errorf("token %d after the restart, not above %d from before", tok, tokens[k])
			}
			return nil
		}, dblock.Fencing(), dblock.WaitTimeout(5*time.Second))
		if err != nil {
			t.Errorf("Do(%s) after the restart: %v", k, err)
		}
	}
	// No double grant: a held key is refused to the other Locker, and
	// concurrent holders never overlap.
	h, err := holders.Lock(ctx, keys[0], dblock.WaitTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("Lock after the restart: %v", err)
	}
	if k, err := waiters.TryLock(ctx, keys[0]); !errors.Is(err, dblock.ErrNotAcquired) {
		if k != nil {
			k.Rollback()
		}
		t.Errorf("TryLock of a held key after the restart = %v, want ErrNotAcquired", err)
	}
	if err := h.Commit(); err != nil {
		t.Fatal(err)
	}
	var inside, overlaps, done atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		l := holders
		if g%2 == 1 {
			l = waiters
		}
		wg.Go(func() {
			for range 10 {
				err := l.Do(ctx, keys[0], func(context.Context, *gorm.DB) error {
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					time.Sleep(200 * time.Microsecond)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					t.Errorf("Do after the restart: %v", err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if overlaps.Load() != 0 {
		t.Errorf("%d overlapping critical sections after the restart", overlaps.Load())
	}
	t.Logf("after the restart: %d critical sections, %d overlaps", done.Load(), overlaps.Load())
}
