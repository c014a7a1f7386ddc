// Command singleton shows a global lock around a scheduled job that
// several processes try to run: at most one runs it at a time, and the
// others skip their turn (TryLock) instead of queueing behind it.
//
// It starts -workers copies of itself as separate processes. Each one
// ticks every -every for -for, and on each tick tries the global key with
// Locker.TryLock: when it gets it, it runs the job in the lock's
// transaction and commits; when another process holds it, it skips at
// once. Two detectors in the database check that runs never overlap: a
// counter of running jobs updated in autocommit, and the runs' intervals
// by the server's clock.
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
	"strings"
	"sync"
	"time"

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
	Job       time.Duration // how long one run takes
	Self      string        // the executable started as a worker
}

func main() {
	if os.Getenv(envRole) == "worker" {
		os.Exit(workerMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	cfg := config{DSN: exampledb.DSN(), LockTable: "tb_lock", Prefix: "demo_job_"}
	flag.IntVar(&cfg.Workers, "workers", 3, "worker processes")
	flag.DurationVar(&cfg.For, "for", 3*time.Second, "how long each worker keeps its schedule")
	flag.DurationVar(&cfg.Every, "every", 100*time.Millisecond, "the schedule's period")
	flag.DurationVar(&cfg.Job, "job", 250*time.Millisecond, "how long one run of the job takes")
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
	Runs    int           `json:"runs"`
	Skipped int           `json:"skipped"`
	Errors  []string      `json:"errors,omitempty"`
	MaxSkip time.Duration `json:"max_skip"` // longest TryLock that found the key held
}

// run starts the workers, waits for them, and writes a report to out. It
// reports whether the job never ran twice at once, ran, and was skipped.
func run(ctx context.Context, cfg config, out io.Writer) (bool, error) {
	db, sqlDB, err := exampledb.OpenMigrated(ctx, cfg.DSN, cfg.LockTable)
	if err != nil {
		return false, err
	}
	defer sqlDB.Close()
	job, err := NewJob(db, cfg.Prefix, "supervisor", cfg.Job)
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
	rep, err := job.report(ctx)
	if err != nil {
		return false, err
	}

	fmt.Fprintf(out, "singleton: %d processes try a global job every %v for %v; one run takes %v\n\n", cfg.Workers, cfg.Every, cfg.For, cfg.Job)
	var runs, skipped int
	var maxSkip time.Duration
	var jobErrs []string
	for _, s := range sums {
		fmt.Fprintf(out, "  %s  ran the job %2d times (%d recorded), skipped %3d ticks (TryLock: key held), slowest skip %v\n",
			s.Worker, s.Runs, rep.byWorker[s.Worker], s.Skipped, s.MaxSkip.Round(time.Microsecond*100))
		runs += s.Runs
		skipped += s.Skipped
		maxSkip = max(maxSkip, s.MaxSkip)
		jobErrs = append(jobErrs, s.Errors...)
	}
	slices.Sort(jobErrs)
	for _, e := range jobErrs {
		fmt.Fprintf(out, "  error: %s\n", e)
	}
	fmt.Fprintf(out, "\n  runs recorded           %d (reported by the workers: %d)\n", rep.runs, runs)
	fmt.Fprintf(out, "  most running at once    %d (autocommit counter)\n", rep.maxRunning)
	fmt.Fprintf(out, "  overlapping runs        %d (pairs of intervals, server clock)\n", rep.overlaps)
	fmt.Fprintf(out, "  total time              %v\n", time.Since(start).Round(time.Millisecond))
	ok := rep.runs > 0 && rep.runs == int64(runs) && rep.maxRunning == 1 && rep.overlaps == 0 && skipped > 0 && len(jobErrs) == 0
	if ok {
		fmt.Fprintln(out, "\nOK: the job never ran twice at once; busy turns were skipped, not queued")
	} else {
		fmt.Fprintln(out, "\nFAILED")
	}
	return ok, nil
}

// startWorker runs one worker process and returns its summary.
func startWorker(ctx context.Context, cfg config, name string) (summary, error) {
	cmd := exec.CommandContext(ctx, cfg.Self, "-name", name, "-lock-table", cfg.LockTable, "-prefix", cfg.Prefix,
		"-for", cfg.For.String(), "-every", cfg.Every.String(), "-job", cfg.Job.String())
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
	every := fs.Duration("every", 100*time.Millisecond, "period")
	jobDur := fs.Duration("job", 250*time.Millisecond, "job duration")
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
	job, err := NewJob(db, *prefix, *name, *jobDur)
	if err != nil {
		return fail(err)
	}

	s := summary{Worker: *name}
	ctx, cancel := context.WithTimeout(context.Background(), *span)
	defer cancel()
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = json.NewEncoder(stdout).Encode(s)
			return 0
		case <-tick.C:
		}
		// The job's own context outlives the schedule, so that a run that
		// started finishes.
		if err := tick1(context.WithoutCancel(ctx), locker, job, &s); err != nil {
			s.Errors = append(s.Errors, err.Error())
		}
	}
}

// tick1 is one turn of the schedule: run the job if no other process is
// running it, else skip.
func tick1(ctx context.Context, locker *dblock.Locker, job *Job, s *summary) error {
	start := time.Now()
	lk, err := locker.TryLock(ctx, dblock.Global())
	if errors.Is(err, dblock.ErrNotAcquired) {
		s.Skipped++
		s.MaxSkip = max(s.MaxSkip, time.Since(start))
		return nil
	}
	if err != nil {
		return err
	}
	if err := job.Run(lk.Context(ctx)); err != nil {
		_ = lk.Rollback()
		return err
	}
	if err := lk.Commit(); err != nil {
		return err
	}
	s.Runs++
	return nil
}
