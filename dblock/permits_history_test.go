package dblock_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/history"
)

// semaphore is a key of TestTorturePermits and its number of permits.
type semaphore struct {
	key dblock.Key
	n   int
}

// The semaphores of TestTorturePermits.
var permitSems = []semaphore{{dblock.Resource("sem:2"), 2}, {dblock.Resource("sem:3"), 3}}

// The public paths of TestTorturePermits (DoMulti refuses Permits).
var permitPaths = []string{"Do", "Lock", "TryLock", "LockTx"}

// TestTorturePermits: three Lockers, each on its own pool, with three
// goroutines each, take a permit of one of two semaphores (2 and 3
// permits) through Do, Lock and Commit, TryLock, and LockTx in a
// transaction of the caller's, with random wait timeouts, NoWait, holds
// of up to 4 ms in a tagged statement, deliberate rollbacks, contexts
// cancelled at random (while queued for a permit or while holding) and
// sessions killed from outside (KILL CONNECTION of a holder, or of a
// COMMIT in flight). Every critical section records its key, as a
// Semaphore section with its key's n, and its interval in server time in
// a history table inside its permit's transaction, so that only committed
// sections survive; history.Check proves that no more than n sections of
// a key were ever in progress at once, and the test checks that n were
// (else it proved nothing about the limit), and that every path committed
// on both keys.
//
// It runs 3 s by default, 5 minutes with TXLOCK_TORTURE=1 (make torture),
// or $TXLOCK_TORTURE_DURATION.
func TestTorturePermits(t *testing.T) {
	e := setup(t)
	m := startModeRun(t, e, e.table+"_phist", permitTag(e.table))
	ctx := ctxT(t)
	// The permit rows first, so that the run is about permits, not their
	// creation (TestPermitsRaceToCreate has that).
	for _, s := range permitSems {
		if err := m.lockers[0].Do(ctx, s.key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(s.n)); err != nil {
			t.Fatal(err)
		}
	}
	tally := newModeTally()
	gauge := &permitGauge{inside: map[string]int{}, peak: map[string]int{}}
	// Past stop, the workers go on until every path has committed on
	// every key and n holders of each key were in their sections at once
	// (in this process: a hint that the history will show it), for at
	// most opTimeout more.
	covered := func() bool { return tally.has(permitCovered...) && gauge.full() }
	kills := m.run(m.workers(tally), covered, func(ctx context.Context, w *modeWorker) { permitWorker{w, gauge}.once(ctx) })
	r := m.analyze(t, fmt.Sprintf("on %d semaphores", len(permitSems)), kills, tally)
	if r.Modes[history.Semaphore] != r.Checked {
		t.Errorf("committed sections by mode %v: want only semaphore sections", r.Modes)
	}
	for _, s := range permitSems {
		peak := r.Peak[s.key.String()]
		t.Logf("%s: %d permits, at most %d sections in progress at once", s.key, s.n, peak)
		if peak != s.n {
			t.Errorf("%s: at most %d sections at once, want its %d permits reached: the run proved nothing about the limit", s.key, peak, s.n)
		}
	}
	if !tally.has(permitCovered...) {
		t.Errorf("within %v, some path did not commit on some key: the run did not cover it", time.Since(m.start))
	}
	tally.check(t, r, kills)
}

// permitTag marks the hold statements of a test whose lock table is table.
func permitTag(table string) string { return "txlock-permits:" + table }

// permitCovered is what TestTorturePermits must see: every path committed
// on every key.
var permitCovered = func() []string {
	var out []string
	for _, p := range permitPaths {
		for _, s := range permitSems {
			out = append(out, p+"/"+s.key.Resource)
		}
	}
	return out
}()

// permitGauge counts, in this process, the workers inside their sections
// per key, and the most at once.
type permitGauge struct {
	mu     sync.Mutex
	inside map[string]int
	peak   map[string]int
}

func (g *permitGauge) enter(key string) {
	g.mu.Lock()
	g.inside[key]++
	g.peak[key] = max(g.peak[key], g.inside[key])
	g.mu.Unlock()
}

func (g *permitGauge) leave(key string) {
	g.mu.Lock()
	g.inside[key]--
	g.mu.Unlock()
}

// full reports whether every semaphore had all of its permits in
// sections at once.
func (g *permitGauge) full() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range permitSems {
		if g.peak[s.key.String()] < s.n {
			return false
		}
	}
	return true
}

// permitWorker is one goroutine of TestTorturePermits.
type permitWorker struct {
	*modeWorker
	gauge *permitGauge
}

// once takes a permit of a random semaphore through a random path, runs
// the section and counts the outcome.
func (w permitWorker) once(parent context.Context) {
	s := permitSems[w.rng.IntN(len(permitSems))]
	path := permitPaths[w.rng.IntN(len(permitPaths))]
	opts := append([]dblock.LockOption{dblock.Permits(s.n)}, w.waitOpts(path)...)
	rollback := w.rng.IntN(20) == 0
	ev := history.Event{Key: s.key.String(), Request: time.Now(), Mode: history.Semaphore, Permits: s.n}
	err := w.op(parent, path, []dblock.Key{s.key}, opts, func(ctx context.Context, tx *gorm.DB) error {
		secs, err := w.beginSections(ctx, tx, []history.Event{ev})
		if err != nil {
			return err
		}
		w.gauge.enter(ev.Key)
		err = w.hold(ctx, tx, 4*time.Millisecond)
		w.gauge.leave(ev.Key)
		switch {
		case err != nil:
			return err
		case rollback:
			return errTortureRollback
		}
		return endSections(ctx, secs)
	})
	w.tally.add(path, s.key.Resource, 1, err)
}
