package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// reviewHookCtx is a context that cancels itself at its n-th use (a call
// of Done, Err or Value, by the library, database/sql, the driver or gorm):
// a sweep over n cancels an acquisition at every step it consults its
// context.
type reviewHookCtx struct {
	context.Context
	cancel context.CancelFunc
	at     int64
	calls  atomic.Int64
}

func newReviewHookCtx(parent context.Context, at int64) *reviewHookCtx {
	ctx, cancel := context.WithCancel(parent)
	return &reviewHookCtx{Context: ctx, cancel: cancel, at: at}
}

func (c *reviewHookCtx) tick() {
	if c.calls.Add(1) == c.at {
		c.cancel()
	}
}

func (c *reviewHookCtx) Done() <-chan struct{} { c.tick(); return c.Context.Done() }
func (c *reviewHookCtx) Err() error            { c.tick(); return c.Context.Err() }
func (c *reviewHookCtx) Value(k any) any       { c.tick(); return c.Context.Value(k) }

// reviewRMW is fn's work: read the counter, record the value read under
// marker, write the counter plus one (computed in Go). A committed run
// shows as its marker holding the value the counter had before it.
func reviewRMW(tx *gorm.DB, kv, marker string) error {
	var v int64
	if err := tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'ctr'").Row().Scan(&v); err != nil {
		return err
	}
	if err := tx.Exec("INSERT INTO `"+kv+"` (k, v) VALUES (?, ?)", marker, v).Error; err != nil {
		return err
	}
	return tx.Exec("UPDATE `"+kv+"` SET v = ? WHERE k = 'ctr'", v+1).Error
}

// TestReviewCancelSweep cancels every public path at each step and checks
// the outcome against the table: nil means fn's read-modify-write
// committed once, from the value the previous committed run left; an
// error that is not ErrCommitUnknown means nothing of it is there; no call
// blocks, no pool connection stays in use, and the key is free after.
func TestReviewCancelSweep(t *testing.T) {
	reviewSweep(t, func(at int64, ctx context.Context) (*reviewHookCtx, bool) {
		return newReviewHookCtx(ctx, at), false
	})
}

// TestReviewCancelTimedSweep cancels each path after a delay swept across
// a run's duration (measured first), for the steps that consult only
// contexts derived from the caller's (which the counting sweep does not
// reach): 200 runs per path.
func TestReviewCancelTimedSweep(t *testing.T) {
	reviewSweep(t, nil)
}

