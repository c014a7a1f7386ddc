// Command singleton shows a scheduled job that several replicas run on a
// ticker, and that must run once per interval across all of them, never
// twice at once: each replica ticks much faster than the interval, and on
// each tick calls Locker.Do on the global key with MinInterval(interval)
// and NoWait. At most one replica holds the key (NoWait: a busy turn is
// skipped, not queued), and MinInterval lets a run start only when the
// last committed run started at least the interval earlier by the
// server's clock, so the others get ErrTooSoon and skip their turn. The
// run is recorded in the job's own transaction: a run that fails rolls
// back with its writes and does not count, so the next tick of any
// replica runs the job again at once.
//
// It starts -workers copies of itself as separate processes, which tick
// every -every for -for, and run the job (-job long, every -fail-every'th
// attempt of a replica failing) at most once per -interval. Two detectors
// in the database check that runs never overlap (a counter of running
// jobs updated in autocommit, and the runs' intervals by the server's
// clock), and the runs' starts (server time, read from txlock's run
// table in the run's transaction) are checked to be at least the
// interval apart.
//
//	go run ./examples/singleton
//
// The server is named by $DBLOCK_DSN (default root@tcp(127.0.0.1:3306)/test).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/examples/internal/exampledb"
)

// envRole makes the process a worker: the supervisor starts its workers by
// running itself again.
const envRole = "TXLOCK_SINGLETON_ROLE"

// config is one run.
type config struct {
	DSN       string
	LockTable string
	Prefix    string // of the job's tables
	Workers   int
	For       time.Duration // how long each worker keeps its schedule
	Every     time.Duration // the schedule's period
	Interval  time.Duration // MinInterval: the least time between two runs' starts
	Job       time.Duration // how long one run takes
	FailEvery int           // every FailEvery'th attempt of a worker fails (0: none)
	Self      string        // the executable started as a worker
}

