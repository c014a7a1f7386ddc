package dblock_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestPermitsCount: n holders of a key's semaphore at once, and the next
// one fails without waiting (TryLock) or waits until one leaves.
func TestPermitsCount(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:count")
	const n = 3
	var held []*dblock.Lock
	for i := range n {
		p, err := l.TryLock(ctx, key, dblock.Permits(n))
		if err != nil {
			t.Fatalf("permit %d of %d: %v", i+1, n, err)
		}
		held = append(held, p)
	}
	_, err := l.TryLock(ctx, key, dblock.Permits(n))
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("permit %d of %d = %v, want ErrNotAcquired", n+1, n, err)
	}
	t.Logf("TryLock with every permit held: %v", err)
	err = l.Do(ctx, key, fnMustNotRun(t), dblock.Permits(n), dblock.WaitTimeout(100*time.Millisecond))
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Do with every permit held, WaitTimeout = %v, want ErrNotAcquired", err)
	}
	// The key's lock is apart from its semaphore.
	lk, err := l.TryLock(ctx, key)
	if err != nil {
		t.Fatalf("the key's lock beside its permits: %v", err)
	}
	_ = lk.Rollback()

	granted := make(chan error, 1)
	go func() {
		granted <- l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(n))
	}()
	waitingStatement(t, e.db, schema.PermitTable(e.table), "FOR UPDATE")
	select {
	case err := <-granted:
		t.Fatalf("a waiter got a permit while all %d were held: %v", n, err)
	default:
	}
	if err := held[1].Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-granted; err != nil {
		t.Fatalf("waiter after a release: %v", err)
	}
	for _, p := range held {
		_ = p.Rollback()
	}
}

// TestPermitsMismatch: the first user's n is the key's; another n fails
// with ErrPermits, and a new Locker (no cache) reads the key's n.
func TestPermitsMismatch(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:mismatch")
	if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(2)); err != nil {
		t.Fatal(err)
	}
	err := l.Do(ctx, key, fnMustNotRun(t), dblock.Permits(5))
	if !errors.Is(err, dblock.ErrPermits) {
		t.Fatalf("Permits(5) of a 2-permit key = %v, want ErrPermits", err)
	}
	t.Logf("%v", err)
	other := e.locker(t)
	defer other.Close()
	if _, err := other.TryLock(ctx, key, dblock.Permits(1)); !errors.Is(err, dblock.ErrPermits) {
		t.Fatalf("another Locker, Permits(1) of a 2-permit key = %v, want ErrPermits", err)
	}
	for _, bad := range []int{0, -1, dblock.MaxPermits + 1} {
		if err := l.Do(ctx, key, fnMustNotRun(t), dblock.Permits(bad)); err == nil {
			t.Errorf("Permits(%d) accepted", bad)
		}
	}
}

// TestPermitsRaceToCreate: callers that race to create a key's semaphore
// with different n agree on one n: those that asked for it succeed, the
// others get ErrPermits, and never more holders than that n.
func TestPermitsRaceToCreate(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:race")
	const callers = 8
	var wg sync.WaitGroup
	var inside, most atomic.Int32
	errs := make([]error, callers)
	lockers := make([]*dblock.Locker, callers)
	for i := range lockers {
		lockers[i] = e.locker(t)
		defer lockers[i].Close()
	}
	start := make(chan struct{})
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = lockers[i].Do(ctx, key, func(context.Context, *gorm.DB) error {
				n := inside.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(20 * time.Millisecond)
				inside.Add(-1)
				return nil
			}, dblock.Permits(1+i%2))
		}()
	}
	close(start)
	wg.Wait()
	var ok, refused int
	var okN int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
			if okN != 0 && okN != 1+i%2 {
				t.Errorf("callers with Permits(%d) and Permits(%d) both succeeded", okN, 1+i%2)
			}
			okN = 1 + i%2
		case errors.Is(err, dblock.ErrPermits):
			refused++
		default:
			t.Errorf("caller %d: %v", i, err)
		}
	}
	t.Logf("the key's n: %d; %d calls ran, %d refused, at most %d inside at once", okN, ok, refused, most.Load())
	if ok != callers/2 || refused != callers/2 {
		t.Errorf("%d ran and %d were refused, want %d each", ok, refused, callers/2)
	}
	if int(most.Load()) > okN {
		t.Errorf("%d holders at once with %d permits", most.Load(), okN)
	}
}

