// Command bench measures txlock against the raw row-lock floor and against
// the designs of its peers, side by side in one run.
//
// Each contender runs the same work for a fixed duration after a warm-up, in
// interleaved repetitions (A B C, B C A, ...); throughput is compared with
// the raw floor of the same repetition, and the medians of those ratios are
// reported, because absolute numbers move from run to run on a noisy
// machine. See README.md for what each contender does.
//
//	cd bench && go run . -quick            # under a minute
//	cd bench && go run .                   # the default: a few minutes
//	cd bench && go run . -full             # opt-in: 5 repetitions of 2 s (about 35 minutes)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/txlock/txlock/dblock"
)

// options are the command-line settings of one run.
type options struct {
	dsn            string
	socket         string
	redisAddr      string
	duration       time.Duration
	warmup         time.Duration
	reps           int
	own            []int
	hot            []int
	readers        []int
	permitWorkers  []int
	permits        int
	permitHold     time.Duration
	hierGoroutines []int
	workloads      []workload
	only           *regexp.Regexp
	skip           *regexp.Regexp
	leasePoll      time.Duration
	bizPlaceholder bool
	outDir         string
	plotPath       string
	cpuProfile     string
	quick, full    bool
	keep           bool
	aa             bool
	replot         string
	quiet          time.Duration
	args           []string
}

