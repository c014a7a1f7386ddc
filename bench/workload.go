package main

import (
	"context"
	"errors"
	"fmt"

	gomysql "github.com/go-sql-driver/mysql"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A workload is what one cycle does under the lock.
type workload int

const (
	lockOnly     workload = iota + 1 // acquire, release
	lockBusiness                     // acquire, one UPDATE of a business row, commit
	sharedRead                       // readers on one hot key: acquire, one SELECT of its business row, commit
	permitHold                       // a full semaphore: workers on one key's permits (or its lock): acquire, hold, release
	hierLock                         // lock only, each goroutine on its own key, with and without the hierarchy
)

func (w workload) String() string {
	switch w {
	case lockOnly:
		return "lock"
	case sharedRead:
		return "shared"
	case permitHold:
		return "semaphore"
	case hierLock:
		return "hierarchy"
	}
	return "business"
}

func (w workload) title() string {
	switch w {
	case lockOnly:
		return "Lock only (acquire, release)"
	case sharedRead:
		return "Shared hot key (readers on one key: acquire, one SELECT of its business row, commit)"
	case permitHold:
		return "Semaphore hand-off (workers on one key's permits, or on its lock: acquire, hold, release)"
	case hierLock:
		return "Hierarchy cost (lock only, each goroutine on its own key, the hierarchy off and on)"
	}
	return "Lock + business (acquire, one UPDATE of a business row, commit)"
}

// special reports whether w is one of the workloads that only the
// contenders naming it run (shared, semaphore, hierarchy), with cells of
// their own; lock and business are run by every contender.
func (w workload) special() bool { return w == sharedRead || w == permitHold || w == hierLock }

// counts returns the goroutine counts of special workload w's cells, and
// whether they share one hot key.
func (o *options) counts(w workload) ([]int, bool) {
	switch w {
	case sharedRead:
		return o.readers, true
	case permitHold:
		return o.permitWorkers, true
	case hierLock:
		return o.hierGoroutines, false
	}
	return nil, false
}

// A cell is one workload at one concurrency: g goroutines, each on its own
// key, or all on one hot key.
type cell struct {
	work workload
	hot  bool
	g    int
}

func (c cell) mode() string {
	if c.hot {
		return "hot"
	}
	return "own"
}

func (c cell) String() string {
	return fmt.Sprintf("%s, %d goroutines on %s", c.work, c.g, map[bool]string{false: "their own keys", true: "one hot key"}[c.hot])
}

// planCells lists the cells in the order they run. The special workloads
// run with their own counts: the shared workload and the semaphore on the
// hot key (-readers, -permit-workers goroutines), the hierarchy on own
// keys (-hier-goroutines).
func planCells(o *options) []cell {
	var cs []cell
	for _, w := range o.workloads {
		if w.special() {
			gs, hot := o.counts(w)
			for _, g := range gs {
				cs = append(cs, cell{work: w, hot: hot, g: g})
			}
			continue
		}
		for _, g := range o.own {
			cs = append(cs, cell{work: w, g: g})
		}
		for _, g := range o.hot {
			cs = append(cs, cell{work: w, hot: true, g: g})
		}
	}
	return cs
}

// result is one contender's measurement in one cell and repetition.
type result struct {
	cell       cell
	contender  string
	rep        int
	cycles     int64
	elapsed    time.Duration
	perG       []int64         // completed cycles of each goroutine
	acquire    []time.Duration // acquisition latencies, all goroutines
	handoff    []time.Duration // hand-offs: from a release to the next grant (contenders that trace them)
	errors     int64
	firstError string
	clientCPU  time.Duration // CPU time of this process in the measured window
	serverCPU  time.Duration // of the server process, when it runs here; else -1
	foreign    float64       // share of the machine's CPU busy with other work during the window
}

// cpuPerCycle returns the client's and the server's CPU time per cycle
// (the server's is -1 when unknown).
func (r result) cpuPerCycle() (time.Duration, time.Duration) {
	if r.cycles == 0 {
		return 0, -1
	}
	srv := time.Duration(-1)
	if r.serverCPU >= 0 {
		srv = r.serverCPU / time.Duration(r.cycles)
	}
	return r.clientCPU / time.Duration(r.cycles), srv
}

// machineCPU returns the busy CPU time of the whole machine (all but idle
// and iowait, steal included) from /proc/stat, or -1.
func machineCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return -1
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks
}

// processCPU returns the user + system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r result) throughput() float64 { return float64(r.cycles) / r.elapsed.Seconds() }

// worker is one goroutine's tally; padded so that goroutines do not share
// cache lines.
type worker struct {
	cycles   int64
	errors   int64
	firstE   error
	acquire  []time.Duration
	trace    cycleTrace  // of the cycle in progress
	grants   []time.Time // of the measured cycles that traced them
	releases []time.Time
	_        [64]byte
}

