package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview20MinIntervalNestedIgnored shows (FAILS NOW) that MinInterval
// passed to a Do that joins a transaction already holding the key is
// silently ignored: the job runs every time, however often, with no error
// and nothing written to the run table. The package documents it ("put
// it on the outermost call"), but the option the caller wrote is dropped
// without a word: a job wrapped by a generic "take the key, then run the
// job" helper (an outer Do or a Lock handle's Context without options)
// loses its schedule.
//
// Expected: either the nested call is judged (the key's run is recorded in
// the transaction, as a LockTx of a held key would be) or it is refused
// with an error saying MinInterval must be on the call that takes the key.
func TestReview20MinIntervalNestedIgnored(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("review20-nested")
	hour := dblock.MinInterval(time.Hour)
	ran := 0
	var errs []error
	for range 3 {
		lk, err := l.Lock(ctx, key) // a helper that takes the key, no options
		if err != nil {
			t.Fatal(err)
		}
		err = l.Do(lk.Context(ctx), key, func(context.Context, *gorm.DB) error { ran++; return nil }, hour)
		errs = append(errs, err)
		if cerr := lk.Commit(); cerr != nil {
			t.Fatal(cerr)
		}
	}
	t.Logf("three nested Do with MinInterval(1h) within the hour: job ran %d times; errors %v", ran, errs)
	tooSoon := 0
	for _, err := range errs {
		if errors.Is(err, dblock.ErrTooSoon) {
			tooSoon++
		}
	}
	if ran > 1 && tooSoon == 0 {
		t.Errorf("MinInterval(1h) on a nested Do was silently ignored: the job ran %d times within the hour, no error", ran)
	}
}

// TestReview20MinIntervalTooSoonThenRuns shows (FAILS NOW) that a call
// refused with ErrTooSoon inside a transaction that goes on (a Do nested
// in another key's Do, or LockTx in a caller's transaction) leaves the key
// recorded as held by that transaction (join adds it to the scope before
// recordRun), so the next call for the key in the same transaction is
// "part of the same run" and is not judged: the job runs right after being
// told it is too soon. A loop over jobs inside one outer transaction, or
// a caller retrying, runs a job within its interval.
//
// Expected: a second call in the same transaction is refused with
// ErrTooSoon too (a refused key must not count as held-and-judged; e.g.
// remember the refusal in the scope, or record the key only after
// recordRun succeeds and release nothing).
func TestReview20MinIntervalTooSoonThenRuns(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	hour := dblock.MinInterval(time.Hour)
	job := dblock.Resource("review20-job")
	ran := 0
	if err := l.Do(ctx, job, countRuns(&ran), hour); err != nil || ran != 1 {
		t.Fatalf("first run: ran %d, %v", ran, err)
	}

	t.Run("NestedDo", func(t *testing.T) {
		before := ran
		var errs []error
		err := l.Do(ctx, dblock.Resource("review20-batch"), func(ctx context.Context, _ *gorm.DB) error {
			for range 2 {
				errs = append(errs, l.Do(ctx, job, countRuns(&ran), hour))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("two nested Do of a job run within the hour: job ran %d times; errors %v", ran-before, errs)
		if ran != before {
			t.Errorf("the job ran %d times within its MinInterval(1h) (the second nested call after ErrTooSoon was not judged)", ran-before)
		}
	})

	t.Run("LockTx", func(t *testing.T) {
		before := ran
		var first, second error
		err := e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			first = l.LockTx(ctx, tx, job, hour)
			second = l.Do(dblock.WithTx(ctx, tx), job, countRuns(&ran), hour)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("LockTx: %v; then Do in the same transaction: %v; job ran %d times", first, second, ran-before)
		if !errors.Is(first, dblock.ErrTooSoon) {
			t.Fatalf("LockTx within the hour: %v, want ErrTooSoon", first)
		}
		if ran != before {
			t.Errorf("the job ran within its MinInterval(1h) right after LockTx said ErrTooSoon in the same transaction (Do returned %v)", second)
		}
	})
}