// TestPermitsReentrant: a permit held by the transaction is held again at
// once by a nested call; the key's lock inside a permit is taken apart.
func TestPermitsReentrant(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:reenter")
	err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(1)); err != nil {
			return err
		}
		if err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
			return err
		}
		if err := heldByOther(l, key); err != nil {
			t.Error(err)
		}
		return nil
	}, dblock.Permits(1))
	if err != nil {
		t.Fatal(err)
	}
}

// TestPermitsDeadHolder: a holder whose connection dies gives its permit
// back to a waiter at once.
func TestPermitsDeadHolder(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:dead")
	p, err := l.TryLock(ctx, key, dblock.Permits(1))
	if err != nil {
		t.Fatal(err)
	}
	var conn int64
	if err := p.Tx().Raw("SELECT CONNECTION_ID()").Row().Scan(&conn); err != nil {
		t.Fatal(err)
	}
	granted := make(chan time.Time, 1)
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- l.Do(ctx, key, func(context.Context, *gorm.DB) error {
			granted <- time.Now()
			return nil
		}, dblock.Permits(1))
	}()
	waitingStatement(t, e.db, schema.PermitTable(e.table), "FOR UPDATE")
	killed := time.Now()
	killConnection(t, e.db, conn)
	if err := <-waitErr; err != nil {
		t.Fatalf("waiter after the holder's connection was killed: %v", err)
	}
	t.Logf("permit granted %v after the holder's connection was killed", (<-granted).Sub(killed))
	if err := p.Commit(); !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("the killed holder's Commit = %v, want ErrLockLost", err)
	}
}

// TestPermitsHandOff: with every permit held and a waiter queued on each,
// every release is taken by a waiter, and the time from a release to the
// next grant is logged (the waits are the server's, not polls).
func TestPermitsHandOff(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:handoff")
	const n, rounds = 3, 30
	release := make(chan time.Time, rounds)
	var lags []time.Duration
	var mu sync.Mutex
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for w := range n + 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < rounds; i += n + 2 {
				err := l.Do(ctx, key, func(context.Context, *gorm.DB) error {
					select {
					case r := <-release:
						mu.Lock()
						lags = append(lags, time.Since(r))
						mu.Unlock()
					default:
					}
					if c := inside.Add(1); c > most.Load() {
						most.Store(c)
					}
					time.Sleep(5 * time.Millisecond)
					inside.Add(-1)
					release <- time.Now()
					return nil
				}, dblock.Permits(n))
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	if len(lags) == 0 {
		t.Fatal("no hand-off measured")
	}
	t.Logf("%d hand-offs: median %v, max %v; at most %d inside at once", len(lags), lags[len(lags)/2], lags[len(lags)-1], most.Load())
	if most.Load() > n {
		t.Errorf("%d holders at once with %d permits", most.Load(), n)
	}
}

// TestPermitsLockTxBesideFencedLock: permits taken in transactions of the
// caller's (whose stale-snapshot check bumps a counter) do not wait for a
// holder of the key's lock with a fencing token (which holds the key's
// counter): the semaphore's check counts on a counter of its own.
func TestPermitsLockTxBesideFencedLock(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("permits:locktx")
	fenced, err := l.TryLock(ctx, key, dblock.Fencing())
	if err != nil {
		t.Fatal(err)
	}
	defer fenced.Rollback()
	var txs []*gorm.DB
	for i := range 2 {
		tx := e.db.WithContext(ctx).Begin()
		defer tx.Rollback()
		if err := l.LockTx(ctx, tx, key, dblock.Permits(2), dblock.NoWait()); err != nil {
			t.Fatalf("LockTx permit %d beside the fenced lock: %v", i+1, err)
		}
		txs = append(txs, tx)
	}
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, key, dblock.Permits(2), dblock.NoWait()); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("a third permit of two = %v, want ErrNotAcquired", err)
	}
}