// reviewSweep runs the sweep: with hook, run number at of each path gets
// the context hook returns (done says the sweep of that path is over);
// without, runs are cancelled after a delay.
func reviewSweep(t *testing.T, hook func(at int64, ctx context.Context) (*reviewHookCtx, bool)) {
	e, l := setupLocker(t)
	other := e.locker(t)
	defer other.Close()
	kv := e.kvTable(t)
	if err := put(e.db, kv, "ctr", 0); err != nil {
		t.Fatal(err)
	}
	key, key2 := dblock.Resource("sweep"), dblock.Resource("sweep2")
	heldCheck := func(fctx context.Context, k dblock.Key) error {
		before := fctx.Err()
		err := heldByOther(other, k)
		if err != nil && before == nil && fctx.Err() == nil {
			return fmt.Errorf("fn ran without %s and its context live: %w", k, err)
		}
		return nil
	}
	ops := []struct {
		name string
		run  func(ctx context.Context, marker string) (violation, err error)
	}{
		{"Do", func(ctx context.Context, marker string) (v, err error) {
			err = l.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
				v = heldCheck(fctx, key)
				return reviewRMW(tx, kv, marker)
			})
			return v, err
		}},
		{"DoFencing", func(ctx context.Context, marker string) (v, err error) {
			err = l.Do(ctx, key, func(fctx context.Context, tx *gorm.DB) error {
				v = heldCheck(fctx, key)
				return reviewRMW(tx, kv, marker)
			}, dblock.Fencing())
			return v, err
		}},
		{"DoMulti", func(ctx context.Context, marker string) (v, err error) {
			err = l.DoMulti(ctx, []dblock.Key{key2, key}, func(fctx context.Context, tx *gorm.DB) error {
				v = heldCheck(fctx, key)
				return reviewRMW(tx, kv, marker)
			})
			return v, err
		}},
		{"NestedDo", func(ctx context.Context, marker string) (v, err error) {
			err = l.Do(ctx, key2, func(fctx context.Context, _ *gorm.DB) error {
				return l.Do(fctx, key, func(fctx context.Context, tx *gorm.DB) error {
					v = heldCheck(fctx, key)
					return reviewRMW(tx, kv, marker)
				})
			})
			return v, err
		}},
		{"Lock", func(ctx context.Context, marker string) (v, err error) {
			lk, err := l.Lock(ctx, key)
			if err != nil {
				return nil, err
			}
			defer lk.Rollback()
			v = heldCheck(lk.Context(ctx), key)
			if err := reviewRMW(lk.Tx(), kv, marker); err != nil {
				return v, err
			}
			return v, lk.Commit()
		}},
		{"LockTx", func(ctx context.Context, marker string) (v, err error) {
			tx := e.db.WithContext(ctx).Begin()
			if tx.Error != nil {
				return nil, tx.Error
			}
			defer tx.Rollback()
			if err := l.LockTx(ctx, tx, key); err != nil {
				return nil, err
			}
			v = heldCheck(ctx, key)
			if err := reviewRMW(tx, kv, marker); err != nil {
				return v, err
			}
			return v, tx.Commit().Error
		}},
	}
	var committed int64
	iterations := 0
	for _, op := range ops {
		var typical time.Duration
		if hook == nil {
			start := time.Now()
			for i := range 5 {
				if _, err := op.run(ctxT(t), fmt.Sprintf("%s-warm%d", op.name, i)); err != nil {
					t.Fatalf("%s: %v", op.name, err)
				}
			}
			committed += 5
			typical = time.Since(start) / 5
			t.Logf("%s: %v a run", op.name, typical)
		}
		for at := int64(1); ; at++ {
			iterations++
			marker := fmt.Sprintf("%s-%d", op.name, at)
			var hctx *reviewHookCtx
			if hook != nil {
				hctx, _ = hook(at, ctxT(t))
			} else {
				hctx = newReviewHookCtx(ctxT(t), -1)
				delay := typical * time.Duration(at) / 150
				time.AfterFunc(delay, hctx.cancel)
			}
			type outcome struct{ v, err error }
			done := make(chan outcome, 1)
			go func() {
				v, err := op.run(hctx, marker)
				done <- outcome{v, err}
			}()
			var o outcome
			select {
			case o = <-done:
			case <-time.After(opTimeout):
				t.Fatalf("%s cancelled at use %d: still blocked after %v", op.name, at, opTimeout)
			}
			reached := hctx.calls.Load() >= at
			if hook == nil {
				reached = at < 200
			}
			hctx.cancel()
			if o.v != nil {
				t.Errorf("%s cancelled at use %d: %v", op.name, at, o.v)
			}
			mv := get(t, e.db, kv, marker)
			switch {
			case o.err == nil && mv != committed:
				t.Errorf("%s cancelled at use %d returned nil, but its marker = %d, want %d (the counter before it)", op.name, at, mv, committed)
			case o.err != nil && !errors.Is(o.err, dblock.ErrCommitUnknown) && mv != -1:
				t.Errorf("%s cancelled at use %d = %v, but its write is there (marker %d)", op.name, at, o.err, mv)
			}
			if mv != -1 {
				committed++
			}
			if c := get(t, e.db, kv, "ctr"); c != committed {
				t.Fatalf("after %s cancelled at use %d: counter %d, %d runs committed: a lost or doubled update", op.name, at, c, committed)
			}
			waitFor(t, fmt.Sprintf("the pool to be idle after %s cancelled at use %d", op.name, at), func() bool { return e.sqlDB.Stats().InUse == 0 })
			waitFor(t, fmt.Sprintf("%s to be free after %s cancelled at use %d", key, op.name, at), func() bool { return freeForOther(other, key) == nil })
			if !reached {
				if hook != nil {
					t.Logf("%s: %d uses of the context in a whole run; cancelled at each of them", op.name, at-1)
				}
				break
			}
		}
	}
	t.Logf("%d runs, %d committed", iterations, committed)
}
