package dblock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// scopeName is the OpenTelemetry instrumentation scope of the Locker's
// meter and tracer.
const scopeName = "github.com/txlock/txlock/dblock"

// The Locker's instruments. Every measurement carries the attributes
// granularity (Key.Granularity: "resource", "user+resource", "global", ...),
// table (the lock table's name) and txlock.mode ("exclusive", or "shared"
// for a key taken with Shared): all are bounded, the raw key never
// appears. For DoMulti and for Lock, the granularity and the mode are
// those of the first key in canonical order.
//
//   - txlock.acquire.duration (histogram, s), with outcome: the time from
//     the call to the grant or the failure, row lookup and pool connection
//     included, of every acquisition that goes to the server (a reentrant
//     one does not); one per attempt when Do retries. Its count by outcome
//     is the acquisition counter: there is no separate one.
//   - txlock.held.duration (histogram, s): from the grant to the release
//     (Commit, Rollback, the end of Do) or the loss, for the locks the
//     Locker's own transactions hold (Do, DoMulti, Lock, TryLock; not
//     LockTx, whose transaction the caller ends).
//   - txlock.lost (counter, {lock}): locks lost while held (Lock.Lost).
//   - txlock.waiting (up-down counter, {acquisition}): locking reads in
//     flight on the server, that is acquisitions waiting for a key.
//
// The outcome of an acquisition is read from its error:
//
//	acquired      nil
//	deadlock      ErrDeadlock
//	timeout       ErrNotAcquired because a wait ran out: WaitTimeout (MariaDB
//	              1969 max_statement_time, MySQL 3024, or 1317 when the
//	              library interrupted the wait), the context's deadline
//	              (the error wraps context.DeadlineExceeded, or the context
//	              has expired), or the server's innodb_lock_wait_timeout
//	              (1205 when the acquisition was not NoWait)
//	not_acquired  ErrNotAcquired without a wait: TryLock or NoWait (MySQL
//	              3572; MariaDB answers NOWAIT with 1205)
//	canceled      the context was cancelled (context.Canceled in the chain,
//	              or ctx.Err() once the call failed)
//	timeout       also: another failure once the context's deadline passed
//	too_soon      ErrTooSoon: granted, but within MinInterval of the last run
//	error         anything else (missing table, connection failure, ...)
const (
	metricAcquireDuration = "txlock.acquire.duration"
	metricHeldDuration    = "txlock.held.duration"
	metricLost            = "txlock.lost"
	metricWaiting         = "txlock.waiting"

	spanDo      = "txlock.Do"
	spanAcquire = "txlock.acquire"
)

// Attribute keys of the metrics and spans.
const (
	attrGranularity = attribute.Key("granularity")
	attrTable       = attribute.Key("table")
	attrOutcome     = attribute.Key("outcome")
	attrMode        = attribute.Key("txlock.mode")
	attrKeys        = attribute.Key("keys")         // txlock.Do: how many keys
	attrWait        = attribute.Key("wait_seconds") // txlock.acquire: time to the outcome
)

// Bucket boundaries (seconds). Acquisitions are sub-millisecond to
// milliseconds uncontended, up to the wait bounds under contention; holds
// last as long as the work under the lock.
var (
	acquireBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	heldBuckets    = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600}
)

// outcome is an acquisition's outcome, the value of the outcome attribute.
type outcome uint8

const (
	outAcquired outcome = iota
	outNotAcquired
	outTimeout
	outDeadlock
	outCanceled
	outError
	outTooSoon
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"acquired", "not_acquired", "timeout", "deadlock", "canceled", "error", "too_soon"}

func (o outcome) String() string { return outcomeNames[o] }

// acquireOutcome classifies the error of an acquisition; noWait says it
// was not to wait, so that ErrNotAcquired is not_acquired, not a timeout.
func acquireOutcome(ctx context.Context, err error, noWait bool) outcome {
	switch {
	case err == nil:
		return outAcquired
	case errors.Is(err, ErrDeadlock):
		return outDeadlock
	case errors.Is(err, ErrTooSoon):
		return outTooSoon
	case errors.Is(err, ErrNotAcquired):
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// The context's deadline bounded the wait (its cause, which
			// the error carries, may be the caller's own error).
			return outTimeout
		}
		if noWait {
			return outNotAcquired
		}
		return outTimeout
	case errors.Is(err, context.Canceled):
		return outCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return outTimeout
	}
	switch ctx.Err() {
	case context.Canceled:
		return outCanceled
	case context.DeadlineExceeded:
		return outTimeout
	}
	return outError
}

