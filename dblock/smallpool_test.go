package dblock_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestSmallPoolHotKey is the row step of docs/PROTOCOL.md: a service with
// SetMaxOpenConns(3) and dozens of goroutines on one hot key must not
// stall. Waiters hold pool connections while they queue; nothing a holder
// needs beside its transaction (row creation, fencing tokens, withdrawing
// an abandoned wait) may come from that pool. New keys are used so that
// rows are created while the pool is exhausted, with fencing, a joined
// second key, and some waiters cancelled.
func TestSmallPoolHotKey(t *testing.T) {
	e := setup(t)
	e.sqlDB.SetMaxOpenConns(3)
	l := e.locker(t)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const goroutines, rounds = 32, 10
	type section struct{ start, end time.Time }
	var (
		mu        sync.Mutex
		committed [rounds][]section // critical sections of each round's key whose Do committed
		done      atomic.Int64
		cancelled atomic.Int64
		wg        sync.WaitGroup
	)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				hot := dblock.Key{Resource: "hot", Operation: string(rune('a' + r))} // a new key each round
				cctx := ctx
				if (g+r)%7 == 0 {
					var c context.CancelFunc
					cctx, c = context.WithTimeout(ctx, time.Duration(1+g%5)*time.Millisecond)
					defer c()
				}
				var sec section
				err := l.Do(cctx, hot, func(ctx context.Context, _ *gorm.DB) error {
					sec.start = time.Now()
					defer func() { sec.end = time.Now() }()
					// A second, new key joined into the same transaction.
					return l.Do(ctx, dblock.Key{User: "u", Resource: hot.Operation}, func(context.Context, *gorm.DB) error {
						time.Sleep(100 * time.Microsecond)
						return nil
					})
				}, dblock.Fencing())
				switch {
				case err == nil:
					done.Add(1)
					mu.Lock()
					committed[r] = append(committed[r], sec)
					mu.Unlock()
				case cctx != ctx && errors.Is(err, context.DeadlineExceeded):
					cancelled.Add(1)
				default:
					t.Errorf("goroutine %d round %d: %v", g, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("stalled: %d done, %d cancelled after 60 s", done.Load(), cancelled.Load())
	}
	// A holder whose context ran out lost its lock (its transaction was
	// rolled back) and may still have been in fn when the next one started:
	// only committed sections must never overlap.
	for r, secs := range committed {
		slices.SortFunc(secs, func(a, b section) int { return a.start.Compare(b.start) })
		for i := 1; i < len(secs); i++ {
			if secs[i].start.Before(secs[i-1].end) {
				t.Errorf("round %d: committed critical sections overlap: %v-%v and %v-%v", r,
					secs[i-1].start.Format(time.StampMicro), secs[i-1].end.Format(time.StampMicro),
					secs[i].start.Format(time.StampMicro), secs[i].end.Format(time.StampMicro))
			}
		}
	}
	if done.Load()+cancelled.Load() != goroutines*rounds {
		t.Fatalf("%d done + %d cancelled, want %d", done.Load(), cancelled.Load(), goroutines*rounds)
	}
	t.Logf("%d acquisitions done, %d cancelled while waiting, pool of 3 connections", done.Load(), cancelled.Load())
}
