package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// telRecorder is an OpenTelemetry SDK whose metrics are read on demand
// (ManualReader) and whose ended spans are kept (SpanRecorder).
type telRecorder struct {
	reader *sdkmetric.ManualReader
	meters *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tracer *sdktrace.TracerProvider
}

func newTelRecorder(t *testing.T) *telRecorder {
	t.Helper()
	r := &telRecorder{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	r.meters = sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	r.tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	t.Cleanup(func() {
		_ = r.meters.Shutdown(context.Background())
		_ = r.tracer.Shutdown(context.Background())
	})
	return r
}

// options are the Locker options that record into r.
func (r *telRecorder) options() []dblock.Option {
	return []dblock.Option{dblock.MeterProvider(r.meters), dblock.TracerProvider(r.tracer)}
}

// collect reads the metrics of the txlock scope.
func (r *telRecorder) collect(t *testing.T) []metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collecting metrics: %v", err)
	}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name == "github.com/txlock/txlock/dblock" {
			return sm.Metrics
		}
	}
	return nil
}

// point is one data point: its attributes, and its count (histograms) or
// value (sums).
type point struct {
	attrs attribute.Set
	count uint64
	sum   float64
	value int64
}

// points returns the data points of the metric named name, checking its
// unit.
func points(t *testing.T, ms []metricdata.Metrics, name, unit string) []point {
	t.Helper()
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		if m.Unit != unit {
			t.Errorf("%s: unit %q, want %q", name, m.Unit, unit)
		}
		var out []point
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				out = append(out, point{attrs: dp.Attributes, count: dp.Count, sum: dp.Sum})
			}
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				out = append(out, point{attrs: dp.Attributes, value: dp.Value})
			}
		default:
			t.Fatalf("%s: unexpected data %T", name, m.Data)
		}
		return out
	}
	return nil
}

// matches reports whether p has every attribute of want.
func (p point) matches(want map[string]string) bool {
	for k, v := range want {
		got, ok := p.attrs.Value(attribute.Key(k))
		if !ok || got.Emit() != v {
			return false
		}
	}
	return true
}

// acquisitions returns the count of txlock.acquire.duration by outcome, for
// granularity gran.
func acquisitions(t *testing.T, ms []metricdata.Metrics, gran string) map[string]uint64 {
	t.Helper()
	return acquisitionsWhere(t, ms, map[string]string{"granularity": gran})
}

// acquisitionsWhere returns the count of txlock.acquire.duration by
// outcome, for the data points with attrs.
func acquisitionsWhere(t *testing.T, ms []metricdata.Metrics, attrs map[string]string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, p := range points(t, ms, "txlock.acquire.duration", "s") {
		if p.matches(attrs) {
			o, _ := p.attrs.Value("outcome")
			out[o.Emit()] += p.count
		}
	}
	return out
}

// sumOf returns the value of the sum metric name for attrs (0 if absent).
func sumOf(t *testing.T, ms []metricdata.Metrics, name, unit string, attrs map[string]string) int64 {
	t.Helper()
	var v int64
	for _, p := range points(t, ms, name, unit) {
		if p.matches(attrs) {
			v += p.value
		}
	}
	return v
}

// histOf returns the count and sum of the histogram name for attrs.
func histOf(t *testing.T, ms []metricdata.Metrics, name string, attrs map[string]string) (uint64, float64) {
	t.Helper()
	var n uint64
	var s float64
	for _, p := range points(t, ms, name, "s") {
		if p.matches(attrs) {
			n += p.count
			s += p.sum
		}
	}
	return n, s
}

// modeFigures are the measurements a test expects under one txlock.mode:
// acquisitions by outcome, holds recorded, losses.
type modeFigures struct {
	acquired map[string]uint64
	holds    uint64
	lost     int64
}