// doOutcome classifies the error of a Do: "ok", "lost", "stale_snapshot",
// or the acquisition's outcomes (fn's own errors are "error", or
// "canceled"/"timeout" when they are the context's).
func doOutcome(ctx context.Context, err error, noWait bool) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrLockLost):
		return "lost"
	case errors.Is(err, ErrStaleSnapshot):
		return "stale_snapshot"
	}
	return acquireOutcome(ctx, err, noWait).String()
}

// Granularities are indexed without allocating: one bit per field
// (user, method, operation, resource), and globalGran for Global, which
// no valid key combines with another field.
const (
	globalGran = 16
	numGrans   = 17
)

func granIndex(k Key) int {
	if k.Global {
		return globalGran
	}
	i := 0
	if k.User != "" {
		i |= 1
	}
	if k.Method != "" {
		i |= 2
	}
	if k.Operation != "" {
		i |= 4
	}
	if k.Resource != "" {
		i |= 8
	}
	return i
}

// granName returns the name of granularity index i (see Key.Granularity).
func granName(i int) string {
	if i == globalGran {
		return "global"
	}
	var parts [4]string
	n := 0
	for bit, name := range [...]string{"user", "method", "operation", "resource"} {
		if i&(1<<bit) != 0 {
			parts[n] = name
			n++
		}
	}
	if n == 0 {
		return "none"
	}
	return strings.Join(parts[:n], "+")
}

// granTelemetry holds the measurement options of one granularity and
// mode, built once so that recording allocates nothing of its own.
type granTelemetry struct {
	attrs   []attribute.KeyValue // granularity, table, mode
	add     []metric.AddOption
	record  []metric.RecordOption
	acquire [numOutcomes][]metric.RecordOption // attrs and outcome
	span    []trace.SpanStartOption            // attrs
}

// telemetry records the Locker's metrics and traces (see the instruments
// above). With the default providers and no SDK set by the application,
// each hook costs a few loads and no allocation.
type telemetry struct {
	acquireDur metric.Float64Histogram
	heldDur    metric.Float64Histogram
	lostN      metric.Int64Counter
	waitingN   metric.Int64UpDownCounter

	tracer trace.Tracer // from the TracerProvider option; nil: the global's
	global atomic.Pointer[globalTracer]

	grans [numModes][numGrans]granTelemetry
}

// gran returns the measurement options of key's granularity in mode.
func (t *telemetry) gran(key Key, mode lockMode) *granTelemetry {
	return &t.grans[mode][granIndex(key)]
}

func newTelemetry(cfg *config) (*telemetry, error) {
	t := &telemetry{}
	mp := cfg.meters
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(scopeName)
	var err error
	if t.acquireDur, err = meter.Float64Histogram(metricAcquireDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Time to acquire a txlock lock (to the grant or the failure), by outcome."),
		metric.WithExplicitBucketBoundaries(acquireBuckets...)); err != nil {
		return nil, fmt.Errorf("dblock: creating the %s histogram: %w", metricAcquireDuration, err)
	}
	if t.heldDur, err = meter.Float64Histogram(metricHeldDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Time a txlock lock was held, from the grant to the release or the loss."),
		metric.WithExplicitBucketBoundaries(heldBuckets...)); err != nil {
		return nil, fmt.Errorf("dblock: creating the %s histogram: %w", metricHeldDuration, err)
	}
	if t.lostN, err = meter.Int64Counter(metricLost,
		metric.WithUnit("{lock}"),
		metric.WithDescription("txlock locks lost while held (lease expired, connection or transaction gone, context ended).")); err != nil {
		return nil, fmt.Errorf("dblock: creating the %s counter: %w", metricLost, err)
	}
	if t.waitingN, err = meter.Int64UpDownCounter(metricWaiting,
		metric.WithUnit("{acquisition}"),
		metric.WithDescription("txlock acquisitions waiting on the server for a key (locking reads in flight).")); err != nil {
		return nil, fmt.Errorf("dblock: creating the %s up-down counter: %w", metricWaiting, err)
	}

	if cfg.tracers != nil {
		t.tracer = cfg.tracers.Tracer(scopeName)
	}

	table := attrTable.String(cfg.table)
	for m := range numModes {
		mode := attrMode.String(m.String())
		for i := range t.grans[m] {
			g := &t.grans[m][i]
			g.attrs = []attribute.KeyValue{attrGranularity.String(granName(i)), table, mode}
			set := attribute.NewSet(g.attrs...)
			g.add = []metric.AddOption{metric.WithAttributeSet(set)}
			g.record = []metric.RecordOption{metric.WithAttributeSet(set)}
			for o := range numOutcomes {
				set := attribute.NewSet(g.attrs[0], g.attrs[1], g.attrs[2], attrOutcome.String(o.String()))
				g.acquire[o] = []metric.RecordOption{metric.WithAttributeSet(set)}
			}
			g.span = []trace.SpanStartOption{trace.WithAttributes(g.attrs...)}
		}
	}
	return t, nil
}

