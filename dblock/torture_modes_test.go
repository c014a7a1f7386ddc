package dblock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/history"
	"github.com/txlock/txlock/internal/linearize/lockload"
)

// What the mode tortures share (TestTortureShared, TestTorturePermits,
// TestTortureHierarchy): Lockers on pools of their own, workers that take
// keys through the public paths with random waits, cancellations and
// deliberate rollbacks, their sections recorded in a history table inside
// the lock's transaction, a killer of sessions, a tally of outcomes and
// the final checks.

// Shape of the mode tortures.
const (
	modeLockers    = 3 // Lockers, each on a pool of its own
	modeGoroutines = 3 // workers per Locker
)

// modeExpected are the outcomes a mode torture's operation may end with,
// by lockload.Label, besides success and the deliberate rollback, given
// cancellations, timeouts and kills.
var modeExpected = map[string]bool{
	"ErrNotAcquired": true, "ErrLockLost": true, "ErrDeadlock": true, "cancelled": true, "connection": true,
	"error 1927": true, // the connection was killed
	"error 1317": true, // the statement was interrupted (a cancelled context's KILL QUERY)
	"error 2013": true, // the connection was lost during a statement
}

// modeTally counts the outcomes of a mode torture's workers.
type modeTally struct {
	mu         sync.Mutex
	expected   map[string]bool   // labels an operation may end with besides success
	outcomes   map[string]int    // error label -> count
	examples   map[string]string // error label -> the first such error
	committed  map[string]int    // path/mode -> committed operations
	extra      map[string]int    // named counts of the test's own
	sections   int               // sections of committed operations
	unexpected []string
}

// newModeTally returns a tally that accepts the labels of modeExpected
// and more.
func newModeTally(more ...string) *modeTally {
	exp := maps.Clone(modeExpected)
	for _, m := range more {
		exp[m] = true
	}
	return &modeTally{expected: exp, outcomes: map[string]int{}, examples: map[string]string{},
		committed: map[string]int{}, extra: map[string]int{}}
}