// Measurement phases.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// drainTimeout bounds how long the goroutines may take to finish their
// last cycle after the measurement ends.
const drainTimeout = 30 * time.Second

// runOne measures contender ct in cell c: g goroutines cycle for the
// warm-up, then for the measured duration; a cycle counts when it
// completes inside the measured window.
func runOne(ctx context.Context, e *env, ct *contender, c cell, o *options) (result, error) {
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	fns, release, err := ct.start(runCtx, e, c)
	for try := 0; err != nil && isTooManyConnections(err) && try < 5; try++ {
		// Other clients hold the server's connections: wait for them.
		if sleep(ctx, 2*time.Second) != nil {
			break
		}
		fns, release, err = ct.start(runCtx, e, c)
	}
	if err != nil {
		return result{}, fmt.Errorf("setting up: %w", err)
	}
	defer release()

	stop, stopNow := context.WithCancel(runCtx)
	defer stopNow()
	var phase atomic.Int32
	ws := make([]worker, c.g)
	// Pre-size the latency buffers from a generous guess so that the
	// measurement does not allocate much.
	guess := int(o.duration.Seconds()*20000)/c.g + 16
	var wg sync.WaitGroup
	for i := range fns {
		ws[i].acquire = make([]time.Duration, 0, guess)
		wg.Go(func() {
			w, fn := &ws[i], fns[i]
			gctx := withTrace(runCtx, &w.trace)
			for {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				w.trace = cycleTrace{}
				acq, err := fn(gctx, stop)
				switch phase.Load() {
				case phaseMeasure:
				case phaseStop:
					return
				default:
					if err != nil && !errors.Is(err, errStopped) && runCtx.Err() == nil {
						// A failing warm-up is a failing contender.
						w.errors++
						if w.firstE == nil {
							w.firstE = err
						}
					}
					continue
				}
				if err != nil {
					if !errors.Is(err, errStopped) {
						w.errors++
						if w.firstE == nil {
							w.firstE = err
						}
					}
					continue
				}
				w.cycles++
				w.acquire = append(w.acquire, acq)
				w.trace.keep(&w.grants, &w.releases)
			}
		})
	}
	if err := sleep(ctx, o.warmup); err != nil {
		return result{}, err
	}
	cpu0, srv0, all0 := processCPU(), e.serverCPU(), machineCPU()
	t1 := time.Now()
	phase.Store(phaseMeasure)
	if err := sleep(ctx, o.duration); err != nil {
		return result{}, err
	}
	phase.Store(phaseStop)
	t2 := time.Now()
	cpu1, srv1, all1 := processCPU(), e.serverCPU(), machineCPU()
	stopNow()

	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		cancelRun()
		<-drained
		return result{}, fmt.Errorf("goroutines still busy %v after the measurement ended", drainTimeout)
	}

	r := result{cell: c, contender: ct.id, elapsed: t2.Sub(t1), perG: make([]int64, c.g),
		clientCPU: cpu1 - cpu0, serverCPU: -1}
	var grants, releases []time.Time
	if srv0 >= 0 && srv1 >= 0 {
		r.serverCPU = srv1 - srv0
	}
	if all0 >= 0 && all1 >= 0 {
		// What the rest of the machine did meanwhile: other processes,
		// and the hypervisor's steal.
		foreign := all1 - all0 - r.clientCPU - max(r.serverCPU, 0)
		r.foreign = max(0, float64(foreign)/float64(r.elapsed)/float64(runtime.NumCPU()))
	}
	for i := range ws {
		w := &ws[i]
		r.cycles += w.cycles
		r.perG[i] = w.cycles
		r.errors += w.errors
		if w.firstE != nil && r.firstError == "" {
			r.firstError = w.firstE.Error()
		}
		r.acquire = append(r.acquire, w.acquire...)
		grants, releases = append(grants, w.grants...), append(releases, w.releases...)
	}
	r.handoff = handoffs(grants, releases)
	return r, nil
}

// sleep waits d unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// waitQuiet waits until, over a 300 ms sample, the machine's CPU outside
// this process is below foreignWarn, or until limit. It returns how long
// it waited and the last sample.
func waitQuiet(ctx context.Context, limit time.Duration) (time.Duration, float64) {
	start := time.Now()
	for {
		a0, c0, t0 := machineCPU(), processCPU(), time.Now()
		if sleep(ctx, 300*time.Millisecond) != nil || a0 < 0 {
			return time.Since(start), 0
		}
		a1, c1 := machineCPU(), processCPU()
		busy := float64(a1-a0-(c1-c0)) / float64(time.Since(t0)) / float64(runtime.NumCPU())
		if busy < foreignWarn || time.Since(start) > limit {
			return time.Since(start), busy
		}
	}
}

// isTooManyConnections reports the server's error 1040.
func isTooManyConnections(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) && me.Number == 1040
}