// globalTracer is the tracer of the OTel global TracerProvider, kept with
// the provider it came from so that a provider set later is followed.
type globalTracer struct {
	provider trace.TracerProvider
	tracer   trace.Tracer
}

// spans returns the tracer to start spans with: the TracerProvider
// option's, else the global provider's, whose spans do not record until
// the application sets a provider.
func (t *telemetry) spans() trace.Tracer {
	if t.tracer != nil {
		return t.tracer
	}
	tp := otel.GetTracerProvider()
	g := t.global.Load()
	if g == nil || g.provider != tp {
		g = &globalTracer{provider: tp, tracer: tp.Tracer(scopeName)}
		t.global.Store(g)
	}
	return g.tracer
}

func nopEnd(error) {}

// startDo starts the span of a Do (or DoMulti) over keys, the first of
// which, key, is taken in mode.
func (t *telemetry) startDo(ctx context.Context, key Key, keys int, mode lockMode, noWait bool) (context.Context, func(error)) {
	tracer := t.spans()
	g := t.gran(key, mode)
	ctx, span := tracer.Start(ctx, spanDo, trace.WithAttributes(g.attrs[0], g.attrs[1], g.attrs[2], attrKeys.Int(keys)))
	return ctx, func(err error) {
		o := doOutcome(ctx, err, noWait)
		span.SetAttributes(attrOutcome.String(o))
		if err != nil {
			// The error's message names the key: it stays out of the span.
			span.SetStatus(codes.Error, o)
		}
		span.End()
	}
}

// startAcquire starts timing an acquisition (not a reentrant one) of key
// in mode; the returned func records its outcome from err.
func (t *telemetry) startAcquire(ctx context.Context, key Key, mode lockMode, noWait bool) func(error) {
	measure := t.acquireDur.Enabled(ctx)
	g := t.gran(key, mode)
	_, span := t.spans().Start(ctx, spanAcquire, g.span...)
	if !measure && !span.IsRecording() {
		span.End()
		return nopEnd
	}
	start := time.Now()
	return func(err error) {
		took := time.Since(start)
		o := acquireOutcome(ctx, err, noWait)
		if measure {
			t.acquireDur.Record(ctx, took.Seconds(), g.acquire[o]...)
		}
		if span.IsRecording() {
			span.SetAttributes(attrOutcome.String(o.String()), attrWait.Float64(took.Seconds()))
			if o != outAcquired {
				span.SetStatus(codes.Error, o.String())
			}
		}
		span.End()
	}
}

// waiting adds delta to the number of acquisitions of key in mode waiting
// on the server.
func (t *telemetry) waiting(ctx context.Context, key Key, mode lockMode, delta int64) {
	t.waitingN.Add(ctx, delta, t.gran(key, mode).add...)
}

// maxDuration is what time.Since returns for the zero time: a hold whose
// start was not recorded.
const maxDuration = time.Duration(math.MaxInt64)

// held records how long a lock of key in mode was held, at its release or
// loss.
func (t *telemetry) held(ctx context.Context, key Key, mode lockMode, d time.Duration) {
	if d < 0 || d == maxDuration {
		return
	}
	t.heldDur.Record(ctx, d.Seconds(), t.gran(key, mode).record...)
}

// lost counts a lost lock of key in mode.
func (t *telemetry) lost(ctx context.Context, key Key, mode lockMode, err error) {
	t.lostN.Add(ctx, 1, t.gran(key, mode).add...)
}
