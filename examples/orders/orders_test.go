package orders_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator/wireset"
	"github.com/txlock/txlock/examples/orders"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

type env struct {
	db     *gorm.DB
	lock   string
	tables orders.Tables
	repo   *orders.Repository
}

func newEnv(t *testing.T) *env {
	t.Helper()
	db := testdb.Open(t)
	lock := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	tables := orders.TablesWithPrefix(lock + "_")
	ctx := context.Background()
	if err := orders.CreateTables(ctx, db, tables); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orders.DropTables(ctx, db, tables) })
	repo, err := orders.NewRepository(db, tables)
	if err != nil {
		t.Fatal(err)
	}
	return &env{db: db, lock: lock, tables: tables, repo: repo}
}

// handler builds the service as the demo does: wire injector, generated
// proxy, HTTP handler.
func (e *env) handler(t *testing.T, delay time.Duration) http.Handler {
	t.Helper()
	h, cleanup, err := orders.InitializeHandler(e.db, wireset.LockerOptions{dblock.Table(e.lock)}, e.tables, orders.FakeGateway{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	return h
}

func call(t *testing.T, h http.Handler, method, path, body string) (int, orders.Response) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	var resp orders.Response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatalf("%s %s: %v: %q", method, path, err, rec.Body.String())
	}
	return rec.Code, resp
}

func TestOrderLifecycleOverHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := e.handler(t, 0)

	code, r := call(t, h, "POST", "/orders", `{"user_id":"u-1","amount":900}`)
	if code != http.StatusCreated || r.Order == nil || r.Order.Status != orders.StatusNew {
		t.Fatalf("create: %d %+v", code, r)
	}
	id := r.Order.ID
	path := "/orders/" + itoa(id)
	for _, step := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"POST", path + "/refund", http.StatusConflict, "not_paid"},
		{"POST", path + "/pay", http.StatusOK, "ok"},
		{"POST", path + "/pay", http.StatusConflict, "already_paid"},
		{"POST", path + "/cancel", http.StatusConflict, "already_paid"},
		{"POST", path + "/refund", http.StatusOK, "ok"},
		{"POST", path + "/refund", http.StatusConflict, "already_refunded"},
		{"GET", path, http.StatusOK, "ok"},
		{"GET", "/orders/999999", http.StatusNotFound, "not_found"},
		{"GET", "/orders/x", http.StatusBadRequest, "invalid"},
		{"POST", "/orders", http.StatusBadRequest, "invalid"},
	} {
		code, r := call(t, h, step.method, step.path, "{}")
		if code != step.code || r.Code != step.want {
			t.Errorf("%s %s: %d %q (%s), want %d %q", step.method, step.path, code, r.Code, r.Error, step.code, step.want)
		}
	}
	if _, r := call(t, h, "GET", path, ""); r.Order.Status != orders.StatusRefunded {
		t.Errorf("final status %q", r.Order.Status)
	}
}

// Concurrent refunds through the proxy: exactly one applies; a refund that
// cannot get the lock in time is a lock timeout, not a service error.
func TestConcurrentRefundsApplyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := e.handler(t, 50*time.Millisecond)
	_, r := call(t, h, "POST", "/orders", `{"user_id":"u-2","amount":100}`)
	id := r.Order.ID
	if code, _ := call(t, h, "POST", "/orders/"+itoa(id)+"/pay", ""); code != http.StatusOK {
		t.Fatal("pay failed")
	}
	var wg sync.WaitGroup
	codes := make([]string, 12)
	for i := range codes {
		wg.Go(func() { _, r := call(t, h, "POST", "/orders/"+itoa(id)+"/refund", ""); codes[i] = r.Code })
	}
	wg.Wait()
	count := map[string]int{}
	for _, c := range codes {
		count[c]++
	}
	if count["ok"] != 1 || count["ok"]+count["already_refunded"]+count["lock_timeout"] != len(codes) {
		t.Errorf("answers %v, want one ok and the rest already_refunded or lock_timeout", count)
	}
	if n, err := e.repo.CountRefunds(context.Background(), id); err != nil || n != 1 {
		t.Errorf("%d refunds stored (%v), want 1", n, err)
	}
}

// The lock's errors are not the service's: a held order gives
// dblock.ErrNotAcquired through the proxy, mapped to 503 lock_timeout.
func TestHeldOrderIsALockTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := e.handler(t, 0)
	_, r := call(t, h, "POST", "/orders", `{"user_id":"u-3","amount":100}`)
	id := r.Order.ID

	locker, err := dblock.New(e.db, dblock.Table(e.lock))
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	held, err := locker.Lock(context.Background(), dblock.Resource("order:"+itoa(id)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, resp := call(t, h, "POST", "/orders/"+itoa(id)+"/pay", "")
	_ = held.Rollback()
	if code != http.StatusServiceUnavailable || resp.Code != "lock_timeout" {
		t.Errorf("pay of a held order: %d %+v", code, resp)
	}
	// The directive's 2 s is a server-side statement timeout: never
	// shorter, however busy the machine; without it the wait would run to
	// innodb_lock_wait_timeout (50 s).
	d := time.Since(start)
	t.Logf("gave up after %v (directive: 2s)", d)
	if d < 1900*time.Millisecond || d > 30*time.Second {
		t.Errorf("gave up after %v, want the 2s of the directive", d)
	}

	svc := orders.NewLockedOrderService(orders.NewService(e.repo, orders.FakeGateway{}), locker)
	held, err = locker.Lock(context.Background(), dblock.Resource("order:"+itoa(id)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = svc.Cancel(ctx, orders.CancelRequest{OrderID: id})
	_ = held.Rollback()
	if !errors.Is(err, dblock.ErrNotAcquired) || errors.Is(err, orders.ErrCancelled) {
		t.Errorf("cancel of a held order: %v, want dblock.ErrNotAcquired", err)
	}
	// Once released, the service's own errors come through unchanged.
	if _, err := svc.Refund(context.Background(), orders.RefundRequest{OrderID: id}); !errors.Is(err, orders.ErrNotPaid) {
		t.Errorf("refund of a new order: %v, want ErrNotPaid", err)
	}
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }
