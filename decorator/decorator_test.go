package decorator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// env is one test's database, lock table, Locker and business table.
type env struct {
	db     *gorm.DB
	locker *dblock.Locker
	biz    string // business table: (name VARCHAR PRIMARY KEY, v BIGINT)
}

func newEnv(t testing.TB) *env {
	t.Helper()
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	locker, err := dblock.New(db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	biz := table + "_biz"
	if err := db.Exec("CREATE TABLE `" + biz + "` (name VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS `" + biz + "`") })
	return &env{db: db, locker: locker, biz: biz}
}

// put writes name=v through the transaction in ctx, if any.
func (e *env) put(ctx context.Context, name string, v int64) error {
	return dblock.DB(ctx, e.db).Exec("INSERT INTO `"+e.biz+"` (name, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)", name, v).Error
}

// get reads name outside any transaction; -1 when missing.
func (e *env) get(t testing.TB, name string) int64 {
	t.Helper()
	var v []int64
	if err := e.db.Raw("SELECT v FROM `"+e.biz+"` WHERE name = ?", name).Scan(&v).Error; err != nil {
		t.Fatal(err)
	}
	if len(v) == 0 {
		return -1
	}
	return v[0]
}

// heldElsewhere reports whether another transaction holds k right now.
func (e *env) heldElsewhere(t testing.TB, k dblock.Key) bool {
	t.Helper()
	lk, err := e.locker.TryLock(context.Background(), k)
	if errors.Is(err, dblock.ErrNotAcquired) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := lk.Rollback(); err != nil {
		t.Fatal(err)
	}
	return false
}

type req struct {
	ID   string
	User string
}

func TestShapesHoldTheKeyAndTheTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	want := dblock.Resource("order:1")
	key := decorator.ResourceKey("order:", func(r req) string { return r.ID })

	check := func(ctx context.Context, k dblock.Key) {
		t.Helper()
		if _, ok := dblock.TxFrom(ctx); !ok {
			t.Error("fn's ctx carries no transaction")
		}
		if !e.heldElsewhere(t, k) {
			t.Errorf("%s is not held during the call", k)
		}
	}

	withResp := decorator.WithLock(e.locker, key, func(ctx context.Context, r req) (string, error) {
		check(ctx, want)
		return "ok " + r.ID, e.put(ctx, "resp", 1)
	})
	got, err := withResp(ctx, req{ID: "1"})
	if err != nil || got != "ok 1" {
		t.Fatalf("WithLock: got %q, %v", got, err)
	}

	withErr := decorator.WithLockErr(e.locker, key, func(ctx context.Context, r req) error {
		check(ctx, want)
		return e.put(ctx, "err", 2)
	})
	if err := withErr(ctx, req{ID: "1"}); err != nil {
		t.Fatalf("WithLockErr: %v", err)
	}

	noReq := decorator.WithLock0(e.locker, decorator.GlobalKey, func(ctx context.Context) error {
		check(ctx, dblock.Global())
		return e.put(ctx, "zero", 3)
	})
	if err := noReq(ctx); err != nil {
		t.Fatalf("WithLock0: %v", err)
	}

	for name, v := range map[string]int64{"resp": 1, "err": 2, "zero": 3} {
		if got := e.get(t, name); got != v {
			t.Errorf("%s = %d after commit, want %d", name, got, v)
		}
	}
	if e.heldElsewhere(t, want) || e.heldElsewhere(t, dblock.Global()) {
		t.Error("a key is still held after the calls returned")
	}
}

var errService = errors.New("service: insufficient funds")

func TestServiceErrorsPassUnchangedAndRollBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fn := decorator.WithLock(e.locker, decorator.MethodKey[req]("Svc.M"), func(ctx context.Context, r req) (int, error) {
		if err := e.put(ctx, "x", 1); err != nil {
			return 0, err
		}
		return 7, errService
	})
	got, err := fn(context.Background(), req{})
	if err != errService { // unchanged: the very value fn returned
		t.Fatalf("err = %v, want errService itself", err)
	}
	if got != 7 {
		t.Errorf("resp = %d, want the 7 fn returned with its error", got)
	}
	if errors.Is(err, dblock.ErrNotAcquired) {
		t.Error("a service error matches ErrNotAcquired")
	}
	if v := e.get(t, "x"); v != -1 {
		t.Errorf("write of a failed call committed (v=%d)", v)
	}
}

func TestLockErrorsAreDblockSentinels(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	k := dblock.Operation("settle")
	holder, err := e.locker.Lock(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()

	called := false
	body := func(context.Context, req) (int, error) { called = true; return 1, nil }

	noWait := decorator.WithLock(e.locker, decorator.OperationKey[req]("settle"), body, dblock.NoWait())
	start := time.Now()
	got, err := noWait(ctx, req{})
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("NoWait on a held key: %v, want ErrNotAcquired", err)
	}
	if got != 0 || called {
		t.Errorf("fn ran (%v) or resp not zero (%d) on a lock error", called, got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("NoWait took %v", d)
	}

	wait := decorator.WithLock(e.locker, decorator.OperationKey[req]("settle"), body, dblock.WaitTimeout(300*time.Millisecond))
	start = time.Now()
	_, err = wait(ctx, req{})
	d := time.Since(start)
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("WaitTimeout on a held key: %v, want ErrNotAcquired", err)
	}
	if d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("WaitTimeout(300ms) gave up after %v", d)
	}
	if called {
		t.Error("fn ran without the lock")
	}

	// Call and CallResult, the proxies' runtime, name the method in errors
	// of the lock, which still match the sentinels.
	err = decorator.Call(ctx, e.locker, "Svc.Settle", k, func(context.Context) error { called = true; return nil }, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) || !strings.HasPrefix(err.Error(), "Svc.Settle: dblock: lock not acquired") {
		t.Errorf("Call on a held key: %v, want \"Svc.Settle: dblock: lock not acquired...\" matching ErrNotAcquired", err)
	}
	n, err := decorator.CallResult(ctx, e.locker, "Svc.Count", k, func(context.Context) (int, error) { called = true; return 1, nil }, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) || !strings.HasPrefix(err.Error(), "Svc.Count: dblock: lock not acquired") || n != 0 {
		t.Errorf("CallResult on a held key: %d, %v, want 0 and \"Svc.Count: dblock: lock not acquired...\"", n, err)
	}
	if called {
		t.Error("fn ran without the lock")
	}
}

// Nil arguments do not panic: every call of the decorated function, and
// Call and CallResult, return an error that names the decorator (or the
// method) and what to pass, and nothing runs.
func TestNilArgumentsFailEachCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	called := 0
	body := func(context.Context, req) (int, error) { called++; return 1, nil }
	bodyErr := func(context.Context, req) error { called++; return nil }
	job := func(context.Context) error { called++; return nil }
	run := func(ctx context.Context) error { called++; return nil }
	key := decorator.ResourceKey("order:", func(r req) string { return r.ID })
	const (
		nilLocker = "nil *dblock.Locker: pass the Locker that dblock.New returns"
		nilKey    = "nil KeyFunc: pass a key helper (ResourceKey, UserKey, MethodKey, ...) or a func(context.Context, Req) dblock.Key"
		nilFn     = "nil fn: pass the function to run under the lock"
	)
	for _, c := range []struct {
		name, want string
		call       func() error
	}{
		{"WithLock, nil locker", "decorator.WithLock: " + nilLocker, func() error {
			n, err := decorator.WithLock(nil, key, body)(ctx, req{ID: "1"})
			if n != 0 {
				t.Errorf("result %d beside the error", n)
			}
			return err
		}},
		{"WithLock, nil key", "decorator.WithLock: " + nilKey, func() error {
			_, err := decorator.WithLock(e.locker, nil, body)(ctx, req{ID: "1"})
			return err
		}},
		{"WithLock, nil fn", "decorator.WithLock: " + nilFn, func() error {
			_, err := decorator.WithLock[req, int](e.locker, key, nil)(ctx, req{ID: "1"})
			return err
		}},
		{"WithLockErr, nil locker", "decorator.WithLockErr: " + nilLocker, func() error {
			return decorator.WithLockErr(nil, key, bodyErr)(ctx, req{ID: "1"})
		}},
		{"WithLockErr, nil key", "decorator.WithLockErr: " + nilKey, func() error {
			return decorator.WithLockErr(e.locker, nil, bodyErr)(ctx, req{ID: "1"})
		}},
		{"WithLockErr, nil fn", "decorator.WithLockErr: " + nilFn, func() error {
			return decorator.WithLockErr[req](e.locker, key, nil)(ctx, req{ID: "1"})
		}},
		{"WithLock0, nil locker", "decorator.WithLock0: " + nilLocker, func() error {
			return decorator.WithLock0(nil, decorator.GlobalKey, job)(ctx)
		}},
		{"WithLock0, nil key", "decorator.WithLock0: " + nilKey, func() error {
			return decorator.WithLock0(e.locker, nil, job)(ctx)
		}},
		{"WithLock0, nil fn", "decorator.WithLock0: " + nilFn, func() error {
			return decorator.WithLock0(e.locker, decorator.GlobalKey, nil)(ctx)
		}},
		{"Call, nil locker", "Svc.M: " + nilLocker, func() error {
			return decorator.Call(ctx, nil, "Svc.M", dblock.Resource("order:1"), run)
		}},
		{"Call, nil fn", "Svc.M: " + nilFn, func() error {
			return decorator.Call(ctx, e.locker, "Svc.M", dblock.Resource("order:1"), nil)
		}},
		{"CallResult, nil locker", "Svc.N: " + nilLocker, func() error {
			n, err := decorator.CallResult(ctx, nil, "Svc.N", dblock.Resource("order:1"), func(context.Context) (int, error) { called++; return 1, nil })
			if n != 0 {
				t.Errorf("result %d beside the error", n)
			}
			return err
		}},
		{"CallResult, nil fn", "Svc.N: " + nilFn, func() error {
			_, err := decorator.CallResult[int](ctx, e.locker, "Svc.N", dblock.Resource("order:1"), nil)
			return err
		}},
	} {
		for range 2 { // every call, not only the first
			err := c.call()
			if err == nil || err.Error() != c.want {
				t.Errorf("%s: %v, want %q", c.name, err, c.want)
			}
		}
	}
	if called != 0 {
		t.Errorf("a function ran %d times despite a nil argument", called)
	}
	if e.heldElsewhere(t, dblock.Resource("order:1")) {
		t.Error("a key is held after the failed calls")
	}
}

// Two decorated services, the outer calling the inner with its ctx: one
// transaction, both writes commit together or roll back together, and a
// key held by the outer is reentrant in the inner.
func TestNestedServicesShareOneTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	type transfer struct {
		Order  string
		User   string
		Fail   string // "inner", "outer" or ""
		Amount int64
	}
	var innerTx, outerTx *gorm.DB
	// The inner service: a ledger, locked per user.
	ledger := decorator.WithLockErr(e.locker, decorator.UserKey(func(r transfer) string { return r.User }),
		func(ctx context.Context, r transfer) error {
			innerTx, _ = dblock.TxFrom(ctx)
			if err := e.put(ctx, "ledger:"+r.Order, r.Amount); err != nil {
				return err
			}
			if r.Fail == "inner" {
				return errService
			}
			return nil
		})
	// A reentrant call: the same key as the outer service.
	audit := decorator.WithLockErr(e.locker, decorator.ResourceKey("order:", func(r transfer) string { return r.Order }),
		func(ctx context.Context, r transfer) error { return e.put(ctx, "audit:"+r.Order, r.Amount) })
	// The outer service: refunds, locked per order.
	refund := decorator.WithLock(e.locker, decorator.ResourceKey("order:", func(r transfer) string { return r.Order }),
		func(ctx context.Context, r transfer) (string, error) {
			outerTx, _ = dblock.TxFrom(ctx)
			if err := e.put(ctx, "order:"+r.Order, r.Amount); err != nil {
				return "", err
			}
			if err := ledger(ctx, r); err != nil {
				return "", fmt.Errorf("ledger: %w", err)
			}
			if err := audit(ctx, r); err != nil {
				return "", err
			}
			if r.Fail == "outer" {
				return "", errService
			}
			return "done", nil
		}, dblock.WaitTimeout(5*time.Second))

	ctx := context.Background()
	got, err := refund(ctx, transfer{Order: "1", User: "u-1", Amount: 10})
	if err != nil || got != "done" {
		t.Fatalf("refund: %q, %v", got, err)
	}
	if innerTx == nil || innerTx != outerTx {
		t.Error("the inner service did not run in the outer service's transaction")
	}
	for _, n := range []string{"order:1", "ledger:1", "audit:1"} {
		if v := e.get(t, n); v != 10 {
			t.Errorf("%s = %d after commit, want 10", n, v)
		}
	}

	for i, fail := range []string{"inner", "outer"} {
		order := fmt.Sprint(2 + i)
		_, err := refund(ctx, transfer{Order: order, User: "u-1", Amount: 20, Fail: fail})
		if !errors.Is(err, errService) {
			t.Fatalf("failing %s: %v, want errService", fail, err)
		}
		for _, n := range []string{"order:", "ledger:", "audit:"} {
			if v := e.get(t, n+order); v != -1 {
				t.Errorf("failing %s: %s%s = %d, want rolled back", fail, n, order, v)
			}
		}
	}
	if e.heldElsewhere(t, dblock.User("u-1")) || e.heldElsewhere(t, dblock.Resource("order:1")) {
		t.Error("a key is still held after the calls")
	}
}