func main() {
	if os.Getenv(envRole) == "worker" {
		os.Exit(workerMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	cfg := config{DSN: exampledb.DSN(), LockTable: "tb_lock", Prefix: "demo_job_"}
	flag.IntVar(&cfg.Workers, "workers", 3, "worker processes")
	flag.DurationVar(&cfg.For, "for", 3*time.Second, "how long each worker keeps its schedule")
	flag.DurationVar(&cfg.Every, "every", 50*time.Millisecond, "the schedule's period")
	flag.DurationVar(&cfg.Interval, "interval", 400*time.Millisecond, "MinInterval: the least time between two runs' starts")
	flag.DurationVar(&cfg.Job, "job", 100*time.Millisecond, "how long one run of the job takes")
	flag.IntVar(&cfg.FailEvery, "fail-every", 4, "every n-th attempt of a worker fails and rolls back (0: none)")
	flag.Parse()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "singleton:", err)
		os.Exit(1)
	}
	cfg.Self = self
	ok, err := run(context.Background(), cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "singleton:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// summary is what a worker reports on its last line of stdout.
type summary struct {
	Worker  string        `json:"worker"`
	Runs    int           `json:"runs"`     // committed
	Failed  int           `json:"failed"`   // rolled back
	TooSoon int           `json:"too_soon"` // ErrTooSoon: the last run is too recent
	Busy    int           `json:"busy"`     // ErrNotAcquired: another replica holds the key
	Errors  []string      `json:"errors,omitempty"`
	MaxSkip time.Duration `json:"max_skip"` // longest Do that skipped its turn
}

// run starts the workers, waits for them, and writes a report to out. It
// reports whether the job ran, never twice at once, its runs' starts were
// at least the interval apart, and turns were skipped.
func run(ctx context.Context, cfg config, out io.Writer) (bool, error) {
	db, sqlDB, err := exampledb.OpenMigrated(ctx, cfg.DSN, cfg.LockTable)
	if err != nil {
		return false, err
	}
	defer sqlDB.Close()
	job, err := NewJob(db, cfg.LockTable, cfg.Prefix, "supervisor", cfg.Job)
	if err != nil {
		return false, err
	}
	if err := job.CreateTables(ctx); err != nil {
		return false, err
	}

	start := time.Now()
	sums := make([]summary, cfg.Workers)
	errs := make([]error, cfg.Workers)
	var wg sync.WaitGroup
	for i := range cfg.Workers {
		wg.Go(func() { sums[i], errs[i] = startWorker(ctx, cfg, fmt.Sprintf("worker-%d", i+1)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return false, err
	}
	rep, err := job.report(ctx, cfg.Interval)
	if err != nil {
		return false, err
	}

	fmt.Fprintf(out, "singleton: %d processes tick every %v for %v; the job runs at most once per %v (MinInterval), one run takes %v, -fail-every %d\n\n",
		cfg.Workers, cfg.Every, cfg.For, cfg.Interval, cfg.Job, cfg.FailEvery)
	var runs, failed, tooSoon, busy int
	var maxSkip time.Duration
	var jobErrs []string
	for _, s := range sums {
		fmt.Fprintf(out, "  %s  ran the job %2d times (%d recorded), %d failed and rolled back; skipped %3d ticks too soon, %3d busy; slowest skip %v\n",
			s.Worker, s.Runs, rep.byWorker[s.Worker], s.Failed, s.TooSoon, s.Busy, s.MaxSkip.Round(time.Microsecond*100))
		runs, failed, tooSoon, busy = runs+s.Runs, failed+s.Failed, tooSoon+s.TooSoon, busy+s.Busy
		maxSkip = max(maxSkip, s.MaxSkip)
		jobErrs = append(jobErrs, s.Errors...)
	}
	slices.Sort(jobErrs)
	for _, e := range jobErrs {
		fmt.Fprintf(out, "  error: %s\n", e)
	}
	fmt.Fprintf(out, "\n  runs recorded           %d (reported by the workers: %d; rolled back: %d)\n", rep.runs, runs, failed)
	fmt.Fprintf(out, "  closest two starts      %v apart (server clock; MinInterval %v); %d pairs closer\n", rep.minGap, cfg.Interval, rep.closeGaps)
	fmt.Fprintf(out, "  most running at once    %d (autocommit counter)\n", rep.maxRunning)
	fmt.Fprintf(out, "  overlapping runs        %d (pairs of intervals, server clock)\n", rep.overlaps)
	fmt.Fprintf(out, "  total time              %v\n", time.Since(start).Round(time.Millisecond))
	ok := rep.runs > 1 && rep.runs == int64(runs) && rep.closeGaps == 0 && rep.maxRunning == 1 && rep.overlaps == 0 &&
		tooSoon > 0 && len(jobErrs) == 0
	if ok {
		fmt.Fprintln(out, "\nOK: the job ran once per interval across the replicas, never twice at once; failed runs did not count")
	} else {
		fmt.Fprintln(out, "\nFAILED")
	}
	return ok, nil
}

// startWorker runs one worker process and returns its summary.
func startWorker(ctx context.Context, cfg config, name string) (summary, error) {
	cmd := exec.CommandContext(ctx, cfg.Self, "-name", name, "-lock-table", cfg.LockTable, "-prefix", cfg.Prefix,
		"-for", cfg.For.String(), "-every", cfg.Every.String(), "-interval", cfg.Interval.String(), "-job", cfg.Job.String(),
		"-fail-every", strconv.Itoa(cfg.FailEvery))
	cmd.Env = append(os.Environ(), envRole+"=worker", exampledb.EnvDSN+"="+cfg.DSN)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		return summary{}, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
	}
	var s summary
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		return summary{}, fmt.Errorf("%s: reading its summary %q: %w", name, stdout, err)
	}
	return s, nil
}

// workerMain is a worker process: it keeps the schedule, then prints its
// summary as JSON.
func workerMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "worker", "name in the runs table")
	lockTable := fs.String("lock-table", "tb_lock", "lock table")
	prefix := fs.String("prefix", "demo_job_", "prefix of the job's tables")
	span := fs.Duration("for", 3*time.Second, "how long to keep the schedule")
	every := fs.Duration("every", 50*time.Millisecond, "period")
	interval := fs.Duration("interval", 400*time.Millisecond, "MinInterval")
	jobDur := fs.Duration("job", 100*time.Millisecond, "job duration")
	failEvery := fs.Int("fail-every", 0, "every n-th attempt fails (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, *name+":", err)
		return 1
	}
	db, err := exampledb.Open(exampledb.DSN())
	if err != nil {
		return fail(err)
	}
	locker, err := dblock.New(db, dblock.Table(*lockTable))
	if err != nil {
		return fail(err)
	}
	defer locker.Close()
	job, err := NewJob(db, *lockTable, *prefix, *name, *jobDur)
	if err != nil {
		return fail(err)
	}

	s := summary{Worker: *name}
	ctx, cancel := context.WithTimeout(context.Background(), *span)
	defer cancel()
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for attempt := 1; ; attempt++ {
		select {
		case <-ctx.Done():
			_ = json.NewEncoder(stdout).Encode(s)
			return 0
		case <-tick.C:
		}
		// The job's own context outlives the schedule, so that a run that
		// started finishes.
		fail := *failEvery > 0 && attempt%*failEvery == 0
		if err := tick1(context.WithoutCancel(ctx), locker, job, *interval, fail, &s); err != nil {
			s.Errors = append(s.Errors, err.Error())
		}
	}
}

// tick1 is one turn of the schedule: run the job if no other replica is
// running it and its last run started at least interval ago, else skip.
func tick1(ctx context.Context, locker *dblock.Locker, job *Job, interval time.Duration, fail bool, s *summary) error {
	start := time.Now()
	err := locker.Do(ctx, dblock.Global(), func(ctx context.Context, tx *gorm.DB) error {
		return job.Run(ctx, tx, fail)
	}, dblock.MinInterval(interval), dblock.NoWait())
	switch {
	case err == nil:
		s.Runs++
	case errors.Is(err, errFailed):
		s.Failed++
	case errors.Is(err, dblock.ErrTooSoon):
		s.TooSoon++
	case errors.Is(err, dblock.ErrNotAcquired):
		s.Busy++
	default:
		return err
	}
	if err != nil && !errors.Is(err, errFailed) {
		s.MaxSkip = max(s.MaxSkip, time.Since(start))
	}
	return nil
}
