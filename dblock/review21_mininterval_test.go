package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// errReview21Inner is what a nested gorm Transaction returns to roll its
// savepoint back.
var errReview21Inner = errors.New("review21: inner step failed")

// review21Again calls Do with MinInterval(1h) right after a committed
// transaction that ran the job: a run recorded and committed makes it
// ErrTooSoon.
func review21Again(t *testing.T, l *dblock.Locker, key dblock.Key) error {
	t.Helper()
	return l.Do(ctxT(t), key, func(context.Context, *gorm.DB) error { return nil }, dblock.MinInterval(time.Hour))
}

// TestReview21MinIntervalSavepointRollback: a
// MinInterval run recorded inside a savepoint that rolls back (gorm's
// nested Transaction returning an error) stays marked as recorded in the
// transaction's scope (setRun), while ROLLBACK TO SAVEPOINT undid the
// upsert and kept the row lock. A later call with MinInterval in the same
// transaction is "part of the run" and not judged: the job runs and
// commits without any run recorded, so another replica runs it again at
// once, within the interval.
//
// Expected: after the commit, the run is recorded (the second call is
// judged again, or the first one's mark does not survive the rollback),
// and the next call within the hour gets ErrTooSoon.
func TestReview21MinIntervalSavepointRollback(t *testing.T) {
	e, l := setupLocker(t)
	hour := dblock.MinInterval(time.Hour)

	t.Run("LockTx", func(t *testing.T) {
		ctx := ctxT(t)
		key := dblock.Resource("review21-sp-locktx")
		var inner, second error
		ran := 0
		err := e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			tctx := dblock.WithTx(ctx, tx)
			_ = tx.Transaction(func(sp *gorm.DB) error {
				inner = l.LockTx(tctx, sp, key, hour)
				return errReview21Inner // the savepoint rolls back, the lock stays
			})
			second = l.Do(tctx, key, func(context.Context, *gorm.DB) error { ran++; return nil }, hour)
			return nil
		})
		if err != nil || inner != nil || second != nil {
			t.Fatalf("transaction %v; LockTx in the savepoint %v; Do after it %v", err, inner, second)
		}
		again := review21Again(t, l, key)
		t.Logf("job ran %d time(s) in the committed transaction; Do with MinInterval(1h) right after: %v", ran, again)
		if ran == 1 && !errors.Is(again, dblock.ErrTooSoon) {
			t.Errorf("the job ran and committed, but no run was recorded: the next call within MinInterval(1h) returned %v, want ErrTooSoon", again)
		}
	})

	t.Run("NestedDo", func(t *testing.T) {
		ctx := ctxT(t)
		key := dblock.Resource("review21-sp-do")
		var inner, second error
		ran := 0
		err := l.Do(ctx, dblock.Resource("review21-sp-batch"), func(ctx context.Context, tx *gorm.DB) error {
			_ = tx.Transaction(func(*gorm.DB) error {
				inner = l.Do(ctx, key, func(context.Context, *gorm.DB) error { return errReview21Inner }, hour)
				return errReview21Inner
			})
			second = l.Do(ctx, key, func(context.Context, *gorm.DB) error { ran++; return nil }, hour)
			return nil
		})
		if err != nil || !errors.Is(inner, errReview21Inner) || second != nil {
			t.Fatalf("outer Do %v; Do in the savepoint %v; Do after it %v", err, inner, second)
		}
		again := review21Again(t, l, key)
		t.Logf("job ran %d time(s) in the committed transaction; Do with MinInterval(1h) right after: %v", ran, again)
		if ran == 1 && !errors.Is(again, dblock.ErrTooSoon) {
			t.Errorf("the job ran and committed, but no run was recorded: the next call within MinInterval(1h) returned %v, want ErrTooSoon", again)
		}
	})
}

// TestReview21MinIntervalOncePerTransaction checks (HELD) the paths that
// must judge a run exactly once: LockTx then Do under WithTx, a Lock
// handle then Do on its Context, DoMulti of one key listed twice, and
// Retry after a deadlock reported by fn (the first attempt's run rolls
// back, so the second runs). Each job must run once and leave one
// committed run: the next call within the hour gets ErrTooSoon.
func TestReview21MinIntervalOncePerTransaction(t *testing.T) {
	e, l := setupLocker(t)
	hour := dblock.MinInterval(time.Hour)
	for _, c := range []struct {
		name string
		run  func(ctx context.Context, key dblock.Key, job func(context.Context, *gorm.DB) error) error
	}{
		{"LockTxThenDo", func(ctx context.Context, key dblock.Key, job func(context.Context, *gorm.DB) error) error {
			return e.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				if err := l.LockTx(ctx, tx, key, hour); err != nil {
					return err
				}
				return l.Do(dblock.WithTx(ctx, tx), key, job, hour)
			})
		}},
		{"LockThenDo", func(ctx context.Context, key dblock.Key, job func(context.Context, *gorm.DB) error) error {
			lk, err := l.Lock(ctx, key, hour)
			if err != nil {
				return err
			}
			if err := l.Do(lk.Context(ctx), key, job, hour); err != nil {
				_ = lk.Rollback()
				return err
			}
			return lk.Commit()
		}},
		{"DoMultiSameKey", func(ctx context.Context, key dblock.Key, job func(context.Context, *gorm.DB) error) error {
			return l.DoMulti(ctx, []dblock.Key{key, key}, job, hour)
		}},
		{"RetryAfterDeadlock", func(ctx context.Context, key dblock.Key, job func(context.Context, *gorm.DB) error) error {
			first := true
			return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
				if first {
					first = false
					return dblock.ErrDeadlock
				}
				return job(ctx, tx)
			}, hour, dblock.Retry(3))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxT(t)
			key := dblock.Resource("review21-once-" + c.name)
			ran := 0
			err := c.run(ctx, key, func(context.Context, *gorm.DB) error { ran++; return nil })
			again := review21Again(t, l, key)
			t.Logf("%s: %v, job ran %d time(s); next call within the hour: %v", c.name, err, ran, again)
			if err != nil || ran != 1 {
				t.Errorf("%s: %v, job ran %d times, want nil and once", c.name, err, ran)
			}
			if !errors.Is(again, dblock.ErrTooSoon) {
				t.Errorf("%s: next call within the hour: %v, want ErrTooSoon", c.name, again)
			}
		})
	}
}