// presets are the settings behind -quick, the default and -full. Flags given
// explicitly override them.
var presets = map[string]struct {
	duration, warmup time.Duration
	reps             int
	own, hot         string
	readers          string
	permitWorkers    string
	hierGoroutines   string
}{
	"quick":   {120 * time.Millisecond, 40 * time.Millisecond, 2, "1,16,64", "8", "1,4,16", "16", "1,16"},
	"default": {300 * time.Millisecond, 100 * time.Millisecond, 3, "1,4,16,64", "2,8,32", "1,4,16", "16", "1,16"},
	"full":    {2 * time.Second, 500 * time.Millisecond, 5, "1,4,16,64", "2,8,32", "1,4,16,64", "16", "1,4,16,64"},
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "txlock-bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "txlock-bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("txlock-bench", flag.ContinueOnError)
	o := &options{args: args}
	defDSN := os.Getenv("DBLOCK_DSN")
	if defDSN == "" {
		defDSN = "root@tcp(127.0.0.1:3306)/test"
	}
	fs.StringVar(&o.dsn, "dsn", defDSN, "`DSN` of the server (go-sql-driver/mysql format; default $DBLOCK_DSN or root@tcp(127.0.0.1:3306)/test). Its interpolateParams setting is overridden per contender")
	fs.StringVar(&o.socket, "socket", "", "connect over this unix `socket` instead of the DSN's address; \"auto\" asks the server for @@socket")
	fs.StringVar(&o.redisAddr, "redis", "127.0.0.1:6379", "Redis `address` for the redislock contender (skipped when unreachable; \"\" to skip)")
	fs.DurationVar(&o.duration, "duration", 0, "measured time of each contender in each repetition (default: preset)")
	fs.DurationVar(&o.warmup, "warmup", 0, "unmeasured warm-up before each measurement (default: preset)")
	fs.IntVar(&o.reps, "reps", 0, "repetitions (default: preset)")
	own := fs.String("goroutines", "", "comma-separated goroutine counts, each goroutine on its own key (default: preset)")
	hot := fs.String("hot", "", "comma-separated goroutine counts on one hot key (default: preset; \"0\" for none)")
	readers := fs.String("readers", "", "comma-separated reader counts of the shared workload, all on one hot key (default: preset)")
	permitWorkers := fs.String("permit-workers", "", "comma-separated worker counts of the semaphore workload, all on one hot key (default: preset)")
	fs.IntVar(&o.permits, "permits", 4, "permits of the semaphore workload's key")
	fs.DurationVar(&o.permitHold, "permit-hold", time.Millisecond, "how long a holder of the semaphore workload holds (in the client)")
	hierGoroutines := fs.String("hier-goroutines", "", "comma-separated goroutine counts of the hierarchy workload, each on its own key (default: preset)")
	works := fs.String("workloads", "lock,business,shared,semaphore,hierarchy", "comma-separated workloads: lock (acquire, release), business (acquire, one UPDATE, commit), "+
		"shared (-readers on one hot key, each: acquire shared or exclusive, one SELECT, commit), "+
		"semaphore (-permit-workers on one hot key: acquire one of its -permits permits or its lock, hold -permit-hold, release), "+
		"hierarchy (-hier-goroutines, each on its own key: acquire, release, the hierarchy off and on)")
	only := fs.String("only", "", "run only the contenders whose id matches this `regexp` (the raw floor always runs)")
	skip := fs.String("skip", "", "skip the contenders whose id matches this `regexp`")
	fs.DurationVar(&o.leasePoll, "poll", time.Millisecond, "pause between attempts of the lease-row and Redis contenders on a held key")
	fs.BoolVar(&o.bizPlaceholder, "biz-placeholder", false, "send the business UPDATE with a ? placeholder (default: a literal id, so that the DSN's interpolateParams only affects the lock's own statements)")
	fs.StringVar(&o.outDir, "out", "out", "`directory` for report.md and results.jsonl")
	fs.StringVar(&o.plotPath, "plot", "", "PNG `file` of throughput against goroutines (default <out>/throughput.png; \"-\" for none)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `file`")
	fs.BoolVar(&o.quick, "quick", false, "a short run that finishes in about a minute: 2 repetitions of 120 ms, 1/16/64 goroutines, 8 on the hot key, 1/4/16 readers, 16 semaphore workers, 1/16 on the hierarchy")
	fs.BoolVar(&o.full, "full", false, "a long run: 5 repetitions of 2 s after 500 ms of warm-up (about 35 minutes)")
	fs.BoolVar(&o.aa, "aa", false, "also run the raw floor a second time as a contender (an A/A control: its ratio to the floor shows the run's noise)")
	fs.DurationVar(&o.quiet, "quiet", 0, "before each repetition, wait up to this long for the machine to be quiet (other processes, the server serving others, below 10% of the CPU); for shared machines")
	fs.StringVar(&o.replot, "replot", "", "draw the plot (-plot) again from the results.jsonl `file` of an earlier run, without measuring")
	fs.BoolVar(&o.keep, "keep", false, "keep the tables the run creates (for inspection)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.quick && o.full {
		return nil, errors.New("-quick and -full exclude each other")
	}
	p := presets["default"]
	switch {
	case o.quick:
		p = presets["quick"]
	case o.full:
		p = presets["full"]
	}
	if o.duration == 0 {
		o.duration = p.duration
	}
	if o.warmup == 0 {
		o.warmup = p.warmup
	}
	if o.reps == 0 {
		o.reps = p.reps
	}
	if *own == "" {
		*own = p.own
	}
	if *hot == "" {
		*hot = p.hot
	}
	if *readers == "" {
		*readers = p.readers
	}
	if *permitWorkers == "" {
		*permitWorkers = p.permitWorkers
	}
	if *hierGoroutines == "" {
		*hierGoroutines = p.hierGoroutines
	}
	var err error
	if o.own, err = parseCounts(*own); err != nil {
		return nil, fmt.Errorf("-goroutines: %w", err)
	}
	if o.hot, err = parseCounts(*hot); err != nil {
		return nil, fmt.Errorf("-hot: %w", err)
	}
	if o.readers, err = parseCounts(*readers); err != nil {
		return nil, fmt.Errorf("-readers: %w", err)
	}
	if o.permitWorkers, err = parseCounts(*permitWorkers); err != nil {
		return nil, fmt.Errorf("-permit-workers: %w", err)
	}
	if o.hierGoroutines, err = parseCounts(*hierGoroutines); err != nil {
		return nil, fmt.Errorf("-hier-goroutines: %w", err)
	}
	for _, w := range strings.Split(*works, ",") {
		switch strings.TrimSpace(w) {
		case "lock":
			o.workloads = append(o.workloads, lockOnly)
		case "business":
			o.workloads = append(o.workloads, lockBusiness)
		case "shared":
			o.workloads = append(o.workloads, sharedRead)
		case "semaphore":
			o.workloads = append(o.workloads, permitHold)
		case "hierarchy":
			o.workloads = append(o.workloads, hierLock)
		default:
			return nil, fmt.Errorf("-workloads: unknown workload %q", w)
		}
	}
	if *only != "" {
		if o.only, err = regexp.Compile(*only); err != nil {
			return nil, fmt.Errorf("-only: %w", err)
		}
	}
	if *skip != "" {
		if o.skip, err = regexp.Compile(*skip); err != nil {
			return nil, fmt.Errorf("-skip: %w", err)
		}
	}
	switch {
	case o.duration <= 0 || o.warmup < 0 || o.reps < 1:
		return nil, errors.New("-duration and -reps must be positive, -warmup not negative")
	case len(planCells(o)) == 0:
		return nil, errors.New("no goroutine counts to run")
	case o.leasePoll <= 0:
		return nil, errors.New("-poll must be positive")
	case o.permits < 1 || o.permits > dblock.MaxPermits || o.permitHold < 0:
		return nil, fmt.Errorf("-permits must be between 1 and %d, -permit-hold not negative", dblock.MaxPermits)
	}
	if o.plotPath == "" {
		o.plotPath = filepath.Join(o.outDir, "throughput.png")
	}
	if o.replot != "" && o.plotPath == "-" {
		return nil, errors.New("-replot needs a -plot file")
	}
	return o, nil
}

