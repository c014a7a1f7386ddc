package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// r26hold is one grant in force: a key, its mode, and its worker.
type r26hold struct {
	key    dblock.Key
	shared bool
	who    int
}

// r26contains reports whether key a contains key b under the hierarchy.
func r26contains(a, b dblock.Key) bool {
	if a == b {
		return false
	}
	if a.Global {
		return true
	}
	if b.Global {
		return false
	}
	// A single-field key contains the composite keys that set that field.
	return (a.Resource != "" && a.Resource == b.Resource || a.User != "" && a.User == b.User) && b.Resource != "" && b.User != "" && (a.Resource == "" || a.User == "")
}

// r26conflict reports whether two grants exclude each other: one key, not
// both shared; or, under the hierarchy, a container held exclusively and a
// key it contains (whose holder holds the container shared).
func r26conflict(a, b r26hold, hier bool) bool {
	if a.key == b.key {
		return !(a.shared && b.shared)
	}
	if !hier {
		return false
	}
	if r26contains(a.key, b.key) {
		return !a.shared
	}
	if r26contains(b.key, a.key) {
		return !b.shared
	}
	return false
}

// TestReview26GuardNoWaitMutualExclusion (a passing guard): six workers mix
// TryLock, LockTx with NoWait in a caller's transaction (half of them
// holding another key shared first), Do and DoMulti with NoWait, and
// waiting Do with a short WaitTimeout, exclusive and shared, on keys that
// contain each other (Global, a resource, a user, their composite), with
// the hierarchy off and on. Each grant is checked against the grants in
// force in memory: no two holders that exclude each other ever overlap
// (the zero lock-wait read grants nothing a held row's holder excludes).
func TestReview26GuardNoWaitMutualExclusion(t *testing.T) {
	for _, hier := range []bool{false, true} {
		t.Run(fmt.Sprint("hier=", hier), func(t *testing.T) {
			e, l := setupLocker(t)
			if hier {
				e.setHierarchy(t, true)
			}
			ctx := ctxT(t)
			keys := []dblock.Key{dblock.Resource("s"), {Resource: "s", User: "u"}, dblock.User("u"), dblock.Global(), dblock.Resource("t")}
			var mu sync.Mutex
			var active []r26hold
			var violations []string
			counts := map[string]int{}
			enter := func(h []r26hold) func() {
				mu.Lock()
				defer mu.Unlock()
				for _, x := range h {
					for _, y := range active {
						if y.who != x.who && r26conflict(x, y, hier) {
							violations = append(violations, fmt.Sprintf("%+v with %+v", x, y))
						}
					}
				}
				active = append(active, h...)
				return func() {
					mu.Lock()
					defer mu.Unlock()
					for _, x := range h {
						for i, y := range active {
							if y == x {
								active = append(active[:i], active[i+1:]...)
								break
							}
						}
					}
				}
			}
			note := func(what string, err error) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					counts[what+" ok"]++
				case errors.Is(err, dblock.ErrNotAcquired):
					counts[what+" refused"]++
				case errors.Is(err, dblock.ErrUpgrade):
					counts[what+" upgrade refused"]++ // a container held shared first
				default:
					counts[what+" other"]++
					t.Errorf("%s: %v", what, err)
				}
			}
			end := time.Now().Add(2 * time.Second)
			var wg sync.WaitGroup
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					for time.Now().Before(end) {
						k := keys[rng.IntN(len(keys))]
						shared := rng.IntN(2) == 0
						var opts []dblock.LockOption
						if shared {
							opts = append(opts, dblock.Shared())
						}
						hold := func() { time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond) }
						switch rng.IntN(5) {
						case 0:
							lk, err := l.TryLock(ctx, k, opts...)
							note("TryLock", err)
							if err == nil {
								leave := enter([]r26hold{{k, shared, w}})
								hold()
								leave()
								_ = lk.Rollback()
							}
						case 1:
							tx := e.db.WithContext(ctx).Begin()
							// Half the time, hold another key shared first.
							var pre []r26hold
							if rng.IntN(2) == 0 {
								k0 := keys[rng.IntN(len(keys))]
								if k0 != k {
									if err := l.LockTx(ctx, tx, k0, dblock.Shared(), dblock.WaitTimeout(50*time.Millisecond)); err == nil {
										pre = append(pre, r26hold{k0, true, w})
									}
								}
							}
							err := l.LockTx(ctx, tx, k, append(opts, dblock.NoWait())...)
							note("LockTx", err)
							var leave func()
							if err == nil {
								leave = enter(append(pre, r26hold{k, shared, w}))
							} else if len(pre) > 0 {
								leave = enter(pre)
							}
							hold()
							if leave != nil {
								leave()
							}
							_ = tx.Rollback()
						case 2:
							err := l.Do(ctx, k, func(context.Context, *gorm.DB) error {
								leave := enter([]r26hold{{k, shared, w}})
								hold()
								leave()
								return nil
							}, append(opts, dblock.NoWait())...)
							note("Do", err)
						case 3:
							k2 := keys[rng.IntN(len(keys))]
							if k2 == k {
								continue
							}
							err := l.DoMulti(ctx, []dblock.Key{k, k2}, func(context.Context, *gorm.DB) error {
								leave := enter([]r26hold{{k, shared, w}, {k2, shared, w}})
								hold()
								leave()
								return nil
							}, append(opts, dblock.NoWait())...)
							note("DoMulti", err)
						case 4:
							// A waiter: the NoWait reads meet queued requests.
							err := l.Do(ctx, k, func(context.Context, *gorm.DB) error {
								leave := enter([]r26hold{{k, shared, w}})
								hold()
								leave()
								return nil
							}, append(opts, dblock.WaitTimeout(30*time.Millisecond))...)
							note("Wait", err)
						}
					}
				}()
			}
			wg.Wait()
			t.Logf("counts: %v", counts)
			for i, v := range violations {
				if i > 10 {
					break
				}
				t.Errorf("violation: %s", v)
			}
		})
	}
}
