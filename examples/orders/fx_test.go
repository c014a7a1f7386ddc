package orders_test

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/examples/orders"
	"github.com/txlock/txlock/examples/orders/fxapp"
	"github.com/txlock/txlock/integrations/fxlock"
)

// The service wired with fx (fxapp) starts against the real server, serves
// concurrent refunds of one order through the locking proxy (exactly one
// applies), and closes its Locker when the application stops.
func TestFxAppRefundsOnceAndClosesLocker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var (
		h      *orders.Handler
		locker *dblock.Locker
	)
	app := fxtest.New(t,
		fx.NopLogger,
		fxapp.Options(e.db, fxlock.Options{dblock.Table(e.lock)}, e.tables, orders.FakeGateway{Delay: 20 * time.Millisecond}),
		fx.Populate(&h, &locker),
	)
	app.RequireStart()

	_, r := call(t, h, "POST", "/orders", `{"user_id":"u-fx","amount":100}`)
	if r.Order == nil {
		t.Fatalf("create: %+v", r)
	}
	path := "/orders/" + strconv.FormatInt(r.Order.ID, 10)
	if code, r := call(t, h, "POST", path+"/pay", ""); code != http.StatusOK {
		t.Fatalf("pay: %d %+v", code, r)
	}
	var wg sync.WaitGroup
	codes := make([]string, 6)
	for i := range codes {
		wg.Go(func() { _, r := call(t, h, "POST", path+"/refund", ""); codes[i] = r.Code })
	}
	wg.Wait()
	applied := 0
	for _, c := range codes {
		if c == "ok" {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("refunds applied: %d of %v, want exactly 1", applied, codes)
	}

	app.RequireStop()
	err := locker.Do(context.Background(), dblock.Resource("after-stop"), func(context.Context, *gorm.DB) error { return nil })
	if err == nil {
		t.Error("Do after the application stopped succeeded: the Locker was not closed")
	}
}