// checkModes checks the figures of ms under each mode's attributes (want,
// by attribute set), and that no acquisition waits any more.
func checkModes(t *testing.T, ms []metricdata.Metrics, want map[string]modeFigures, attrs map[string]map[string]string) {
	t.Helper()
	for mode, w := range want {
		a := attrs[mode]
		if got := fmt.Sprint(acquisitionsWhere(t, ms, a)); got != fmt.Sprint(w.acquired) {
			t.Errorf("%s acquisitions by outcome %s, want %v", mode, got, w.acquired)
		}
		if n, _ := histOf(t, ms, "txlock.held.duration", a); n != w.holds {
			t.Errorf("%d %s holds recorded, want %d", n, mode, w.holds)
		}
		if n := sumOf(t, ms, "txlock.lost", "{lock}", a); n != w.lost {
			t.Errorf("%s losses = %d, want %d", mode, n, w.lost)
		}
	}
	if n := sumOf(t, ms, "txlock.waiting", "{acquisition}", nil); n != 0 {
		t.Errorf("waiting = %d after the grants, want 0", n)
	}
}

// checkSpanModes checks the outcome/mode of every txlock.acquire span, in
// order (want: "[acquired/exclusive not_acquired/shared ...]"), and that
// the one txlock.Do span has txlock.mode doMode.
func (r *telRecorder) checkSpanModes(t *testing.T, want, doMode string) {
	t.Helper()
	var modes []string
	for _, s := range r.spansNamed("txlock.acquire") {
		modes = append(modes, spanAttr(s, "outcome")+"/"+spanAttr(s, "txlock.mode"))
	}
	if got := fmt.Sprint(modes); got != want {
		t.Errorf("txlock.acquire spans (outcome/mode) %s, want %s", got, want)
	}
	if dos := r.spansNamed("txlock.Do"); len(dos) != 1 || spanAttr(dos[0], "txlock.mode") != doMode {
		t.Errorf("txlock.Do spans %v, want one with txlock.mode %s", dos, doMode)
	}
}

// checkAttributes fails the test if a data point lacks the granularity,
// table and txlock.mode attributes (a span, txlock.mode), or if an
// attribute of a data point or of a span holds one of the raw key values
// raw.
func (r *telRecorder) checkAttributes(t *testing.T, ms []metricdata.Metrics, table string, raw ...string) {
	t.Helper()
	check := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			for _, s := range raw {
				if strings.Contains(kv.Value.Emit(), s) {
					t.Errorf("%s: attribute %s=%q holds the raw key value %q", where, kv.Key, kv.Value.Emit(), s)
				}
			}
		}
	}
	for _, m := range ms {
		for _, p := range points(t, []metricdata.Metrics{m}, m.Name, m.Unit) {
			if _, ok := p.attrs.Value("granularity"); !ok {
				t.Errorf("%s: a data point has no granularity: %v", m.Name, p.attrs.ToSlice())
			}
			if v, _ := p.attrs.Value("table"); v.Emit() != table {
				t.Errorf("%s: table attribute %q, want %q", m.Name, v.Emit(), table)
			}
			if v, _ := p.attrs.Value("txlock.mode"); !telModes[v.Emit()] {
				t.Errorf("%s: txlock.mode attribute %q, want exclusive, shared or semaphore", m.Name, v.Emit())
			}
			check(m.Name, p.attrs.ToSlice())
		}
	}
	for _, s := range r.spans.Ended() {
		check("span "+s.Name(), s.Attributes())
		if m := spanAttr(s, "txlock.mode"); !telModes[m] {
			t.Errorf("span %s: txlock.mode %q, want exclusive, shared or semaphore", s.Name(), m)
		}
		if strings.Contains(s.Status().Description, raw[0]) {
			t.Errorf("span %s: status %q holds the raw key", s.Name(), s.Status().Description)
		}
	}
}

// telModes are the values of the txlock.mode attribute.
var telModes = map[string]bool{"exclusive": true, "shared": true, "semaphore": true}

