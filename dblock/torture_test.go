package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/history"
	"github.com/txlock/txlock/internal/testdb"
)

// Shape of TestTorture.
const (
	tortureChildren   = 3 // OS processes at any time
	tortureGoroutines = 4 // workers per process
	tortureKeys       = 3 // hot keys
	tortureDefault    = 3 * time.Second
	tortureLong       = 5 * time.Minute // with TXLOCK_TORTURE=1 (make torture)
)

// Environment of TestTorture and of its children.
const (
	envTorture         = "TXLOCK_TORTURE"          // "1": the long run
	envTortureDuration = "TXLOCK_TORTURE_DURATION" // a Go duration: overrides both
	envTortureHist     = "TXLOCK_TORTURE_HIST"     // the history table
	envTortureProc     = "TXLOCK_TORTURE_PROC"     // the child's process number
	envTortureDeadline = "TXLOCK_TORTURE_DEADLINE" // Unix nanoseconds: when children stop
)

// tortureDuration is how long TestTorture runs.
func tortureDuration(t *testing.T) time.Duration {
	t.Helper()
	if s := os.Getenv(envTortureDuration); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive Go duration such as 30s", envTortureDuration, s)
		}
		return d
	}
	if os.Getenv(envTorture) == "1" {
		return tortureLong
	}
	return tortureDefault
}

// TestTorture: three child processes (this test binary re-executed) with
// four goroutines each hammer three hot keys with Do and Fencing: random
// holds (0-5 ms), random wait timeouts (50-300 ms), random cancellations
// (while waiting or while holding), deliberate rollbacks; the parent
// SIGKILLs one child once, at a random time, and starts another in its
// place. Every critical section records (key, token, process, start, end)
// in a history table inside its lock transaction, in server time, so that
// only committed sections survive. At the end history.Check proves that no
// two sections of a key overlapped and that tokens increased strictly in
// interval order. Fairness is logged: the most grants others got while one
// acquisition waited.
//
// It runs 3 s by default, 5 minutes with TXLOCK_TORTURE=1 (make torture),
// or $TXLOCK_TORTURE_DURATION.
func TestTorture(t *testing.T) {
	e := setup(t)
	duration := tortureDuration(t)
	hist := e.table + "_hist"
	ctx := context.Background()
	if err := history.CreateTable(ctx, e.sqlDB, hist); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := history.DropTable(context.Background(), e.sqlDB, hist); err != nil {
			t.Errorf("dropping %s: %v", hist, err)
		}
	})
	// Create the key rows up front, so that the children race on locks, not
	// on row creation (which has tests of its own).
	l := e.locker(t)
	defer l.Close()
	for i := range tortureKeys {
		assertFree(t, l, tortureKey(i))
	}

	start := time.Now()
	deadline := start.Add(duration + 500*time.Millisecond) // children start in about that
	spawn := func(proc int) *child {
		return startChild(t, "torture",
			envFaultTable+"="+e.table,
			envTortureHist+"="+hist,
			envTortureProc+"="+strconv.Itoa(proc),
			envTortureDeadline+"="+strconv.FormatInt(deadline.UnixNano(), 10),
		)
	}
	var children []*child
	for p := 1; p <= tortureChildren; p++ {
		children = append(children, spawn(p))
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	// Kill one child at a random moment between 30% and 60% of the run, and
	// start another in its place.
	killAt := start.Add(500*time.Millisecond + time.Duration(0.3*float64(duration)+rng.Float64()*0.3*float64(duration)))
	time.Sleep(time.Until(killAt))
	victim := rng.IntN(len(children))
	children[victim].kill(t)
	children[victim].reap(t, opTimeout)
	killedProc := victim + 1
	children = append(children, spawn(tortureChildren+1))

	var totals [6]int
	for i, c := range children {
		if i == victim {
			continue
		}
		select {
		case <-c.waited:
		case <-time.After(time.Until(deadline) + 2*opTimeout):
			t.Fatalf("child %d still running %v after the deadline", i+1, 2*opTimeout)
		}
		if c.err != nil {
			t.Errorf("child %d: %v\n%s", i+1, c.err, c.output())
			continue
		}
		stats := ""
		for _, line := range strings.Split(c.output(), "\n") {
			if s, ok := strings.CutPrefix(line, "STATS "); ok {
				stats = s
			}
			if s, ok := strings.CutPrefix(line, "UNEXPECTED "); ok {
				t.Errorf("child %d: unexpected error: %s", i+1, s)
			}
		}
		var n [6]int
		if _, err := fmt.Sscanf(stats, "committed=%d rolled_back=%d not_acquired=%d cancelled=%d lost=%d unexpected=%d",
			&n[0], &n[1], &n[2], &n[3], &n[4], &n[5]); err != nil {
			t.Errorf("child %d: no STATS line (%v):\n%s", i+1, err, c.output())
			continue
		}
		for j := range n {
			totals[j] += n[j]
		}
	}
	elapsed := time.Since(start)

	events, err := history.Load(ctx, e.sqlDB, hist)
	if err != nil {
		t.Fatal(err)
	}
	report := history.Analyze(events)
	fairness := history.Overtakes(events)
	maxOvertakes := 0
	for _, f := range fairness {
		maxOvertakes = max(maxOvertakes, f.Max)
	}
	killedSections := 0
	for _, ev := range events {
		if ev.Process == killedProc {
			killedSections++
		}
	}
	t.Logf("torture: %v (%v with process start-up), %d processes x %d goroutines on %d keys, child %d killed at %v and replaced",
		duration, elapsed.Round(time.Millisecond), tortureChildren, tortureGoroutines, tortureKeys, killedProc,
		killAt.Sub(start).Round(time.Millisecond))
	t.Logf("outcomes of the surviving processes: %d committed, %d rolled back on purpose, %d not acquired (timeouts), %d cancelled, %d lost, %d unexpected errors",
		totals[0], totals[1], totals[2], totals[3], totals[4], totals[5])
	t.Logf("history: %d grants checked on %d keys (%d by the killed child before it died), %d violations",
		report.Checked, report.Keys, killedSections, len(report.Violations))
	t.Logf("fairness: at most %d grants to others while one acquisition waited; %s", maxOvertakes, history.Summary(report, fairness))
	if err := report.Err(); err != nil {
		t.Fatal(err)
	}
	if report.Keys != tortureKeys || report.Checked < tortureKeys {
		t.Errorf("%d sections on %d keys recorded: the torture did not run", report.Checked, report.Keys)
	}
	if totals[0] > report.Checked {
		t.Errorf("the children counted %d commits but the history holds %d sections", totals[0], report.Checked)
	}
}

