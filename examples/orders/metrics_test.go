package orders_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator/wireset"
	"github.com/txlock/txlock/examples/orders"
)

// The service built as the demo's instances are (wire injector with the
// Locker's MeterProvider among its options, /metrics beside the service)
// shows the lock's metrics on /metrics after a refund: acquisitions by
// outcome under the granularity "resource" (the proxy locks "order:<id>"),
// never the order itself.
func TestMetricsAfterRefund(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m, err := orders.NewMetrics()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(t.Context()) })
	app, cleanup, err := orders.InitializeHandler(e.db, wireset.LockerOptions{dblock.Table(e.lock), m.LockerOption()}, e.tables, orders.FakeGateway{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	h := m.Wrap(app)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	_, r := call(t, h, "POST", "/orders", `{"user_id":"u-4","amount":700}`)
	if r.Order == nil {
		t.Fatalf("create: %+v", r)
	}
	path := "/orders/" + itoa(r.Order.ID)
	for _, step := range []string{"/pay", "/refund"} {
		if code, r := call(t, h, "POST", path+step, ""); code != http.StatusOK {
			t.Fatalf("%s: %d %+v", step, code, r)
		}
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	text := string(body)
	var sample []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "txlock_") || strings.HasPrefix(line, "# TYPE txlock_") {
			sample = append(sample, line)
		}
	}
	t.Logf("txlock lines of /metrics:\n%s", strings.Join(sample, "\n"))

	count := regexp.MustCompile(`(?m)^txlock_acquire_duration_seconds_count\{([^}]*)\} (\S+)$`)
	var acquired float64
	for _, m := range count.FindAllStringSubmatch(text, -1) {
		if strings.Contains(m[1], `granularity="resource"`) && strings.Contains(m[1], `outcome="acquired"`) && strings.Contains(m[1], `table="`+e.lock+`"`) {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatal(err)
			}
			acquired += v
		}
	}
	if acquired != 2 {
		t.Errorf(`txlock_acquire_duration_seconds_count{granularity="resource",outcome="acquired"} = %v, want 2 (pay and refund)`, acquired)
	}
	for _, want := range []string{
		"# TYPE txlock_acquire_duration_seconds histogram",
		"# TYPE txlock_held_duration_seconds histogram",
		"# TYPE txlock_waiting gauge",
		`txlock_held_duration_seconds_count{granularity="resource"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics has no %q", want)
		}
	}
	if strings.Contains(text, "order:") {
		t.Error("/metrics names an order: the raw lock key leaked into a label")
	}
}
