package dblock_test

import (
	"context"
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

// Shape of TestTortureShared.
const (
	sharedLockers    = 3   // Lockers, each on a pool of its own
	sharedGoroutines = 3   // workers per Locker
	sharedKeys       = 2   // hot keys
	sharedShare      = 0.7 // the share of the keys taken shared
)

// The public paths of TestTortureShared.
var sharedPaths = []string{"Do", "Lock", "TryLock", "LockTx", "DoMulti"}

// TestTortureShared: three Lockers, each on its own pool, with three
// goroutines each, take two hot keys shared (70%) or exclusively through
// every public path (Do, Lock and Commit, TryLock, LockTx in a transaction
// of the caller's, DoMulti over both keys with both, one or neither
// shared), with random wait timeouts, NoWait, holds of up to 3 ms in a
// tagged statement, deliberate rollbacks, contexts cancelled at random
// (while waiting or holding), and sessions killed from outside (KILL
// CONNECTION of a holder, or of a COMMIT in flight). Some shared holders
// also try to take their key exclusively, which must be refused with
// ErrUpgrade. Every critical section records its key, mode and interval
// in server time in a history table, inside its lock's transaction, so
// that only committed sections survive; history.Check proves that no
// exclusive section overlapped another section of its key, and the test
// checks that shared sections did overlap each other (else it proved
// nothing about them), and that every path committed in both modes.
//
// It runs 3 s by default, 5 minutes with TXLOCK_TORTURE=1 (make torture),
// or $TXLOCK_TORTURE_DURATION.
func TestTortureShared(t *testing.T) {
	e := setup(t)
	duration := tortureDuration(t)
	hist := e.table + "_shist"
	ctx := ctxWithin(t, duration+5*opTimeout)
	if err := history.CreateTable(ctx, e.sqlDB, hist); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = history.DropTable(context.Background(), e.sqlDB, hist) })
	var lockers []*dblock.Locker
	pools := make([]*gorm.DB, sharedLockers)
	for i := range pools {
		pools[i] = otherPool(t)
		l, err := dblock.New(pools[i], dblock.Table(e.table))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		lockers = append(lockers, l)
	}
	// The key rows first, so that the run is about locks, not row creation.
	for i := range sharedKeys {
		assertFree(t, lockers[0], tortureKey(i))
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	tally := &sharedTally{outcomes: map[string]int{}, examples: map[string]string{}, committed: map[string]int{}}
	start := time.Now()
	stop := start.Add(duration)
	// Past stop, the workers go on until every path has committed in
	// every mode (an exclusive TryLock of a key that readers keep busy
	// succeeds rarely), for at most opTimeout more.
	more := func() bool {
		now := time.Now()
		return ctx.Err() == nil && (now.Before(stop) || now.Before(stop.Add(opTimeout)) && !tally.covered())
	}
	var kills lockload.KillStats
	var wg sync.WaitGroup
	e.startKiller(ctx, &wg, sharedTag(e.table), seed, stop, &kills)
	for i, l := range lockers {
		for g := range sharedGoroutines {
			w := &sharedWorker{l: l, db: pools[i], hist: hist, tag: sharedTag(e.table), proc: i, g: g,
				rng: rand.New(rand.NewPCG(seed, uint64(i*100+g))), tally: tally}
			wg.Go(func() {
				for more() {
					w.once(ctx)
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	events, err := history.Load(ctx, e.sqlDB, hist)
	if err != nil {
		t.Fatal(err)
	}
	r := history.Analyze(events)
	peak := slices.Max(slices.Collect(maps.Values(r.Peak)))
	t.Logf("%v, %d Lockers x %d goroutines on %d keys: %s", elapsed.Round(time.Millisecond), sharedLockers, sharedGoroutines, sharedKeys, history.Summary(r, nil))
	t.Logf("kills: %d holders, %d in COMMIT, %d rounds without a target, %d failed", kills.Holders, kills.Commits, kills.Missed, kills.Errors)
	t.Logf("outcomes: %s", tally)
	if err := r.Err(); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if r.Modes[history.Shared] == 0 || r.Modes[history.Exclusive] == 0 {
		t.Errorf("committed sections by mode %v: want both modes", r.Modes)
	}
	if r.Overlapped == 0 || peak < 2 {
		t.Errorf("no two shared sections overlapped (peak %d): the run proved nothing about shared holders", peak)
	}
	if tally.sections > r.Checked {
		t.Errorf("the workers committed %d sections but the history holds %d", tally.sections, r.Checked)
	}
	if !tally.covered() {
		t.Errorf("within %v, some path did not commit in some mode, or no upgrade was refused: the run did not cover them", elapsed)
	}
	if kills.Holders+kills.Commits == 0 {
		t.Error("no session was killed: the run did not test kills")
	}
	for _, u := range tally.unexpected {
		t.Errorf("unexpected: %s", u)
	}
}

// sharedTag marks the hold statements of a test whose lock table is table.
func sharedTag(table string) string { return "txlock-shared:" + table }

// sharedTally counts the outcomes of TestTortureShared's workers.
type sharedTally struct {
	mu         sync.Mutex
	outcomes   map[string]int    // error label -> count
	examples   map[string]string // error label -> the first such error
	committed  map[string]int    // path/mode -> committed operations
	sections   int               // sections of committed operations
	upgrades   int               // exclusive acquisitions refused inside a shared holder
	unexpected []string
}

func (s *sharedTally) String() string {
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
	fmt.Fprintf(&b, "; %d upgrades refused (ErrUpgrade)", s.upgrades)
	for _, k := range slices.Sorted(maps.Keys(s.examples)) {
		fmt.Fprintf(&b, "\n  e.g. %s: %s", k, s.examples[k])
	}
	return b.String()
}

// covered reports whether every path committed in both modes, DoMulti
// also with mixed modes, and an upgrade was refused.
func (s *sharedTally) covered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range sharedPaths {
		for _, m := range []string{"shared", "exclusive"} {
			if s.committed[p+"/"+m] == 0 {
				return false
			}
		}
	}
	return s.committed["DoMulti/mixed"] > 0 && s.upgrades > 0
}

// sharedExpected are the outcomes a run with cancellations, timeouts and
// kills may give, by lockload.Label, besides success and the deliberate
// rollback.
var sharedExpected = map[string]bool{
	"ErrNotAcquired": true, "ErrLockLost": true, "ErrDeadlock": true, "cancelled": true, "connection": true,
	"error 1927": true, // the connection was killed
	"error 1317": true, // the statement was interrupted (a cancelled context's KILL QUERY)
	"error 2013": true, // the connection was lost during a statement
}

// add counts one operation of path in mode with nsec sections that ended
// with err.
func (s *sharedTally) add(path, mode string, nsec int, err error) {
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
		if !sharedExpected[label] {
			s.unexpected = append(s.unexpected, fmt.Sprintf("%s %s: %v", path, mode, err))
		}
	}
}

// sharedWorker is one goroutine of TestTortureShared.
type sharedWorker struct {
	l       *dblock.Locker
	db      *gorm.DB // the Locker's pool
	hist    string
	tag     string
	proc, g int
	rng     *rand.Rand
	tally   *sharedTally
}

// sharedStep is one operation of a sharedWorker.
type sharedStep struct {
	path     string
	keys     []dblock.Key
	shared   []bool // per key
	opts     []dblock.LockOption
	hold     time.Duration
	rollback bool
	probe    bool // try to take a shared key exclusively inside: ErrUpgrade
	request  time.Time
}

// mode names the step's modes: shared, exclusive or (DoMulti) mixed.
func (s *sharedStep) mode() string {
	n := 0
	for _, sh := range s.shared {
		if sh {
			n++
		}
	}
	switch n {
	case 0:
		return "exclusive"
	case len(s.shared):
		return "shared"
	}
	return "mixed"
}

// step draws a random operation.
func (w *sharedWorker) step() *sharedStep {
	s := &sharedStep{path: sharedPaths[w.rng.IntN(len(sharedPaths))], hold: time.Duration(w.rng.IntN(3001)) * time.Microsecond,
		rollback: w.rng.IntN(20) == 0, probe: w.rng.IntN(8) == 0}
	if s.path == "DoMulti" {
		s.keys = []dblock.Key{tortureKey(0), tortureKey(1)}
	} else {
		s.keys = []dblock.Key{tortureKey(w.rng.IntN(sharedKeys))}
	}
	var shared []dblock.Key
	for _, k := range s.keys {
		sh := w.rng.Float64() < sharedShare
		s.shared = append(s.shared, sh)
		if sh {
			shared = append(shared, k)
		}
	}
	switch {
	case len(shared) == len(s.keys):
		s.opts = append(s.opts, dblock.Shared())
	case len(shared) > 0:
		s.opts = append(s.opts, dblock.Shared(shared...))
	}
	switch x := w.rng.Float64(); {
	case s.path == "TryLock":
	case x < 0.1:
		s.opts = append(s.opts, dblock.NoWait())
	case x < 0.6:
		s.opts = append(s.opts, dblock.WaitTimeout(20*time.Millisecond+time.Duration(w.rng.IntN(280))*time.Millisecond))
	}
	return s
}

// once runs one random operation and counts its outcome.
func (w *sharedWorker) once(parent context.Context) {
	s := w.step()
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	if w.rng.IntN(10) == 0 {
		// A random cancellation, while waiting or while holding.
		t := time.AfterFunc(time.Duration(w.rng.IntN(50))*time.Millisecond, cancel)
		defer t.Stop()
	}
	s.request = time.Now()
	work := func(ctx context.Context, tx *gorm.DB) error { return w.work(ctx, tx, s) }
	var err error
	switch s.path {
	case "Do":
		err = w.l.Do(ctx, s.keys[0], work, s.opts...)
	case "DoMulti":
		err = w.l.DoMulti(ctx, s.keys, work, s.opts...)
	case "Lock", "TryLock":
		lock := w.l.Lock
		if s.path == "TryLock" {
			lock = w.l.TryLock
		}
		var lk *dblock.Lock
		if lk, err = lock(ctx, s.keys[0], s.opts...); err == nil {
			if err = work(lk.Context(ctx), lk.Tx()); err != nil {
				_ = lk.Rollback()
			} else {
				err = lk.Commit()
			}
		}
	case "LockTx":
		err = w.lockTx(ctx, s, work)
	}
	w.tally.add(s.path, s.mode(), len(s.keys), err)
}

// lockTx is the LockTx path: the caller's transaction takes the lock
// first thing, does the work and commits.
func (w *sharedWorker) lockTx(ctx context.Context, s *sharedStep, work func(context.Context, *gorm.DB) error) error {
	tx := w.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		return tx.Error
	}
	if err := w.l.LockTx(ctx, tx, s.keys[0], s.opts...); err != nil {
		tx.Rollback()
		return err
	}
	if err := work(dblock.WithTx(ctx, tx), tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit().Error
}

// work is the critical section: it records a section per key in the
// history table, holds in a tagged statement that the killer finds, may
// try an upgrade, and ends the sections (or rolls back on purpose).
func (w *sharedWorker) work(ctx context.Context, tx *gorm.DB, s *sharedStep) error {
	q := tx.Statement.ConnPool
	secs := make([]*history.Section, len(s.keys))
	for i, k := range s.keys {
		mode := history.Exclusive
		if s.shared[i] {
			mode = history.Shared
		}
		sec, err := history.BeginSection(ctx, q, w.hist, history.Event{Process: w.proc, Goroutine: w.g, Key: k.Resource, Request: s.request, Mode: mode})
		if err != nil {
			return err
		}
		secs[i] = sec
	}
	if s.hold > 0 {
		if err := tx.WithContext(ctx).Exec("DO /*"+w.tag+"*/ SLEEP(?)", s.hold.Seconds()).Error; err != nil {
			return err
		}
	}
	if i := slices.Index(s.shared, true); s.probe && i >= 0 {
		if err := w.probeUpgrade(ctx, s.keys[i]); err != nil {
			return err
		}
	}
	if s.rollback {
		return errTortureRollback
	}
	for _, sec := range secs {
		if err := sec.End(ctx); err != nil {
			return err
		}
	}
	return nil
}

// probeUpgrade takes key, which the transaction in ctx holds shared,
// exclusively: refused with ErrUpgrade. It returns an error only when the
// acquisition was granted (the transaction would hold a shared key
// exclusively, beside other shared holders) or failed otherwise because
// the holder's session is gone.
func (w *sharedWorker) probeUpgrade(ctx context.Context, key dblock.Key) error {
	ran := false
	err := w.l.Do(ctx, key, func(context.Context, *gorm.DB) error { ran = true; return nil })
	switch {
	case errors.Is(err, dblock.ErrUpgrade) && !ran:
		w.tally.mu.Lock()
		w.tally.upgrades++
		w.tally.mu.Unlock()
		return nil
	case err == nil || ran:
		w.tally.mu.Lock()
		w.tally.unexpected = append(w.tally.unexpected, fmt.Sprintf("an exclusive Do of %s inside a shared holder ran (err %v)", key, err))
		w.tally.mu.Unlock()
		return errors.New("torture: upgrade granted")
	}
	return fmt.Errorf("the upgrade probe: %w", err)
}