// spanAttr returns the attribute key of span s, as text.
func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// spansNamed returns the ended spans named name.
func (r *telRecorder) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// TestTelemetryAcquired: an uncontended Do records one acquired
// acquisition and one hold, under the key's granularity and the table,
// and makes a txlock.Do span with a txlock.acquire child. No attribute
// holds the raw key.
func TestTelemetryAcquired(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)

	key := dblock.Resource("order:42")
	if err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		time.Sleep(20 * time.Millisecond)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	multi := []dblock.Key{dblock.Key{User: "u-7", Resource: "order:43"}, dblock.Resource("order:44")}
	if err := l.DoMulti(ctx, multi, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}

	ms := rec.collect(t)
	if got := acquisitions(t, ms, "resource"); got["acquired"] != 1 || len(got) != 1 {
		t.Errorf("resource acquisitions by outcome %v, want acquired:1", got)
	}
	if got := acquisitionsWhere(t, ms, map[string]string{"txlock.mode": "exclusive"}); got["acquired"] != 2 {
		t.Errorf("exclusive acquisitions by outcome %v, want acquired:2 (Do and DoMulti take their keys exclusively)", got)
	}
	// DoMulti: one acquisition, under its first key in canonical order.
	total := acquisitions(t, ms, "resource")["acquired"] + acquisitions(t, ms, "user+resource")["acquired"]
	if total != 2 {
		t.Errorf("%d acquisitions in all, want 2 (Do and DoMulti)", total)
	}
	n, sum := histOf(t, ms, "txlock.held.duration", map[string]string{"granularity": "resource"})
	if n < 1 || sum < 0.02 {
		t.Errorf("held duration: %d holds, %.3fs in all, want the Do's hold of at least 20ms", n, sum)
	}
	if w := sumOf(t, ms, "txlock.waiting", "{acquisition}", map[string]string{"granularity": "resource"}); w != 0 {
		t.Errorf("waiting = %d after the acquisitions, want 0", w)
	}
	if lost := sumOf(t, ms, "txlock.lost", "{lock}", nil); lost != 0 {
		t.Errorf("lost = %d, want 0", lost)
	}
	rec.checkAttributes(t, ms, e.table, "order:4", "u-7")

	dos, acqs := rec.spansNamed("txlock.Do"), rec.spansNamed("txlock.acquire")
	if len(dos) != 2 || len(acqs) != 2 {
		t.Fatalf("%d txlock.Do and %d txlock.acquire spans, want 2 and 2", len(dos), len(acqs))
	}
	for i, d := range dos {
		a := acqs[i]
		if a.Parent().SpanID() != d.SpanContext().SpanID() {
			t.Errorf("txlock.acquire %d is not a child of its txlock.Do", i)
		}
		if d.Status().Code == codes.Error || a.Status().Code == codes.Error {
			t.Errorf("span %d: status %v / %v, want not an error", i, d.Status(), a.Status())
		}
		if got := spanAttr(a, "outcome"); got != "acquired" {
			t.Errorf("txlock.acquire %d: outcome %q", i, got)
		}
		if spanAttr(a, "wait_seconds") == "" {
			t.Errorf("txlock.acquire %d: no wait_seconds", i)
		}
		if got := spanAttr(d, "outcome"); got != "ok" {
			t.Errorf("txlock.Do %d: outcome %q", i, got)
		}
	}
	if g, k := spanAttr(dos[0], "granularity"), spanAttr(dos[0], "keys"); g != "resource" || k != "1" {
		t.Errorf("Do span: granularity %q keys %q, want resource 1", g, k)
	}
	if k := spanAttr(dos[1], "keys"); k != "2" {
		t.Errorf("DoMulti span: keys %q, want 2", k)
	}
}