// parseCounts reads "1,4,16"; "0" or "" is the empty list.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" || f == "0" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 512 {
			return nil, fmt.Errorf("bad goroutine count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(ctx context.Context, o *options) (err error) {
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if o.replot != "" {
		return replot(o)
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	e, err := setup(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := e.cleanup(o.keep); cerr != nil && err == nil {
			err = cerr
		}
	}()

	cs := selectContenders(o, e)
	plan := planCells(o)
	runs := 0
	for _, c := range plan {
		for _, ct := range cs {
			if ct.runs(c) {
				runs++
			}
		}
	}
	per := o.warmup + o.duration
	fmt.Fprintf(os.Stderr, "txlock-bench: %s over %s, %d contenders, %d cells, %d repetitions: about %v\n",
		e.serverVersion, e.transport, len(cs), len(plan), o.reps,
		(time.Duration(runs*o.reps) * (per + 40*time.Millisecond)).Round(time.Second))

	rec, err := newRecorder(o, e)
	if err != nil {
		return err
	}
	defer rec.close()
	start := time.Now()
	for _, c := range plan {
		for rep := 0; rep < o.reps; rep++ {
			if o.quiet > 0 {
				if waited, busy := waitQuiet(ctx, o.quiet); busy > foreignWarn {
					fmt.Fprintf(os.Stderr, "txlock-bench: the machine stayed busy (%.0f%% of its CPU) for %v; measuring anyway\n", 100*busy, waited.Round(time.Second))
				}
			}
			// Rotate the order each repetition, so that no contender always
			// follows the same one (a write-heavy run leaves purge and
			// flush work behind it).
			for j := range cs {
				ct := cs[(j+rep)%len(cs)]
				if !ct.runs(c) {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := runOne(ctx, e, ct, c, o)
				if err != nil {
					if ctx.Err() != nil {
						return fmt.Errorf("%s, %s: %w", ct.id, c, err)
					}
					// One contender failing (the server out of
					// connections, Redis gone) does not end the run.
					rec.fail(ct, c, rep, err)
					continue
				}
				r.rep = rep
				rec.add(r)
			}
		}
		rec.progress(c)
	}
	elapsed := time.Since(start)
	rep := rec.report(cs, plan, elapsed)
	fmt.Print(rep.markdown)
	for _, l := range rep.summaryJSON {
		fmt.Println(l)
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "report.md"), []byte(rep.markdown), 0o644); err != nil {
		return err
	}
	if o.plotPath != "-" {
		if err := writePlot(o.plotPath, rec, cs, o, []string{
			e.serverVersion + " over " + e.transport,
			e.machine,
			fmt.Sprintf("median of %d reps, %v each; see bench/README.md", o.reps, o.duration),
		}); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Fprintf(os.Stderr, "txlock-bench: plot written to %s\n", o.plotPath)
	}
	fmt.Fprintf(os.Stderr, "txlock-bench: done in %v; %s and %s written\n", elapsed.Round(time.Second),
		filepath.Join(o.outDir, "report.md"), filepath.Join(o.outDir, "results.jsonl"))
	return nil
}

// machine describes the host for the report.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d CPUs (%s), GOMAXPROCS %d%s, %s", runtime.NumCPU(), model, runtime.GOMAXPROCS(0), kernel, runtime.Version())
}
