package dblock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// TestReview23bSwitchNewRowBesideGlobal (FAILS today): SetHierarchy
// promises that no holder under one setting ever overlaps a holder under
// the other, but a key row created during a switch carries the new
// setting at once (the column's default changes first), and a Locker
// that believes the new setting (one that starts then, or that read the
// default after a mismatch) locks it without waiting for the switch.
// Switching off, the global key taken exclusively under the hierarchy
// (its row still says on) and a new key taken without it are held at
// once: the global key no longer excludes every holder. The window is
// open from the first ALTER until the switch's UPDATE has scanned the
// whole table (a new row goes past its end); here the ALTER of the
// permit table waits for a transaction that read that table (a permit
// holder without the hierarchy touches nothing else), which holds it open.
func TestReview23bSwitchNewRowBesideGlobal(t *testing.T) {
	e, old := setupLocker(t)
	e.setHierarchy(t, true)
	ctx := ctxT(t)
	// old learns the setting (on) from the global key's row.
	if err := old.Do(ctx, dblock.Global(), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}

	// A reader of the permit table holds the switch between its two
	// ALTERs: the lock table's default is off, its rows still say on.
	reader := otherPool(t).WithContext(ctx).Begin()
	defer reader.Rollback()
	var n int
	if err := reader.Raw("SELECT COUNT(*) FROM `" + schema.PermitTable(e.table) + "`").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	switched := make(chan error, 1)
	go func() { switched <- migrations.SetHierarchy(ctx, e.sqlDB, false, migrations.Table(e.table)) }()
	waitingStatement(t, e.db, schema.PermitTable(e.table), "ALTER COLUMN hierarchy")

	// The global key, exclusively, under the hierarchy (its row says on):
	// it excludes every other key.
	global, err := old.TryLock(ctx, dblock.Global())
	if err != nil {
		t.Fatalf("the global key during the switch: %v", err)
	}
	// A Locker that starts now (believing off, as the table's default
	// says) takes a key whose row does not exist yet.
	fresh := e.locker(t)
	defer fresh.Close()
	k, err := fresh.TryLock(ctx, dblock.Resource("h23b:new"))
	switch {
	case err == nil:
		t.Errorf("a new key was granted under the new setting (no hierarchy) while the global key is held exclusively under the old one: " +
			"two holders that the hierarchy says exclude each other ran at once")
		_ = k.Rollback()
	case errors.Is(err, dblock.ErrNotAcquired), errors.Is(err, dblock.ErrHierarchyChanged):
		t.Logf("the new key during the switch: %v", err)
	default:
		t.Errorf("the new key during the switch: %v", err)
	}
	_ = global.Rollback()
	reader.Rollback()
	if err := <-switched; err != nil {
		t.Fatalf("the switch: %v", err)
	}
}

// TestReview23bSwitchWaitsForItsOwnHolder (FAILS today): SetHierarchy's
// ALTER waits for every transaction that has used the lock table, and
// while it waits, every new statement on the table waits behind it. An
// acquisition that runs a statement on the side pool while its
// transaction holds the table then waits for the switch that waits for
// it: a nested Do of a key whose row it has not looked up yet (the row
// step), or one with NoWait that finds its row held (telling a held row
// from a missing one: TestTortureHierarchySwitch met that one, stalled
// for its 20 s context). Nothing moves until the switch's LockTimeout (5
// minutes by default) or the caller's context ends: every acquisition of
// the table stalls meanwhile. The holder must finish, and the switch
// after it.
func TestReview23bSwitchWaitsForItsOwnHolder(t *testing.T) {
	for _, c := range []struct {
		name  string
		inner dblock.Key
		opts  []dblock.LockOption
	}{
		{"nested Do of a new key", dblock.Resource("h23b:new"), nil},
		{"nested Do NoWait of a held key", dblock.Resource("h23b:held"), []dblock.LockOption{dblock.NoWait()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, l := setupLocker(t)
			ctx := ctxT(t)
			var held *dblock.Lock // of c.inner, by another transaction
			if len(c.opts) > 0 {
				other := e.locker(t)
				defer other.Close()
				assertFree(t, l, c.inner) // l knows its row
				held = holdKey(t, ctx, other, c.inner)
			}
			var order []string
			var mu sync.Mutex
			note := func(s string) {
				mu.Lock()
				order = append(order, s)
				mu.Unlock()
			}
			ready, proceed := make(chan struct{}), make(chan struct{})
			outer := make(chan error, 1)
			var finished atomic.Bool
			go func() {
				err := l.Do(ctx, dblock.Resource("h23b:outer"), func(ctx context.Context, _ *gorm.DB) error {
					close(ready)
					<-proceed
					err := l.Do(ctx, c.inner, func(context.Context, *gorm.DB) error { return nil }, c.opts...)
					if errors.Is(err, dblock.ErrNotAcquired) {
						return nil // NoWait on a held key: not acquired is its answer
					}
					return err
				})
				note("the holder finished")
				finished.Store(true)
				outer <- err
			}()
			<-ready
			switched := make(chan error, 1)
			go func() {
				err := migrations.SetHierarchy(ctx, e.sqlDB, true, migrations.Table(e.table), migrations.LockTimeout(5*time.Second))
				note("the switch finished")
				switched <- err
			}()
			waitingStatement(t, e.db, e.table, "ALTER COLUMN hierarchy")
			close(proceed)
			if held != nil {
				// The other holder goes once the nested acquisition has
				// its answer, or waits behind the switch: from then on
				// the switch waits for the holder alone.
				waitFor(t, "the nested acquisition to end or to wait behind the switch", func() bool {
					return finished.Load() || behindSwitch(e)
				})
				t.Logf("the other holder goes; the nested acquisition had ended: %v", finished.Load())
				_ = held.Rollback()
			}
			errOuter, errSwitch := <-outer, <-switched
			t.Logf("order: %v; holder: %v; switch: %v", order, errOuter, errSwitch)
			if errOuter != nil || errSwitch != nil || order[0] != "the holder finished" {
				t.Errorf("the holder (%v) and the switch (%v) waited for each other until the switch's LockTimeout: order %v", errOuter, errSwitch, order)
			}
		})
	}
}

// behindSwitch reports whether a statement on the test's table other than
// the switch's ALTER waits for the table's metadata lock.
func behindSwitch(e env) bool {
	var n int
	err := e.db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND STATE = 'Waiting for table metadata lock' "+
		"AND INFO LIKE ? AND INFO NOT LIKE '%ALTER TABLE%'", "%"+e.table+"%").Row().Scan(&n)
	return err == nil && n > 0
}
