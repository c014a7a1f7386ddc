package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// setHierarchy switches the test table's hierarchy setting.
func (e env) setHierarchy(t *testing.T, on bool) {
	t.Helper()
	if err := migrations.SetHierarchy(ctxT(t), e.sqlDB, on, migrations.Table(e.table)); err != nil {
		t.Fatalf("SetHierarchy(%v): %v", on, err)
	}
}

// tryHeld reports, as an error, a key that another transaction of l can
// take (mode opts), or that fails otherwise than ErrNotAcquired.
func tryHeld(l *dblock.Locker, key dblock.Key, opts ...dblock.LockOption) error {
	k, err := l.TryLock(context.Background(), key, opts...)
	switch {
	case err == nil:
		_ = k.Rollback()
		return fmt.Errorf("TryLock(%s) succeeded: the hierarchy does not exclude it", key)
	case !errors.Is(err, dblock.ErrNotAcquired):
		return fmt.Errorf("TryLock(%s) = %v, want ErrNotAcquired", key, err)
	}
	return nil
}

// TestHierarchyExclusion: with the hierarchy on, a resource's lock
// excludes its composite keys and the global key, a composite holder
// excludes the resource taken exclusively (not shared), and the global
// key taken exclusively waits for every holder, then excludes all.
func TestHierarchyExclusion(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	r, u := dblock.Resource("h:r"), dblock.User("h:u")
	ru := dblock.Key{Resource: "h:r", User: "h:u"}

	res := holdKey(t, ctx, l, r)
	for _, k := range []dblock.Key{ru, dblock.Global()} {
		if err := tryHeld(l, k); err != nil {
			t.Error(err)
		}
	}
	assertFree(t, l, u)
	assertFree(t, l, dblock.Resource("h:other"))
	_ = res.Rollback()

	comp := holdKey(t, ctx, l, ru)
	for _, k := range []dblock.Key{r, u, dblock.Global()} {
		if err := tryHeld(l, k); err != nil {
			t.Error(err)
		}
	}
	if k, err := l.TryLock(ctx, r, dblock.Shared()); err != nil {
		t.Errorf("the resource shared beside a holder of a key it contains: %v", err)
	} else {
		_ = k.Rollback()
	}
	_ = comp.Rollback()

	// The global key waits for every holder, then excludes all.
	a := holdKey(t, ctx, l, dblock.Resource("h:a"))
	granted := make(chan struct{})
	globalDone := make(chan error, 1)
	release := make(chan struct{})
	go func() {
		globalDone <- l.Do(ctx, dblock.Global(), func(context.Context, *gorm.DB) error {
			close(granted)
			<-release
			return nil
		})
	}()
	waitingStatement(t, e.db, e.table, "FOR UPDATE")
	select {
	case <-granted:
		t.Fatal("the global key was granted while a resource was held")
	default:
	}
	_ = a.Rollback()
	<-granted
	for _, k := range []dblock.Key{r, u, ru, dblock.Method("h:m")} {
		if err := tryHeld(l, k, dblock.Shared()); err != nil {
			t.Error(err)
		}
	}
	close(release)
	if err := <-globalDone; err != nil {
		t.Fatal(err)
	}
}