// TestTortureFairness: N goroutines contend for one key, with no timeout,
// cancellation or kill, each recording its critical sections with the time
// it asked for the lock. Logged: the most grants others got while one
// acquisition waited (with FIFO hand-off that is N-1), and the mean. The
// history is checked too. It runs 1.5 s (a tenth of the torture's
// duration when that is longer).
func TestTortureFairness(t *testing.T) {
	e := setup(t)
	duration := max(1500*time.Millisecond, tortureDuration(t)/10)
	hist := e.table + "_fair"
	ctx := ctxT(t)
	if err := history.CreateTable(ctx, e.sqlDB, hist); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = history.DropTable(context.Background(), e.sqlDB, hist) })
	l := e.locker(t)
	defer l.Close()
	key := dblock.Resource("fair")
	assertFree(t, l, key)

	const contenders = 8
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for g := range contenders {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				request := time.Now()
				err := l.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
					s, err := history.Begin(fctx, tx.Statement.ConnPool, hist, 0, g, key.Resource, 0, request)
					if err != nil {
						return err
					}
					time.Sleep(time.Duration(rand.IntN(1001)) * time.Microsecond)
					return s.End(fctx)
				})
				if err != nil {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
			}
		})
	}
	wg.Wait()
	events, err := history.Load(ctx, e.sqlDB, hist)
	if err != nil {
		t.Fatal(err)
	}
	report := history.Analyze(events)
	fs := history.Overtakes(events)
	if len(fs) != 1 {
		t.Fatalf("fairness over %d keys, want 1", len(fs))
	}
	f := fs[0]
	perG := make(map[int]int)
	for _, ev := range events {
		perG[ev.Goroutine]++
	}
	t.Logf("fairness, %d contenders on one key for %v: %d grants (per goroutine %v), at most %d grants to others while one waited (mean %.2f); %d violations",
		contenders, duration, f.Grants, perG, f.Max, f.Mean, len(report.Violations))
	if err := report.Err(); err != nil {
		t.Fatal(err)
	}
	if len(perG) != contenders {
		t.Errorf("only %d of %d contenders were ever granted the key", len(perG), contenders)
	}
}