// TestTelemetryNotAcquiredAndTimeout: while a key is held, TryLock is
// not_acquired, a WaitTimeout that runs out and a context deadline that
// bounds the wait (with or without a cause) are timeouts, and a cancelled
// waiter is canceled. The
// failed acquisitions' spans have an error status.
func TestTelemetryNotAcquiredAndTimeout(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("order:7")
	holder := mustLock(t, ctx, l, key)
	defer holder.Rollback()

	if _, err := l.TryLock(ctx, key); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("TryLock of a held key: %v, want ErrNotAcquired", err)
	}
	if _, err := l.Lock(ctx, key, dblock.WaitTimeout(200*time.Millisecond)); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock with WaitTimeout of a held key: %v, want ErrNotAcquired", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := l.Do(dctx, key, func(context.Context, *gorm.DB) error { return nil })
	dcancel()
	if !errors.Is(err, dblock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do bounded by a deadline: %v, want ErrNotAcquired and DeadlineExceeded", err)
	}
	// A deadline with a cause of the caller's: still a timeout.
	budget := errors.New("request budget spent")
	bctx, bcancel := context.WithDeadlineCause(ctx, time.Now().Add(200*time.Millisecond), budget)
	_, err = l.Lock(bctx, key)
	bcancel()
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock bounded by a deadline with a cause: %v, want ErrNotAcquired", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := l.Lock(cctx, key)
		done <- err
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", err)
	}

	ms := rec.collect(t)
	got := acquisitions(t, ms, "resource")
	want := map[string]uint64{"acquired": 1, "not_acquired": 1, "timeout": 3, "canceled": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("acquisitions by outcome %v, want %v", got, want)
	}
	n, sum := histOf(t, ms, "txlock.acquire.duration", map[string]string{"granularity": "resource", "outcome": "timeout"})
	if n == 3 && sum < 0.65 {
		t.Errorf("the three timeouts waited %.3fs in all, want about 0.7s", sum)
	}
	rec.checkAttributes(t, ms, e.table, "order:7")

	var outcomes []string
	for _, s := range rec.spansNamed("txlock.acquire") {
		o := spanAttr(s, "outcome")
		outcomes = append(outcomes, o)
		if (o == "acquired") != (s.Status().Code != codes.Error) {
			t.Errorf("txlock.acquire %s: status %v", o, s.Status())
		}
	}
	if fmt.Sprint(outcomes) != "[acquired not_acquired timeout timeout timeout canceled]" {
		t.Errorf("txlock.acquire outcomes %v", outcomes)
	}
	if dos := rec.spansNamed("txlock.Do"); len(dos) != 1 || dos[0].Status().Code != codes.Error || spanAttr(dos[0], "outcome") != "timeout" {
		t.Errorf("txlock.Do spans %v, want one with an error status and outcome timeout", dos)
	}
}

