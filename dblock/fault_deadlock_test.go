package dblock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// crossUpdate runs two Do calls (on distinct lock keys, so that the locks
// do not serialise them) whose fns update rows r1 and r2 of a business
// table in opposite orders, meeting at a barrier after their first update:
// a deadlock the server breaks by rolling one back. Only the first attempt
// of each waits at the barrier (a retry runs straight through). It returns
// the two Do results and how many times each fn ran.
func crossUpdate(t *testing.T, l *dblock.Locker, table string, opts ...dblock.LockOption) (errs [2]error, runs [2]int32) {
	t.Helper()
	ctx := ctxT(t)
	var barrier sync.WaitGroup
	barrier.Add(2)
	var attempts [2]atomic.Int32
	var wg sync.WaitGroup
	for i := range 2 {
		first, second := "r1", "r2"
		if i == 1 {
			first, second = second, first
		}
		wg.Go(func() {
			key := dblock.Resource("deadlock:" + first)
			errs[i] = l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
				n := attempts[i].Add(1)
				if err := tx.Exec("UPDATE `"+table+"` SET v = v + 1 WHERE k = ?", first).Error; err != nil {
					if n == 1 {
						barrier.Done()
					}
					return err
				}
				if n == 1 {
					barrier.Done()
					barrier.Wait()
				}
				return tx.Exec("UPDATE `"+table+"` SET v = v + 1 WHERE k = ?", second).Error
			}, opts...)
		})
	}
	wg.Wait()
	return errs, [2]int32{attempts[0].Load(), attempts[1].Load()}
}

// TestFaultDeadlock: two Do calls updating two business rows in opposite
// orders deadlock. Without Retry one of them fails with ErrDeadlock (its
// writes rolled back, the other's committed); with Retry(5)
// the victim runs again and both succeed.
func TestFaultDeadlock(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	reset := func() {
		t.Helper()
		for _, k := range []string{"r1", "r2"} {
			if err := put(e.db, kv, k, 0); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("without Retry", func(t *testing.T) {
		reset()
		errs, runs := crossUpdate(t, l, kv)
		var victims, ok int
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, dblock.ErrDeadlock):
				victims++
				if n := mysqlNumber(t, err); n != 1213 {
					t.Errorf("Do %d: server error %d, want 1213", i, n)
				}
			default:
				t.Errorf("Do %d: %v, want nil or ErrDeadlock", i, err)
			}
		}
		if victims != 1 || ok != 1 {
			t.Fatalf("results %v (fn runs %v): want exactly one ErrDeadlock and one success", errs, runs)
		}
		// The victim's first update was rolled back with it.
		if r1, r2 := get(t, e.db, kv, "r1"), get(t, e.db, kv, "r2"); r1 != 1 || r2 != 1 {
			t.Errorf("r1=%d r2=%d after one committed cross update, want 1 and 1", r1, r2)
		}
		t.Logf("without Retry: %v (fn runs %v)", errs, runs)
	})

	t.Run("with Retry", func(t *testing.T) {
		reset()
		errs, runs := crossUpdate(t, l, kv, dblock.Retry(5))
		for i, err := range errs {
			if err != nil {
				t.Errorf("Do %d with Retry: %v", i, err)
			}
		}
		if runs[0]+runs[1] < 3 {
			t.Errorf("fn runs %v: want the victim to have run again", runs)
		}
		if r1, r2 := get(t, e.db, kv, "r1"), get(t, e.db, kv, "r2"); r1 != 2 || r2 != 2 {
			t.Errorf("r1=%d r2=%d after two committed cross updates, want 2 and 2", r1, r2)
		}
		t.Logf("with Retry: both succeeded, fn runs %v", runs)
	})
}

// TestFaultDoMultiNoDeadlock: DoMulti over the same two keys listed in
// opposite orders, from 8 goroutines, 200 calls in all, each fn updating
// the two business rows in the order the caller listed them: the keys are
// taken in one canonical order, so no call ever deadlocks.
func TestFaultDoMultiNoDeadlock(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	for _, k := range []string{"a", "b"} {
		if err := put(e.db, kv, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	ctx := ctxT(t)
	const goroutines, calls = 8, 200
	var next, deadlocks, failed atomic.Int32
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > calls {
					return
				}
				names := []string{"a", "b"}
				if i%2 == 0 {
					names = []string{"b", "a"}
				}
				keys := []dblock.Key{dblock.Resource("multi:" + names[0]), dblock.Resource("multi:" + names[1])}
				err := l.DoMulti(ctx, keys, func(ctx context.Context, tx *gorm.DB) error {
					for _, n := range names {
						if err := tx.Exec("UPDATE `"+kv+"` SET v = v + 1 WHERE k = ?", n).Error; err != nil {
							return err
						}
					}
					return nil
				})
				switch {
				case errors.Is(err, dblock.ErrDeadlock):
					deadlocks.Add(1)
				case err != nil:
					failed.Add(1)
					t.Errorf("DoMulti %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d DoMulti calls with keys in opposite orders from %d goroutines: %d deadlocks, %d other errors",
		calls, goroutines, deadlocks.Load(), failed.Load())
	if deadlocks.Load() != 0 {
		t.Errorf("%d ErrDeadlock over %d DoMulti calls, want none", deadlocks.Load(), calls)
	}
	if a, b := get(t, e.db, kv, "a"), get(t, e.db, kv, "b"); a != calls-int64(deadlocks.Load()+failed.Load()) || b != a {
		t.Errorf("a=%d b=%d, want %d each", a, b, calls)
	}
}
