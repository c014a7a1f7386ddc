package dblock_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview21LabelChurnClose (HELD) runs Do from four goroutines on a
// pool whose connections live 20 ms (every few acquisitions meet a new
// connection, so the label writer starts and stops all the time), with
// Holder calls alongside, and closes the Locker while they run: no data
// race (-race), no goroutine left (the package's leak check), Do after
// Close refused, and every Holder of a held key that returned before Close
// began shows the label (Close drops the label writes still queued or in
// flight).
// TXLOCK_TORTURE=1 runs it for 30 s instead of about 1.
func TestReview21LabelChurnClose(t *testing.T) {
	e := setup(t)
	sqlDB := e.sqlDB
	sqlDB.SetConnMaxLifetime(20 * time.Millisecond)
	sqlDB.SetMaxOpenConns(6)
	l := e.locker(t, dblock.Label("review21-churn"))
	run := time.Second
	if os.Getenv("TXLOCK_TORTURE") == "1" {
		run = 30 * time.Second
	}
	ctx := ctxT(t)
	var dos, closedErrs, holders, unlabelled atomic.Int64
	var closing atomic.Bool // Close drops the label writes still queued or in flight
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := dblock.Resource("review21-churn-" + string(rune('a'+i)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
					if i != 0 {
						return nil
					}
					h, err := l.Holder(ctx, key)
					if err == nil && !closing.Load() {
						holders.Add(1)
						if h.Label != "review21-churn" {
							unlabelled.Add(1)
						}
					}
					return nil
				})
				switch {
				case err == nil:
					dos.Add(1)
				case errors.Is(err, context.Canceled):
					return
				default:
					closedErrs.Add(1)
					if closedErrs.Load() > 50 {
						return
					}
				}
			}
		}()
	}
	waitFor(t, "some acquisitions", func() bool { return dos.Load() >= 20 })
	time.Sleep(run) // the run's length, not a wait for a condition
	closing.Store(true)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Do after Close to fail", func() bool { return closedErrs.Load() > 0 })
	close(stop)
	wg.Wait()
	t.Logf("Do: %d; refused after Close: %d; Holder answers: %d, without the label: %d", dos.Load(), closedErrs.Load(), holders.Load(), unlabelled.Load())
	if unlabelled.Load() > 0 {
		t.Errorf("%d of %d Holder answers for a key held by this Locker had no label", unlabelled.Load(), holders.Load())
	}
}
