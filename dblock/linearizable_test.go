package dblock_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/linearize"
	"github.com/txlock/txlock/internal/linearize/lockload"
	"github.com/txlock/txlock/internal/testdb"
)

// Shape of TestTortureLinearizable.
const (
	linGoroutines = 4 // per process
	linKeys       = 3 // counters, each under its own key
)

// Environment of the child process of TestTortureLinearizable.
const (
	envLinChild    = "TXLOCK_LIN_CHILD"    // "1" in the child
	envLinTable    = "TXLOCK_LIN_TABLE"    // the lock table
	envLinCounters = "TXLOCK_LIN_COUNTERS" // the counter table
	envLinStop     = "TXLOCK_LIN_STOP"     // Unix nanoseconds: when the child stops
	envLinClient   = "TXLOCK_LIN_CLIENT"   // the child's first client id
)

// linMix is the workload of TestTortureLinearizable: every public path,
// NoWait, wait timeouts, deadlines that may run out while holding, and
// holds of up to 3 ms in a tagged statement that the killer finds.
var linMix = lockload.Mix{
	NoWait: 0.1, WaitP: 0.4, Wait: [2]time.Duration{20 * time.Millisecond, 300 * time.Millisecond},
	DeadlineP: 0.1, Deadline: [2]time.Duration{5 * time.Millisecond, 200 * time.Millisecond},
	MaxOp: opTimeout, Hold: [2]time.Duration{0, 3 * time.Millisecond},
}

// linCounters names the counters of a test whose lock table is table.
func linCounters(table string) lockload.Counters {
	return lockload.Counters{Table: table + "_lin", Prefix: "lin:", N: linKeys}
}

// linTag marks the hold statements of a test whose lock table is table.
func linTag(table string) string { return "txlock-lin:" + table }