// Concurrent decorated calls on one key run one at a time.
func TestDecoratedCallsExcludeEachOther(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var mu sync.Mutex
	inside, maxInside := 0, 0
	fn := decorator.WithLockErr(e.locker, decorator.ResourceKey("acct:", func(r req) string { return r.ID }),
		func(ctx context.Context, r req) error {
			mu.Lock()
			inside++
			maxInside = max(maxInside, inside)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			return nil
		}, dblock.WaitTimeout(10*time.Second))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- fn(context.Background(), req{ID: "1"}) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if maxInside != 1 {
		t.Errorf("%d calls inside at once, want 1", maxInside)
	}
}

// loseDeadlockThenKey runs call, a decorated call whose fn, on its first
// run, closes held once it holds key and then writes row "x" of the
// business table (e.lockX). A heavier transaction (64 rows written) holds
// row x and, once held is closed, asks for key: a deadlock, whose victim
// the server picks by weight, the call's first attempt. The heavy
// transaction then holds key until call has returned. No sleeps: the
// cycle closes whichever of the two waits starts first.
func (e *env) loseDeadlockThenKey(t *testing.T, key dblock.Key, held <-chan struct{}, call func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.put(ctx, "x", 0); err != nil {
		t.Fatal(err)
	}
	heavy := e.db.WithContext(ctx).Begin()
	defer heavy.Rollback()
	for i := range 64 {
		if err := heavy.Exec("INSERT INTO `"+e.biz+"` (name, v) VALUES (?, 1)", fmt.Sprint("w", i)).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := heavy.Exec("UPDATE `" + e.biz + "` SET v = v + 1 WHERE name = 'x'").Error; err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); call() }()
	select {
	case <-held:
	case <-done:
		t.Fatal("the call returned before its first attempt held the key")
	}
	if err := e.locker.LockTx(ctx, heavy, key); err != nil {
		<-done
		t.Fatalf("the heavy transaction asking for %s: %v (want it to win the deadlock and get the key)", key, err)
	}
	<-done
}

// lockX writes row x through the transaction in ctx.
func (e *env) lockX(ctx context.Context) error {
	return dblock.DB(ctx, e.db).Exec("UPDATE `" + e.biz + "` SET v = v + 1 WHERE name = 'x'").Error
}

// With Retry, attempt 1 is a deadlock victim (rolled back) and attempt 2
// cannot take the key: the caller gets ErrNotAcquired and the zero Resp,
// not the Resp of the attempt that was rolled back.
func TestRetryAfterDeadlockReturnsNoRolledBackResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key := dblock.Resource("acct:1")
	var runs atomic.Int32
	held := make(chan struct{})
	fn := decorator.WithLock(e.locker, decorator.Fixed[req](key), func(ctx context.Context, _ req) (string, error) {
		n := runs.Add(1)
		if n == 1 {
			close(held)
		}
		return fmt.Sprint("attempt ", n), e.lockX(ctx)
	}, dblock.NoWait(), dblock.Retry(2))
	var (
		got string
		err error
	)
	e.loseDeadlockThenKey(t, key, held, func() { got, err = fn(context.Background(), req{}) })
	t.Logf("fn ran %d time(s); the call returned %q, %v", runs.Load(), got, err)
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times, want 1 (attempt 2 must not get the key)", runs.Load())
	}
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("err = %v, want ErrNotAcquired from attempt 2", err)
	}
	if got != "" {
		t.Errorf("Resp = %q beside ErrNotAcquired, want the zero value (attempt 1 was rolled back)", got)
	}
	if v := e.get(t, "x"); v != 0 {
		t.Errorf("x = %d, want 0: the heavy transaction rolled back and attempt 1's write with it", v)
	}
}