// TestTelemetryWaiting: txlock.waiting counts a waiter while it is queued
// on the server, and goes back to 0 once it is granted.
func TestTelemetryWaiting(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.User("u-9")
	holder := mustLock(t, ctx, l, key)
	defer holder.Rollback()
	waiting := func() int64 {
		return sumOf(t, rec.collect(t), "txlock.waiting", "{acquisition}", map[string]string{"granularity": "user"})
	}
	if w := waiting(); w != 0 {
		t.Errorf("waiting = %d with no waiter, want 0", w)
	}

	granted := make(chan error, 1)
	var waiter *dblock.Lock
	go func() {
		var err error
		waiter, err = l.Lock(ctx, key)
		granted <- err
	}()
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	if w := waiting(); w != 1 {
		t.Errorf("waiting = %d while a waiter is queued, want 1", w)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-granted; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if err := waiter.Commit(); err != nil {
		t.Fatal(err)
	}
	ms := rec.collect(t)
	if w := sumOf(t, ms, "txlock.waiting", "{acquisition}", map[string]string{"granularity": "user"}); w != 0 {
		t.Errorf("waiting = %d after the grant, want 0", w)
	}
	if got := acquisitions(t, ms, "user"); got["acquired"] != 2 {
		t.Errorf("acquisitions %v, want acquired:2", got)
	}
	if n, _ := histOf(t, ms, "txlock.held.duration", map[string]string{"granularity": "user"}); n != 2 {
		t.Errorf("%d holds recorded, want 2 (both Commits)", n)
	}
	rec.checkAttributes(t, ms, e.table, "u-9")
}

// TestTelemetryLost: a lock whose connection is killed is lost: the loss
// is counted, and its hold recorded once (not again by Rollback).
func TestTelemetryLost(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Operation("refund")
	lk, err := l.Lock(ctx, key, dblock.Lease(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Rollback()
	killUntilLost(t, e.db, lk)
	if !errors.Is(lk.Err(), dblock.ErrLockLost) {
		t.Errorf("Err = %v, want ErrLockLost", lk.Err())
	}
	_ = lk.Rollback()

	ms := rec.collect(t)
	if n := sumOf(t, ms, "txlock.lost", "{lock}", map[string]string{"granularity": "operation"}); n != 1 {
		t.Errorf("lost = %d, want 1", n)
	}
	if n, _ := histOf(t, ms, "txlock.held.duration", map[string]string{"granularity": "operation"}); n != 1 {
		t.Errorf("%d holds recorded, want 1 (at the loss)", n)
	}
	rec.checkAttributes(t, ms, e.table, "refund")
}

// killUntilLost kills the connection of lk's transaction from db and waits
// (at most 10 s) until lk reports the loss.
func killUntilLost(t *testing.T, db *gorm.DB, lk *dblock.Lock) {
	t.Helper()
	var conn int64
	if err := lk.Tx().Raw("SELECT CONNECTION_ID()").Scan(&conn).Error; err != nil || conn == 0 {
		t.Fatalf("connection id: %d, %v", conn, err)
	}
	if err := db.Exec(fmt.Sprintf("KILL %d", conn)).Error; err != nil {
		t.Fatalf("KILL %d: %v", conn, err)
	}
	select {
	case <-lk.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the lock was not reported lost 10s after its connection was killed")
	}
}

// TestTelemetryDeadlockAndError: two transactions taking two keys with
// LockTx in opposite orders deadlock (one acquisition is a deadlock), and a
// Locker on a missing table fails with the outcome error.
func TestTelemetryDeadlockAndError(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	a, b := dblock.Resource("dl:a"), dblock.Resource("dl:b")
	tx1, tx2 := e.db.WithContext(ctx).Begin(), e.db.WithContext(ctx).Begin()
	defer tx1.Rollback()
	defer tx2.Rollback()
	if err := l.LockTx(ctx, tx1, a); err != nil {
		t.Fatal(err)
	}
	if err := l.LockTx(ctx, tx2, b); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var errs [2]error
	wg.Go(func() { errs[0] = l.LockTx(ctx, tx1, b) })
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	errs[1] = l.LockTx(ctx, tx2, a)
	if errors.Is(errs[1], dblock.ErrDeadlock) {
		tx2.Rollback() // the server rolled it back already: end it on the client too
	}
	wg.Wait()
	if !errors.Is(errs[0], dblock.ErrDeadlock) && !errors.Is(errs[1], dblock.ErrDeadlock) {
		t.Fatalf("LockTx in opposite orders: %v, %v, want one ErrDeadlock", errs[0], errs[1])
	}

	missing, err := dblock.New(e.db, append([]dblock.Option{dblock.Table(e.table + "_missing")}, rec.options()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if err := missing.Do(ctx, dblock.Method("Refund"), func(context.Context, *gorm.DB) error { return nil }); !errors.Is(err, dblock.ErrTableMissing) {
		t.Fatalf("Do on a missing table: %v, want ErrTableMissing", err)
	}

	ms := rec.collect(t)
	if got := acquisitions(t, ms, "resource"); got["deadlock"] != 1 || got["acquired"] != 3 {
		t.Errorf("acquisitions by outcome %v, want deadlock:1 acquired:3", got)
	}
	if got := acquisitions(t, ms, "method"); got["error"] != 1 {
		t.Errorf("acquisitions on the missing table %v, want error:1", got)
	}
	if dos := rec.spansNamed("txlock.Do"); len(dos) != 1 || spanAttr(dos[0], "outcome") != "error" || dos[0].Status().Code != codes.Error {
		t.Errorf("txlock.Do spans %v, want one failed with outcome error", dos)
	}
}

// TestTelemetryOptions: nil providers are rejected; no-op providers, and
// the default ones, work and record nothing anywhere.
func TestTelemetryOptions(t *testing.T) {
	e := setup(t)
	if _, err := dblock.New(e.db, dblock.MeterProvider(nil)); err == nil {
		t.Error("MeterProvider(nil) accepted")
	}
	if _, err := dblock.New(e.db, dblock.TracerProvider(nil)); err == nil {
		t.Error("TracerProvider(nil) accepted")
	}
	ctx := ctxT(t)
	for _, opts := range [][]dblock.Option{
		{dblock.MeterProvider(metricnoop.NewMeterProvider()), dblock.TracerProvider(tracenoop.NewTracerProvider())},
		nil,
	} {
		l := e.locker(t, opts...)
		if err := l.Do(ctx, dblock.Global(), func(context.Context, *gorm.DB) error { return nil }); err != nil {
			t.Error(err)
		}
		l.Close()
	}
}

// TestTelemetryGlobalProviders: without the options, a Locker records
// through the OTel global providers, also when it was created before the
// application set them.
func TestTelemetryGlobalProviders(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	ctx := ctxT(t)
	// A test run before (go test -count) left the globals set to no-op
	// providers: a Locker created before Set then cannot follow.
	_, wasSet := otel.GetMeterProvider().(metricnoop.MeterProvider)
	before := e.locker(t)
	defer before.Close()
	otel.SetMeterProvider(rec.meters)
	otel.SetTracerProvider(rec.tracer)
	t.Cleanup(func() {
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
	})
	after := e.locker(t)
	defer after.Close()

	fn := func(context.Context, *gorm.DB) error { return nil }
	if err := after.Do(ctx, dblock.Method("after"), fn); err != nil {
		t.Fatal(err)
	}
	if err := before.Do(ctx, dblock.User("before"), fn); err != nil {
		t.Fatal(err)
	}
	ms := rec.collect(t)
	if got := acquisitions(t, ms, "method"); got["acquired"] != 1 {
		t.Errorf("Locker created after Set: acquisitions %v, want acquired:1", got)
	}
	if len(rec.spansNamed("txlock.Do")) < 1 {
		t.Error("Locker created after Set: no txlock.Do span")
	}
	if wasSet {
		t.Log("the OTel globals were set by an earlier run: the Locker created before Set is not checked")
		return
	}
	if got := acquisitions(t, ms, "user"); got["acquired"] != 1 {
		t.Errorf("Locker created before Set: acquisitions %v, want acquired:1", got)
	}
	if n := len(rec.spansNamed("txlock.Do")); n != 2 {
		t.Errorf("%d txlock.Do spans, want 2 (both Lockers)", n)
	}
}

// BenchmarkDoTelemetry is BenchmarkDo's uncontended Do with an SDK
// recording the Locker's metrics, then also its spans (all sampled,
// exported nowhere): what recording costs on the hot path.
func BenchmarkDoTelemetry(b *testing.B) {
	d := openBench(b)
	key := dblock.Resource("bench:do")
	ctx := context.Background()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() {
		_ = mp.Shutdown(ctx)
		_ = tp.Shutdown(ctx)
	})
	op := func(_ *gorm.DB, l *dblock.Locker) error { return l.Do(ctx, key, noop) }
	for _, c := range []struct {
		name string
		opts []dblock.Option
	}{
		{"none", nil},
		{"noop-providers", []dblock.Option{dblock.MeterProvider(metricnoop.NewMeterProvider()), dblock.TracerProvider(tracenoop.NewTracerProvider())}},
		{"metrics", []dblock.Option{dblock.MeterProvider(mp)}},
		{"metrics+traces", []dblock.Option{dblock.MeterProvider(mp), dblock.TracerProvider(tp)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			l, err := dblock.New(d.plain, append([]dblock.Option{dblock.Table(d.table)}, c.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			bench(b, d.plain, l, op)
		})
	}
}