// TestTortureLinearizable: the committed effect of read-modify-write
// increments (read n under the lock, write n+1 computed in Go) through
// every public path (Do, Lock and Commit, LockTx in a transaction that
// read the counter before locking, decorator.WithLock, DoMulti) is
// linearizable: checked with porcupine (package linearize) over the
// client-side history of two OS processes (this one and a child) of four
// goroutines each, on three counters, with NoWait, wait timeouts,
// deadlines that run out while holding, and lock holders' sessions killed
// from outside (KILL CONNECTION of a holder found in PROCESSLIST, or of a
// COMMIT in flight). Outcomes are classified honestly: committed when
// COMMIT returned success; not committed when the work never finished or
// the server rolled back or refused it (deadlock, ErrStaleSnapshot); of
// unknown outcome otherwise (a connection lost around COMMIT). The final
// counters, read at the end, are checked against the history too.
//
// It runs 3 s by default, 5 minutes with TXLOCK_TORTURE=1 (make torture),
// or $TXLOCK_TORTURE_DURATION. $TXLOCK_LINEARIZE_HTML asks for porcupine's
// visualisation.
func TestTortureLinearizable(t *testing.T) {
	e := setup(t)
	duration := tortureDuration(t)
	ctrs := linCounters(e.table)
	if got := e.businessTable(t, "lin", lockload.Columns); got != ctrs.Table {
		t.Fatalf("counter table %s, want %s", got, ctrs.Table)
	}
	ctx := ctxWithin(t, duration+5*opTimeout)
	if err := ctrs.Fill(ctx, e.sqlDB); err != nil {
		t.Fatal(err)
	}
	l := e.locker(t)
	defer l.Close()
	// The key rows first, so that the run is about locks, not row creation.
	for i := range linKeys {
		assertFree(t, l, ctrs.Key(i))
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	start := time.Now()
	stop := start.Add(duration)
	ch := startLinChild(t, e.table, stop, linGoroutines, seed)

	var rec linearize.Recorder
	var stats lockload.Stats
	var kills lockload.KillStats
	var wg sync.WaitGroup
	e.startKiller(ctx, &wg, linTag(e.table), seed, stop, &kills)
	for g := range linGoroutines {
		w := &lockload.Worker{Locker: l, DB: e.db, Counters: ctrs, Client: g, Tag: linTag(e.table),
			Rec: &rec, Stats: &stats, Rng: rand.New(rand.NewPCG(seed, uint64(g)))}
		wg.Go(func() { w.Loop(ctx, stop, linMix) })
	}
	wg.Wait()
	ops := rec.Ops()
	for i := range ops {
		// The child's times are wall-clock times: compare on that clock.
		ops[i].Call, ops[i].Return = ops[i].Call.Round(0), ops[i].Return.Round(0)
	}
	childOps := ch.wait(t, &stats, opTimeout+time.Until(stop))
	ops = append(ops, childOps...)
	final, err := ctrs.Final(ctx, e.sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	res, err := linearize.Check(linearize.History{Ops: ops, Final: final}, linearize.Options{HTML: linearize.HTMLPath("dblock-torture")})
	if err != nil {
		t.Fatal(err)
	}
	tot := res.Totals()
	t.Logf("%v, 2 processes x %d goroutines, %d counters: %d operations (%d by the child), %d committed, %d not committed, %d of unknown outcome (%d shown committed by the history); final %v",
		time.Since(start).Round(time.Millisecond), linGoroutines, linKeys, tot.Ops, len(childOps), tot.Committed, tot.NotCommitted, tot.Unknown, tot.UnknownApplied, final)
	t.Logf("kills: %d holders, %d in COMMIT, %d rounds without a target, %d failed", kills.Holders, kills.Commits, kills.Missed, kills.Errors)
	t.Logf("outcomes %s", &stats)
	for label, ex := range stats.Examples() {
		t.Logf("e.g. %s: %s", label, ex)
	}
	// The history shows these were committed: what did their error say?
	applied := make(map[string]int)
	for _, op := range res.Applied {
		applied[op.Path+": "+keyInError.ReplaceAllString(op.Err, `resource="…"`)]++
	}
	for what, n := range applied {
		t.Logf("of unknown outcome, shown committed: %d via %s", n, what)
	}
	t.Logf("verdict: %s", res.Summary())
	if res.Verdict != linearize.Linearizable {
		t.Fatalf("the committed effect is not linearizable (seed %d):\n%s", seed, res.Explain())
	}
	for _, p := range lockload.AllPaths {
		n := stats.Count(p, linearize.Committed)
		switch {
		case p == lockload.ReadFirst && n != 0:
			// A transaction that read before its lock is refused
			// (ErrStaleSnapshot): none of these may commit.
			t.Errorf("%d increments committed through %s: a transaction that read before its lock must be refused", n, p)
		case p != lockload.ReadFirst && n == 0:
			t.Errorf("no increment committed through %s: the check did not cover it", p)
		}
	}
}

// startKiller runs on wg, until stop, a lockload.Killer of the sessions
// whose statements carry tag, one every 50 to 200 ms; what it did is in
// *kills once wg is done.
func (e env) startKiller(ctx context.Context, wg *sync.WaitGroup, tag string, seed uint64, stop time.Time, kills *lockload.KillStats) {
	wg.Go(func() {
		k := lockload.Killer{Admin: e.sqlDB, Tag: tag, Every: [2]time.Duration{50 * time.Millisecond, 200 * time.Millisecond},
			Rng: rand.New(rand.NewPCG(seed, 99))}
		*kills = k.Run(ctx, stop)
	})
}

// keyInError matches the key in the library's error messages.
var keyInError = regexp.MustCompile(`resource="[^"]*"`)

// linChild is the child process of TestTortureLinearizable.
type linChild struct {
	cmd *exec.Cmd
	out *lockedBuffer
}

// startLinChild re-executes the test binary as a child that runs
// goroutines workers until stop, its clients numbered from goroutines.
func startLinChild(t *testing.T, table string, stop time.Time, goroutines int, seed uint64) *linChild {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLinearizableChild$", "-test.count=1", "-test.v", "-test.timeout=70m")
	cmd.Env = append(os.Environ(),
		envLinChild+"=1",
		envLinTable+"="+table,
		envLinCounters+"="+linCounters(table).Table,
		envLinStop+"="+strconv.FormatInt(stop.UnixNano(), 10),
		envLinClient+"="+strconv.Itoa(goroutines),
		"TXLOCK_LIN_SEED="+strconv.FormatUint(seed, 10),
		testdb.EnvDSN+"="+dsn,
	)
	c := &linChild{cmd: cmd, out: &lockedBuffer{}}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the child process: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return c
}

// wait waits for the child (at most within), adds its tallies to stats and
// returns its operations.
func (c *linChild) wait(t *testing.T, stats *lockload.Stats, within time.Duration) []linearize.Op {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child: %v\n%s", err, c.out.String())
		}
	case <-time.After(within):
		_ = c.cmd.Process.Kill()
		<-done
		t.Fatalf("child still running %v after its stop time:\n%s", within, c.out.String())
	}
	var ops []linearize.Op
	sawDone := false
	for _, line := range strings.Split(c.out.String(), "\n") {
		if js, ok := strings.CutPrefix(line, "OP "); ok {
			var op linearize.Op
			if err := json.Unmarshal([]byte(js), &op); err != nil {
				t.Fatalf("child printed a bad operation %q: %v", js, err)
			}
			ops = append(ops, op)
			continue
		}
		if line == "DONE" {
			sawDone = true
		}
		stats.Parse(line)
	}
	if !sawDone || len(ops) == 0 {
		t.Fatalf("child printed %d operations and no DONE line:\n%s", len(ops), c.out.String())
	}
	return ops
}