// TestHierarchySwitch: a Locker that assumed the hierarchy off learns the
// switch from the rows it locks: in its own transaction it starts over
// under the new setting (its holder then excludes the global key); in a
// transaction of the caller's it fails with ErrHierarchyChanged. The
// switch waits for a holder under the old setting.
func TestHierarchySwitch(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	r := dblock.Resource("hs:r")
	old := e.locker(t)
	defer old.Close()
	// old reads the setting (off) at its first lock in a caller's
	// transaction, and keeps it.
	tx0 := e.db.WithContext(ctx).Begin()
	if err := old.LockTx(ctx, tx0, dblock.Resource("hs:first")); err != nil {
		t.Fatal(err)
	}
	tx0.Rollback()
	// A holder under the old setting: the switch waits for it.
	before, err := l.TryLock(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	var mu sync.Mutex
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	switched := make(chan error, 1)
	go func() {
		err := migrations.SetHierarchy(ctx, e.sqlDB, true, migrations.Table(e.table))
		note("switched")
		switched <- err
	}()
	waitingStatement(t, e.db, e.table, "ALTER COLUMN hierarchy")
	note("old holder commits")
	if err := before.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-switched; err != nil {
		t.Fatal(err)
	}
	t.Logf("order: %v", order)
	if order[0] != "old holder commits" {
		t.Fatalf("order %v: the switch finished while a holder under the old setting held its key", order)
	}

	// The Locker used before the switch starts over under the hierarchy.
	h, err := l.TryLock(ctx, r)
	if err != nil {
		t.Fatalf("TryLock after the switch: %v", err)
	}
	if err := tryHeld(l, dblock.Global()); err != nil {
		t.Errorf("after the switch: %v", err)
	}
	_ = h.Rollback()

	// A Locker that has not locked since the switch: in a caller's
	// transaction, it cannot start over.
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err = old.LockTx(ctx, tx, r)
	if !errors.Is(err, dblock.ErrHierarchyChanged) {
		t.Fatalf("LockTx of a Locker that assumed the old setting = %v, want ErrHierarchyChanged", err)
	}
	tx.Rollback()
	// Then it knows.
	tx2 := e.db.WithContext(ctx).Begin()
	defer tx2.Rollback()
	if err := old.LockTx(ctx, tx2, r); err != nil {
		t.Fatalf("LockTx again: %v", err)
	}
	if err := tryHeld(l, dblock.Global()); err != nil {
		t.Errorf("LockTx under the hierarchy: %v", err)
	}
}

// TestHierarchyNoDeadlock: with the hierarchy on, goroutines on separate
// pools take random sets of keys of every granularity, in random modes,
// each set in one call (Do, DoMulti, Lock): no acquisition is ever a
// deadlock victim (every call takes its rows in the one order), and no
// two holders of conflicting keys overlap (checked in process).
func TestHierarchyNoDeadlock(t *testing.T) {
	e, _ := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	universe := []dblock.Key{
		dblock.Global(), dblock.Resource("d:r1"), dblock.Resource("d:r2"), dblock.User("d:u1"), dblock.User("d:u2"),
		{Resource: "d:r1", User: "d:u1"}, {Resource: "d:r2", User: "d:u1"}, {Resource: "d:r1", User: "d:u2"},
		{Resource: "d:r2", Operation: "d:o"}, dblock.Operation("d:o"),
	}
	var active activeSet
	const workers = 6
	runFor := 2 * time.Second
	if testing.Short() {
		runFor = time.Second
	}
	var ops, deadlocks, busy atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		l := e.locker(t)
		defer l.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			end := time.Now().Add(runFor)
			for time.Now().Before(end) && ctx.Err() == nil {
				n := 1 + rng.IntN(3)
				keys := make([]dblock.Key, 0, n)
				var shared []dblock.Key
				for range n {
					k := universe[rng.IntN(len(universe))]
					keys = append(keys, k)
					if rng.IntN(2) == 0 {
						shared = append(shared, k)
					}
				}
				opts := []dblock.LockOption{dblock.WaitTimeout(5 * time.Second)}
				if len(shared) > 0 {
					opts = append(opts, dblock.Shared(shared...))
				}
				err := l.DoMulti(ctx, keys, func(context.Context, *gorm.DB) error {
					id := active.enter(t, keys, shared)
					time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
					active.leave(id)
					return nil
				}, opts...)
				ops.Add(1)
				switch {
				case err == nil:
				case errors.Is(err, dblock.ErrDeadlock):
					deadlocks.Add(1)
					t.Errorf("deadlock victim: %v", err)
				case errors.Is(err, dblock.ErrUpgrade):
					// A key listed twice, once shared: Shared names it, so
					// it is shared. Not expected, but not a deadlock.
					t.Errorf("DoMulti(%v, Shared(%v)): %v", keys, shared, err)
				case errors.Is(err, dblock.ErrNotAcquired):
					busy.Add(1)
				default:
					t.Errorf("DoMulti(%v): %v", keys, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d calls, %d deadlock victims, %d ran out of WaitTimeout, %d overlaps checked", ops.Load(), deadlocks.Load(), busy.Load(), active.checked.Load())
	if active.checked.Load() == 0 {
		t.Fatal("no call ran")
	}
}

// activeSet is the in-process record of the holders of TestHierarchyNoDeadlock:
// each holder's keys with their containers, and a check at each entry
// that no other holder has a conflicting one.
type activeSet struct {
	mu      sync.Mutex
	next    int
	holders map[int]map[dblock.Key]bool // key -> exclusive
	checked atomic.Int64
}

// closure returns keys and the keys containing them, with whether each is
// held exclusively.
func closure(keys, shared []dblock.Key) map[dblock.Key]bool {
	out := map[dblock.Key]bool{}
	isShared := func(k dblock.Key) bool {
		for _, s := range shared {
			if s == k {
				return true
			}
		}
		return false
	}
	for _, k := range keys {
		out[k] = out[k] || !isShared(k)
		if k.Global {
			continue
		}
		if _, ok := out[dblock.Global()]; !ok {
			out[dblock.Global()] = false
		}
		n := 0
		for _, f := range []string{k.Resource, k.Operation, k.Method, k.User} {
			if f != "" {
				n++
			}
		}
		if n < 2 {
			continue
		}
		for _, c := range []dblock.Key{{Resource: k.Resource}, {Operation: k.Operation}, {Method: k.Method}, {User: k.User}} {
			if c.IsZero() {
				continue
			}
			if _, ok := out[c]; !ok {
				out[c] = false
			}
		}
	}
	return out
}

func (a *activeSet) enter(t *testing.T, keys, shared []dblock.Key) int {
	mine := closure(keys, shared)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.holders == nil {
		a.holders = map[int]map[dblock.Key]bool{}
	}
	for _, other := range a.holders {
		for k, x := range mine {
			if ox, ok := other[k]; ok && (x || ox) {
				t.Errorf("two holders of %s at once (exclusive: %v and %v)", k, x, ox)
			}
		}
	}
	a.checked.Add(1)
	a.next++
	a.holders[a.next] = mine
	return a.next
}

func (a *activeSet) leave(id int) {
	a.mu.Lock()
	delete(a.holders, id)
	a.mu.Unlock()
}

// TestHierarchyRefusedLockTxRecordsWhatItTook: under the hierarchy, a
// LockTx in a caller's transaction that takes the keys containing its key
// and then runs out of WaitTimeout on the key keeps those containers
// (InnoDB releases no row lock before the transaction ends): the error
// says so, and the transaction's record has them, so that a later
// exclusive LockTx of one of them is refused as an upgrade instead of
// waiting on its own transaction's lock.
func TestHierarchyRefusedLockTxRecordsWhatItTook(t *testing.T) {
	e, l := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	r := dblock.Resource("hr:r")
	ru := dblock.Key{Resource: "hr:r", User: "hr:u"}
	other := holdKey(t, ctx, l, ru)
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, ru, dblock.WaitTimeout(100*time.Millisecond))
	if !errors.Is(err, dblock.ErrNotAcquired) || !strings.Contains(err.Error(), "keeps what this call took") {
		t.Fatalf("LockTx of a held composite key = %v, want ErrNotAcquired saying what the transaction keeps", err)
	}
	t.Logf("%v", err)
	_ = other.Rollback()
	if err := l.LockTx(ctx, tx, r, dblock.NoWait()); !errors.Is(err, dblock.ErrUpgrade) {
		t.Fatalf("exclusive LockTx of a container the transaction took shared = %v, want ErrUpgrade", err)
	}
	if err := l.LockTx(ctx, tx, r, dblock.Shared(), dblock.NoWait()); err != nil {
		t.Fatalf("shared LockTx of a container the transaction holds shared: %v", err)
	}
}
