package sample

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// exporting is a Service whose Export and Archive run run.
type exporting struct {
	*impl
	run func(ctx context.Context, what string) error
}

func (e exporting) Export(ctx context.Context, _ string) (int64, error) {
	return 1, e.run(ctx, "export")
}
func (e exporting) Archive(ctx context.Context, _ Day) error { return e.run(ctx, "archive") }

// counter counts the calls inside the implementation, and the most at
// once.
type counter struct{ inside, most, ran atomic.Int32 }

// enter counts a call in, and returns the function that counts it out.
func (c *counter) enter() func() {
	c.ran.Add(1)
	n := c.inside.Add(1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
	return func() { c.inside.Add(-1) }
}

// TestProxySemaphore: Export (permits=3 nowait) and Archive (permits=3
// wait=5s) share the export semaphore. Three calls hold its permits; a
// fourth Export fails at once with ErrNotAcquired without running; an
// Archive waits (its locking read is seen waiting in PROCESSLIST), runs
// only once a holder returns, and never a fourth call beside three.
func TestProxySemaphore(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	ctx := context.Background()
	const n = 3
	var c counter
	entered := make(chan string, 8)
	release := make(chan struct{})
	p := NewLockedService(exporting{impl: s, run: func(ctx context.Context, what string) error {
		if _, ok := dblock.TxFrom(ctx); !ok {
			t.Errorf("%s runs outside the lock's transaction", what)
		}
		defer c.enter()()
		entered <- what
		<-release
		return nil
	}}, s.locker)

	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for range n {
		wg.Go(func() {
			_, err := p.Export(ctx, "csv")
			errs <- err
		})
	}
	for i := range n {
		awaitEntry(t, entered, "export", i+1, n)
	}
	_, err := p.Export(ctx, "csv")
	t.Logf("Export with every permit held: %v", err)
	if !errors.Is(err, dblock.ErrNotAcquired) || !strings.HasPrefix(err.Error(), "Service.Export: ") {
		t.Errorf("Export with %d permits held = %v, want Service.Export: ... ErrNotAcquired", n, err)
	}
	if r := c.ran.Load(); r != n {
		t.Errorf("the implementation ran %d times with %d permits, want %d", r, n, n)
	}

	wg.Go(func() { errs <- p.Archive(ctx, Day{2024, 2, 29}) })
	waitForPermitWait(t, s)
	if r := c.ran.Load(); r != n {
		t.Fatalf("Archive ran beside %d holders of %d permits (%d runs)", n, n, r)
	}
	release <- struct{}{} // one Export returns: its permit goes to Archive
	awaitEntry(t, entered, "archive", n+1, n+1)
	for range n {
		release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a call holding or waiting for a permit: %v", err)
		}
	}
	t.Logf("at most %d calls inside at once, %d runs", c.most.Load(), c.ran.Load())
	if m := c.most.Load(); m != n {
		t.Errorf("at most %d calls inside at once, want %d", m, n)
	}
}

// TestProxySemaphoreContended: callers of Archive (permits=3 wait=5s)
// in a loop never run more than 3 at once, and all of them run.
func TestProxySemaphoreContended(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	ctx := context.Background()
	const n, callers, calls = 3, 8, 4
	var c counter
	p := NewLockedService(exporting{impl: s, run: func(ctx context.Context, _ string) error {
		defer c.enter()()
		// Work that lasts: the lock's transaction runs a statement.
		tx, _ := dblock.TxFrom(ctx)
		return tx.Exec("DO SLEEP(0.005)").Error
	}}, s.locker)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls {
				if err := p.Archive(ctx, Day{2024, 2, 29}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d callers × %d calls, %d permits: %d runs, at most %d inside at once", callers, calls, n, c.ran.Load(), c.most.Load())
	if m := c.most.Load(); m > n {
		t.Errorf("%d calls inside at once with %d permits", m, n)
	}
	if r := c.ran.Load(); r != callers*calls {
		t.Errorf("%d runs, want %d", r, callers*calls)
	}
}

// awaitEntry waits for the i-th call of want calls to enter the
// implementation, as what.
func awaitEntry(t *testing.T, entered <-chan string, what string, i, want int) {
	t.Helper()
	select {
	case got := <-entered:
		if got != what {
			t.Fatalf("call %d of %d into the implementation is %s, want %s", i, want, got, what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("call %d of %d (%s) did not enter the implementation within 10s", i, want, what)
	}
}

// waitForPermitWait waits until PROCESSLIST (live) shows a statement
// waiting for a permit row of s's table (not the SKIP LOCKED look).
func waitForPermitWait(t *testing.T, s *impl) {
	t.Helper()
	marker := "%`" + schema.PermitTable(s.table) + "` FORCE INDEX (PRIMARY)%"
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		err := s.db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND TIME_MS >= 100 "+
			"AND INFO LIKE ? AND INFO NOT LIKE '%SKIP LOCKED%'", marker).Row().Scan(&n)
		if err == nil && n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no call waited for a permit of %s within 10s (last error %v)", schema.PermitTable(s.table), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProxySemaphoreReentrant: Export called inside Archive with Archive's
// ctx (its transaction) holds Archive's permit again, and takes no other:
// with the two other permits held elsewhere, the inner Export (nowait)
// still runs.
func TestProxySemaphoreReentrant(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	ctx := context.Background()
	for range 2 {
		lk, err := s.locker.TryLock(ctx, dblock.Operation("export"), dblock.Permits(3))
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Rollback()
	}
	var p *LockedService
	inner := 0
	p = NewLockedService(exporting{impl: s, run: func(ctx context.Context, what string) error {
		if what == "export" {
			inner++
			return nil
		}
		_, err := p.Export(ctx, "csv")
		return err
	}}, s.locker)
	if err := p.Archive(ctx, Day{2024, 2, 29}); err != nil || inner != 1 {
		t.Fatalf("Export inside Archive, the two other permits held: %v (inner runs %d), want it to run on Archive's permit", err, inner)
	}
	if _, err := p.Export(ctx, "csv"); err != nil {
		t.Errorf("Export after Archive returned its permit: %v", err)
	}
}