// TestLinearizableChild is not a test: it is the body of the child process
// of TestTortureLinearizable. It prints its operations ("OP <json>"), its
// tallies and "DONE".
func TestLinearizableChild(t *testing.T) {
	if os.Getenv(envLinChild) != "1" {
		t.Skip("child process of TestTortureLinearizable")
	}
	table, counters := os.Getenv(envLinTable), os.Getenv(envLinCounters)
	stopNs, err1 := strconv.ParseInt(os.Getenv(envLinStop), 10, 64)
	client, err2 := strconv.Atoi(os.Getenv(envLinClient))
	seed, err3 := strconv.ParseUint(os.Getenv("TXLOCK_LIN_SEED"), 10, 64)
	if table == "" || counters != linCounters(table).Table || err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("bad child environment: table %q counters %q stop %v client %v seed %v", table, counters, err1, err2, err3)
	}
	db := testdb.Open(t)
	l, err := dblock.New(db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	stop := time.Unix(0, stopNs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Until(stop)+opTimeout)
	defer cancel()
	var rec linearize.Recorder
	var stats lockload.Stats
	var wg sync.WaitGroup
	for g := range linGoroutines {
		w := &lockload.Worker{Locker: l, DB: db, Counters: linCounters(table), Client: client + g, Tag: linTag(table),
			Rec: &rec, Stats: &stats, Rng: rand.New(rand.NewPCG(seed, uint64(client+g)))}
		wg.Go(func() { w.Loop(ctx, stop, linMix) })
	}
	wg.Wait()
	for _, op := range rec.Ops() {
		b, err := json.Marshal(op)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("OP " + string(b))
	}
	for _, line := range stats.Lines() {
		fmt.Println(line)
	}
	fmt.Println("DONE")
}

// TestLinearizableCatchesLostUpdates: the check of TestTortureLinearizable
// can fail. LockTx with a wrong NoPriorReads promise (the transaction read
// the counter before locking, and the snapshot guard is skipped) turns a
// stale read into a lost update; four goroutines increment one counter
// that way until the check says NOT linearizable, naming a value read
// twice (a few rounds at most; each round is checked on its own).
func TestLinearizableCatchesLostUpdates(t *testing.T) {
	e, l := setupLocker(t)
	ctrs := linCounters(e.table)
	ctrs.N = 1
	e.businessTable(t, "lin", lockload.Columns)
	ctx := ctxT(t)
	if err := ctrs.Fill(ctx, e.sqlDB); err != nil {
		t.Fatal(err)
	}
	assertFree(t, l, ctrs.Key(0))
	mix := lockload.Mix{Paths: []lockload.Path{lockload.ReadFirst}, MaxOp: opTimeout,
		Hold: [2]time.Duration{time.Millisecond, 3 * time.Millisecond}, Extra: []dblock.LockOption{dblock.NoPriorReads()}}
	var initial int64
	for round := 1; ; round++ {
		var rec linearize.Recorder
		var stats lockload.Stats
		var wg sync.WaitGroup
		stop := time.Now().Add(300 * time.Millisecond)
		for g := range 4 {
			w := &lockload.Worker{Locker: l, DB: e.db, Counters: ctrs, Client: g, Tag: linTag(e.table),
				Rec: &rec, Stats: &stats, Rng: rand.New(rand.NewPCG(uint64(round), uint64(g)))}
			wg.Go(func() { w.Loop(ctx, stop, mix) })
		}
		wg.Wait()
		final, err := ctrs.Final(ctx, e.sqlDB)
		if err != nil {
			t.Fatal(err)
		}
		res, err := linearize.Check(linearize.History{Ops: rec.Ops(), Initial: map[string]int64{ctrs.Name(0): initial}, Final: final},
			linearize.Options{HTML: linearize.HTMLPath("dblock-lost-updates")})
		if err != nil {
			t.Fatal(err)
		}
		initial = final[ctrs.Name(0)]
		t.Logf("round %d: %s; %s", round, res.Summary(), &stats)
		if res.Verdict == linearize.NotLinearizable {
			ex := res.Explain()
			if !strings.Contains(ex, string(linearize.DuplicateRead)) {
				t.Errorf("the explanation names no value read twice:\n%s", ex)
			}
			t.Logf("caught:\n%s", firstLines(ex, 12))
			return
		}
		if round == 20 {
			t.Fatalf("20 rounds of LockTx with a wrong NoPriorReads and no lost update caught")
		}
	}
}

// firstLines returns the first n lines of s.
func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