func tortureKey(i int) dblock.Key { return dblock.Resource("hot:" + strconv.Itoa(i)) }

// errTortureRollback is what a worker's fn returns to roll back on purpose.
var errTortureRollback = errors.New("torture: deliberate rollback")

// tortureChild is the body of a child process of TestTorture.
func tortureChild(t *testing.T) {
	table, hist := os.Getenv(envFaultTable), os.Getenv(envTortureHist)
	proc, err1 := strconv.Atoi(os.Getenv(envTortureProc))
	dl, err2 := strconv.ParseInt(os.Getenv(envTortureDeadline), 10, 64)
	if table == "" || hist == "" || err1 != nil || err2 != nil {
		t.Fatalf("bad torture environment: table %q hist %q proc %v deadline %v", table, hist, err1, err2)
	}
	deadline := time.Unix(0, dl)
	db := testdb.Open(t)
	l, err := dblock.New(db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var mu sync.Mutex
	var counts [6]int // committed, rolled back, not acquired, cancelled, lost, unexpected
	var wg sync.WaitGroup
	for g := range tortureGoroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(proc*100+g)))
			for time.Now().Before(deadline) {
				outcome, err := tortureOnce(l, rng, hist, proc, g)
				mu.Lock()
				counts[outcome]++
				mu.Unlock()
				if outcome == 5 {
					fmt.Printf("UNEXPECTED process %d goroutine %d: %v\n", proc, g, err)
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("STATS committed=%d rolled_back=%d not_acquired=%d cancelled=%d lost=%d unexpected=%d\n",
		counts[0], counts[1], counts[2], counts[3], counts[4], counts[5])
}

// tortureOnce runs one acquisition of a random hot key and returns its
// outcome: 0 committed, 1 rolled back on purpose, 2 not acquired, 3
// cancelled, 4 lost, 5 unexpected error.
func tortureOnce(l *dblock.Locker, rng *rand.Rand, hist string, proc, g int) (int, error) {
	key := tortureKey(rng.IntN(tortureKeys))
	wait := 50*time.Millisecond + time.Duration(rng.IntN(250))*time.Millisecond
	hold := time.Duration(rng.IntN(5001)) * time.Microsecond
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if rng.IntN(10) == 0 {
		// A random cancellation, while waiting or while holding.
		t := time.AfterFunc(time.Duration(rng.IntN(100))*time.Millisecond, cancel)
		defer t.Stop()
	}
	rollback := rng.IntN(20) == 0
	request := time.Now()
	err := l.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
		token, ok := dblock.TokenFrom(fctx, key)
		if !ok {
			return errors.New("no fencing token in fn's context")
		}
		s, err := history.Begin(fctx, tx.Statement.ConnPool, hist, proc, g, key.Resource, token, request)
		if err != nil {
			return err
		}
		time.Sleep(hold)
		if rollback {
			return errTortureRollback
		}
		return s.End(fctx)
	}, dblock.Fencing(), dblock.WaitTimeout(wait))
	switch {
	case err == nil:
		return 0, nil
	case errors.Is(err, errTortureRollback):
		return 1, nil
	case errors.Is(err, dblock.ErrNotAcquired):
		return 2, nil
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return 3, nil
	case errors.Is(err, dblock.ErrLockLost):
		return 4, nil
	}
	return 5, err
}
