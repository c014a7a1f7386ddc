package dblock_test

// The caller's pool: a dead pooled connection, a gorm handle built on an
// existing *sql.DB (no DSN for a side pool), WaitTimeout as a bound on the
// whole acquisition including the wait for a pool connection.

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
)

// TestDeadPooledConnectionRetried (issue 14 item 7): the pool's only
// connection is killed from another session while idle in the pool; the
// next Do must not fail with "invalid connection": nothing was held yet, so
// the acquisition is run again on a fresh connection. With the driver's
// default liveness check database/sql finds the dead connection itself;
// with checkConnLiveness=false (a DSN option some services set) only the
// library can.
func TestDeadPooledConnectionRetried(t *testing.T) {
	e := setup(t)
	killer := otherPool(t)
	for _, liveness := range []bool{true, false} {
		t.Run("checkConnLiveness="+strconv.FormatBool(liveness), func(t *testing.T) {
			db := faultOpen(t, dsnWith(t, func(c *gomysql.Config) { c.CheckConnLiveness = liveness }))
			sqlDB, err := db.DB()
			if err != nil {
				t.Fatal(err)
			}
			sqlDB.SetMaxOpenConns(1)
			sqlDB.SetMaxIdleConns(1)
			l := faultLocker(t, db, e.table)
			ctx := ctxT(t)
			key := dblock.Resource("k")
			var id int64
			if err := l.Do(ctx, key, func(_ context.Context, tx *gorm.DB) error {
				id = connectionID(t, tx)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			killConnection(t, killer, id)
			ran := false
			var now int64
			err = l.Do(ctx, key, func(_ context.Context, tx *gorm.DB) error {
				ran = true
				now = connectionID(t, tx)
				return nil
			})
			t.Logf("killed connection %d; the next Do ran on %d: %v", id, now, err)
			if err != nil || !ran {
				t.Errorf("Do after the pooled connection was killed = %v (fn ran: %v), want it run on a fresh connection", err, ran)
			}
		})
	}
}

// TestGormOnExistingDBNeedsSideDB (issue 14 item 8): a gorm handle opened
// on an existing *sql.DB has no DSN to open the Locker's side pool from;
// falling back to the caller's pool lets two holders that each create a
// new key's row wait for each other's connection forever. New must refuse
// it with an error naming SideDB; with SideDB, two goroutines each holding
// a lock and taking a new key inside it complete, on a pool of 2.
func TestGormOnExistingDBNeedsSideDB(t *testing.T) {
	e := setup(t)
	sqlDB := e.sqlDB
	db, err := gorm.Open(mysql.New(mysql.Config{Conn: sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.New(db, dblock.Table(e.table))
	t.Logf("New on a gorm handle built on a *sql.DB: %v", err)
	if err == nil {
		_ = l.Close()
		t.Error("New accepted a gorm handle without a DSN and without SideDB, want an error naming SideDB")
	} else {
		mustContain(t, err, "SideDB")
	}

	side, err := otherPool(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	l = faultLocker(t, db, e.table, dblock.SideDB(side))
	sqlDB.SetMaxOpenConns(2)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	inside := make(chan struct{}, 2)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.Do(ctx, dblock.Resource("outer"+strconv.Itoa(g)), func(ctx context.Context, _ *gorm.DB) error {
				inside <- struct{}{}
				// Both hold a pool connection before either creates a row.
				for len(inside) < 2 && ctx.Err() == nil {
					time.Sleep(time.Millisecond)
				}
				return l.Do(ctx, dblock.Resource("new"+strconv.Itoa(g)), func(context.Context, *gorm.DB) error { return nil })
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a holder creating a new key's row with SideDB on a pool of 2: %v", err)
		}
	}
}

// TestWaitTimeoutBoundsPoolWait (issue 14 item 9): WaitTimeout bounds the
// whole acquisition, the wait for a pool connection included. 20
// goroutines, each on a key of its own (no lock is contended), share a
// pool of 2 connections; each holds its lock 200 ms. With WaitTimeout(300ms)
// most of them cannot get a connection in time and must return
// ErrNotAcquired, instead of all waiting for the pool (2 s in all).
func TestWaitTimeoutBoundsPoolWait(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	const goroutines = 20
	keys := make([]dblock.Key, goroutines)
	for i := range keys {
		keys[i] = dblock.Resource("k" + strconv.Itoa(i))
		assertFree(t, l, keys[i]) // rows created, ids cached: only the pool is waited for
	}
	e.sqlDB.SetMaxOpenConns(2)
	type outcome struct {
		took time.Duration
		err  error
	}
	out := make([]outcome, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := l.Do(ctx, keys[i], func(context.Context, *gorm.DB) error {
				time.Sleep(200 * time.Millisecond) // the holder's work
				return nil
			}, dblock.WaitTimeout(300*time.Millisecond))
			out[i] = outcome{time.Since(start), err}
		}()
	}
	wg.Wait()
	var done, notAcquired []time.Duration
	for i, o := range out {
		switch {
		case o.err == nil:
			done = append(done, o.took)
		case errors.Is(o.err, dblock.ErrNotAcquired):
			notAcquired = append(notAcquired, o.took)
		default:
			t.Errorf("goroutine %d: %v", i, o.err)
		}
		if o.took > 10*time.Second {
			t.Errorf("goroutine %d took %v", i, o.took)
		}
	}
	slices.Sort(done)
	slices.Sort(notAcquired)
	t.Logf("%d done in %v; %d ErrNotAcquired in %v", len(done), roundMs(done), len(notAcquired), roundMs(notAcquired))
	if len(notAcquired) == 0 {
		t.Errorf("no acquisition returned ErrNotAcquired: WaitTimeout(300ms) did not bound the wait for the pool (longest %v)",
			slices.Max(append(done, 0)))
	}
	if len(done) == 0 {
		t.Error("no acquisition succeeded")
	}
}
