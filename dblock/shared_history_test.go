package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/history"
)

// Shape of TestTortureShared.
const (
	sharedKeys  = 2   // hot keys
	sharedShare = 0.7 // the share of the keys taken shared
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
	m := startModeRun(t, e, e.table+"_shist", sharedTag(e.table))
	// The key rows first, so that the run is about locks, not row creation.
	for i := range sharedKeys {
		assertFree(t, m.lockers[0], tortureKey(i))
	}
	tally := newModeTally()
	// Past stop, the workers go on until every path has committed in
	// every mode (an exclusive TryLock of a key that readers keep busy
	// succeeds rarely), for at most opTimeout more.
	covered := func() bool { return tally.has(sharedCovered...) }
	kills := m.run(m.workers(tally), covered, func(ctx context.Context, w *modeWorker) { sharedWorker{w}.once(ctx) })
	r := m.analyze(t, fmt.Sprintf("on %d keys", sharedKeys), kills, tally)
	peak := slices.Max(slices.Collect(maps.Values(r.Peak)))
	if r.Modes[history.Shared] == 0 || r.Modes[history.Exclusive] == 0 {
		t.Errorf("committed sections by mode %v: want both modes", r.Modes)
	}
	if r.Overlapped == 0 || peak < 2 {
		t.Errorf("no two shared sections overlapped (peak %d): the run proved nothing about shared holders", peak)
	}
	if !covered() {
		t.Errorf("within %v, some path did not commit in some mode, or no upgrade was refused: the run did not cover them", time.Since(m.start))
	}
	tally.check(t, r, kills)
}

// sharedTag marks the hold statements of a test whose lock table is table.
func sharedTag(table string) string { return "txlock-shared:" + table }

// sharedCovered is what TestTortureShared must see: every path committed
// in both modes, DoMulti also with mixed modes, and an upgrade refused.
var sharedCovered = func() []string {
	out := []string{"DoMulti/mixed", sharedUpgrades}
	for _, p := range sharedPaths {
		out = append(out, p+"/shared", p+"/exclusive")
	}
	return out
}()

// sharedUpgrades counts the exclusive acquisitions refused inside a shared
// holder.
const sharedUpgrades = "upgrades refused (ErrUpgrade)"

// sharedWorker is one goroutine of TestTortureShared.
type sharedWorker struct{ *modeWorker }

// sharedStep is one operation of a sharedWorker.
type sharedStep struct {
	path     string
	keys     []dblock.Key
	shared   []bool // per key
	opts     []dblock.LockOption
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
func (w sharedWorker) step() *sharedStep {
	s := &sharedStep{path: sharedPaths[w.rng.IntN(len(sharedPaths))], rollback: w.rng.IntN(20) == 0, probe: w.rng.IntN(8) == 0}
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
	s.opts = append(s.opts, w.waitOpts(s.path)...)
	return s
}

// once runs one random operation and counts its outcome.
func (w sharedWorker) once(parent context.Context) {
	s := w.step()
	s.request = time.Now()
	err := w.op(parent, s.path, s.keys, s.opts, func(ctx context.Context, tx *gorm.DB) error { return w.work(ctx, tx, s) })
	w.tally.add(s.path, s.mode(), len(s.keys), err)
}

// work is the critical section: it records a section per key in the
// history table, holds (up to 3 ms) in a tagged statement that the killer
// finds, may try an upgrade, and ends the sections (or rolls back on
// purpose).
func (w sharedWorker) work(ctx context.Context, tx *gorm.DB, s *sharedStep) error {
	evs := make([]history.Event, len(s.keys))
	for i, k := range s.keys {
		evs[i] = history.Event{Key: k.Resource, Request: s.request}
		if s.shared[i] {
			evs[i].Mode = history.Shared
		}
	}
	secs, err := w.beginSections(ctx, tx, evs)
	if err != nil {
		return err
	}
	if err := w.hold(ctx, tx, 3*time.Millisecond); err != nil {
		return err
	}
	if i := slices.Index(s.shared, true); s.probe && i >= 0 {
		if err := w.probeUpgrade(ctx, s.keys[i]); err != nil {
			return err
		}
	}
	if s.rollback {
		return errTortureRollback
	}
	return endSections(ctx, secs)
}

// probeUpgrade takes key, which the transaction in ctx holds shared,
// exclusively: refused with ErrUpgrade. It returns an error only when the
// acquisition was granted (the transaction would hold a shared key
// exclusively, beside other shared holders) or failed otherwise because
// the holder's session is gone.
func (w sharedWorker) probeUpgrade(ctx context.Context, key dblock.Key) error {
	ran := false
	err := w.l.Do(ctx, key, func(context.Context, *gorm.DB) error { ran = true; return nil })
	switch {
	case errors.Is(err, dblock.ErrUpgrade) && !ran:
		w.tally.count(sharedUpgrades)
		return nil
	case err == nil || ran:
		w.tally.unexpectedf("an exclusive Do of %s inside a shared holder ran (err %v)", key, err)
		return errors.New("torture: upgrade granted")
	}
	return fmt.Errorf("the upgrade probe: %w", err)
}