func (s *modeTally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.outcomes)) {
		fmt.Fprintf(&b, "%s=%d ", k, s.outcomes[k])
	}
	b.WriteString("; committed by path:")
	for _, k := range slices.Sorted(maps.Keys(s.committed)) {
		fmt.Fprintf(&b, " %s=%d", k, s.committed[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.extra)) {
		fmt.Fprintf(&b, "; %s: %d", k, s.extra[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.examples)) {
		fmt.Fprintf(&b, "\n  e.g. %s: %s", k, s.examples[k])
	}
	return b.String()
}

// add counts one operation of path in mode with nsec sections that ended
// with err.
func (s *modeTally) add(path, mode string, nsec int, err error) {
	label := lockload.Label(err)
	if errors.Is(err, errTortureRollback) {
		label = "rolled back on purpose"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outcomes[label]++
	switch {
	case err == nil:
		s.committed[path+"/"+mode]++
		s.sections += nsec
	case label == "rolled back on purpose":
	default:
		if _, ok := s.examples[label]; !ok {
			s.examples[label] = err.Error()
		}
		if !s.expected[label] {
			s.unexpected = append(s.unexpected, fmt.Sprintf("%s %s: %v", path, mode, err))
		}
	}
}

// count adds one to the test's own count name.
func (s *modeTally) count(name string) {
	s.mu.Lock()
	s.extra[name]++
	s.mu.Unlock()
}

// get returns the count name, or the committed operations of a path/mode.
func (s *modeTally) get(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.extra[name] + s.committed[name]
}

// outcome returns how many operations ended with label.
func (s *modeTally) outcome(label string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outcomes[label]
}

// has reports whether every one of names (path/mode pairs or the test's
// own counts) is above zero.
func (s *modeTally) has(names ...string) bool {
	for _, n := range names {
		if s.get(n) == 0 {
			return false
		}
	}
	return true
}

// unexpectedf records something that must not happen.
func (s *modeTally) unexpectedf(format string, args ...any) {
	s.mu.Lock()
	s.unexpected = append(s.unexpected, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

// check fails t for what the history and the workers say went wrong: a
// committed section missing from the history (the history may hold more:
// a COMMIT killed in flight can commit unknown to the client), no kill,
// and every unexpected outcome.
func (s *modeTally) check(t *testing.T, r history.Report, kills lockload.KillStats) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sections > r.Checked {
		t.Errorf("the workers committed %d sections but the history holds %d", s.sections, r.Checked)
	}
	if kills.Holders+kills.Commits == 0 {
		t.Error("no session was killed: the run did not test kills")
	}
	for _, u := range s.unexpected {
		t.Errorf("unexpected: %s", u)
	}
}

// modeWorker is one goroutine of a mode torture.
type modeWorker struct {
	l       *dblock.Locker
	db      *gorm.DB // the Locker's pool
	hist    string
	tag     string // of the hold statements, which the killer looks for
	proc, g int
	rng     *rand.Rand
	tally   *modeTally
	// waitOnly: never NoWait (a WaitTimeout instead), whose held row
	// stalls an acquisition during a hierarchy switch
	// (TestReview23bSwitchWaitsForItsOwnHolder).
	waitOnly bool
}

// modeRun is a mode torture in progress: its Lockers and their pools, its
// history table, the seed, and when the workers stop.
type modeRun struct {
	e       env
	lockers []*dblock.Locker
	pools   []*gorm.DB
	hist    string
	tag     string
	seed    uint64
	ctx     context.Context
	length  time.Duration // of the run proper
	start   time.Time     // set by run
	stop    time.Time     // set by run: start + length
}

// startModeRun creates the history table hist (dropped when the test
// ends) and modeLockers Lockers on the test's table, each on its own pool
// and closed when the test ends, and draws the seed.
func startModeRun(t *testing.T, e env, hist, tag string, opts ...dblock.Option) *modeRun {
	t.Helper()
	duration := tortureDuration(t)
	ctx := ctxWithin(t, duration+5*opTimeout)
	if err := history.CreateTable(ctx, e.sqlDB, hist); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = history.DropTable(context.Background(), e.sqlDB, hist) })
	m := &modeRun{e: e, hist: hist, tag: tag, ctx: ctx, seed: uint64(time.Now().UnixNano()), length: duration}
	for range modeLockers {
		db := otherPool(t)
		l, err := dblock.New(db, append([]dblock.Option{dblock.Table(e.table)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		m.lockers, m.pools = append(m.lockers, l), append(m.pools, db)
	}
	t.Logf("seed %d", m.seed)
	return m
}

// workers returns the run's workers, modeGoroutines per Locker, counting
// into tally.
func (m *modeRun) workers(tally *modeTally) []*modeWorker {
	var ws []*modeWorker
	for i, l := range m.lockers {
		for g := range modeGoroutines {
			ws = append(ws, &modeWorker{l: l, db: m.pools[i], hist: m.hist, tag: m.tag, proc: i, g: g,
				rng: rand.New(rand.NewPCG(m.seed, uint64(i*100+g))), tally: tally})
		}
	}
	return ws
}

// more reports whether the workers go on: until stop, then, while covered
// reports false, for at most opTimeout more.
func (m *modeRun) more(covered func() bool) bool {
	now := time.Now()
	return m.ctx.Err() == nil && (now.Before(m.stop) || now.Before(m.stop.Add(opTimeout)) && !covered())
}

// run runs once on every worker while more(covered), with a killer of the
// sessions of the run's tag until stop, and beside, if any, on goroutines
// of their own; it returns what the killer did.
func (m *modeRun) run(ws []*modeWorker, covered func() bool, once func(ctx context.Context, w *modeWorker), beside ...func()) lockload.KillStats {
	m.start = time.Now()
	m.stop = m.start.Add(m.length)
	var kills lockload.KillStats
	var wg sync.WaitGroup
	m.e.startKiller(m.ctx, &wg, m.tag, m.seed, m.stop, &kills)
	for _, f := range beside {
		wg.Go(f)
	}
	for _, w := range ws {
		wg.Go(func() {
			for m.more(covered) {
				once(m.ctx, w)
			}
		})
	}
	wg.Wait()
	return kills
}

// analyze loads the history, logs its summary, the kills and the tally,
// and fails t on a violation.
func (m *modeRun) analyze(t *testing.T, what string, kills lockload.KillStats, tally *modeTally) history.Report {
	t.Helper()
	events, err := history.Load(m.ctx, m.e.sqlDB, m.hist)
	if err != nil {
		t.Fatal(err)
	}
	r := history.Analyze(events)
	t.Logf("%v, %d Lockers x %d goroutines %s: %s", time.Since(m.start).Round(time.Millisecond), modeLockers, modeGoroutines, what, history.Summary(r, nil))
	t.Logf("kills: %d holders, %d in COMMIT, %d rounds without a target, %d failed", kills.Holders, kills.Commits, kills.Missed, kills.Errors)
	t.Logf("outcomes: %s", tally)
	if err := r.Err(); err != nil {
		t.Fatalf("seed %d: %v", m.seed, err)
	}
	return r
}

// op runs one operation through runPath, in a context bounded by
// opTimeout and, one time in ten, cancelled after up to 50 ms (while
// waiting or while holding).
func (w *modeWorker) op(parent context.Context, path string, keys []dblock.Key, opts []dblock.LockOption, work func(context.Context, *gorm.DB) error) error {
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	if w.rng.IntN(10) == 0 {
		t := time.AfterFunc(time.Duration(w.rng.IntN(50))*time.Millisecond, cancel)
		defer t.Stop()
	}
	return w.runPath(ctx, path, keys, opts, work)
}

// waitOpts draws how an acquisition of path waits: TryLock never does;
// else NoWait (10%; with waitOnly, a WaitTimeout), a WaitTimeout of 20 to
// 300 ms (50%), or the operation's context (40%).
func (w *modeWorker) waitOpts(path string) []dblock.LockOption {
	switch x := w.rng.Float64(); {
	case path == "TryLock":
	case x < 0.1 && !w.waitOnly:
		return []dblock.LockOption{dblock.NoWait()}
	case x < 0.6:
		return []dblock.LockOption{dblock.WaitTimeout(20*time.Millisecond + time.Duration(w.rng.IntN(280))*time.Millisecond)}
	}
	return nil
}

// hold holds for up to max in a statement tagged for the killer.
func (w *modeWorker) hold(ctx context.Context, tx *gorm.DB, max time.Duration) error {
	d := time.Duration(w.rng.Int64N(int64(max) + 1))
	if d == 0 {
		return nil
	}
	return tx.WithContext(ctx).Exec("DO /*"+w.tag+"*/ SLEEP(?)", d.Seconds()).Error
}

// runPath takes keys through the public path named path with opts, runs
// work in the holding transaction and commits: Do, DoMulti, Lock or
// TryLock then Commit, or LockTx first thing in a transaction begun on
// the worker's pool.
func (w *modeWorker) runPath(ctx context.Context, path string, keys []dblock.Key, opts []dblock.LockOption, work func(context.Context, *gorm.DB) error) error {
	switch path {
	case "Do":
		return w.l.Do(ctx, keys[0], work, opts...)
	case "DoMulti":
		return w.l.DoMulti(ctx, keys, work, opts...)
	case "Lock", "TryLock":
		lock := w.l.Lock
		if path == "TryLock" {
			lock = w.l.TryLock
		}
		lk, err := lock(ctx, keys[0], opts...)
		if err != nil {
			return err
		}
		if err := work(lk.Context(ctx), lk.Tx()); err != nil {
			_ = lk.Rollback()
			return err
		}
		return lk.Commit()
	case "LockTx":
		tx := w.db.WithContext(ctx).Begin()
		if tx.Error != nil {
			return tx.Error
		}
		if err := w.l.LockTx(ctx, tx, keys[0], opts...); err != nil {
			tx.Rollback()
			return err
		}
		if err := work(dblock.WithTx(ctx, tx), tx); err != nil {
			tx.Rollback()
			return err
		}
		err := tx.Commit().Error
		if errors.Is(err, sql.ErrTxDone) && ctx.Err() != nil {
			// database/sql rolled the caller's transaction back when its
			// context ended.
			return fmt.Errorf("the caller's transaction ended with its context (%w): %w", ctx.Err(), err)
		}
		return err
	}
	return fmt.Errorf("torture: unknown path %q", path)
}

// beginSections starts recording a section for each of evs (whose
// Process and Goroutine are the worker's) in the transaction tx.
func (w *modeWorker) beginSections(ctx context.Context, tx *gorm.DB, evs []history.Event) ([]*history.Section, error) {
	secs := make([]*history.Section, len(evs))
	for i, ev := range evs {
		ev.Process, ev.Goroutine = w.proc, w.g
		sec, err := history.BeginSection(ctx, tx.Statement.ConnPool, w.hist, ev)
		if err != nil {
			return nil, err
		}
		secs[i] = sec
	}
	return secs, nil
}

// endSections writes secs into their transaction.
func endSections(ctx context.Context, secs []*history.Section) error {
	for _, sec := range secs {
		if err := sec.End(ctx); err != nil {
			return err
		}
	}
	return nil
}
