package orders

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/txlock/txlock/dblock"
)

// Metrics exposes the service's OpenTelemetry metrics, the Locker's
// txlock.* instruments among them, in the Prometheus text format: an OTel
// MeterProvider whose reader is the OTel Prometheus exporter, registered in
// a Prometheus registry of its own (not the global one, so that several
// instances live side by side in one process, as in the tests).
//
// Give its meters to the Locker with [Metrics.LockerOption] among the
// injector's wireset.LockerOptions, and serve [Metrics.Wrap] of the
// service's handler:
//
//	m, err := orders.NewMetrics()
//	h, cleanup, err := orders.InitializeHandler(db,
//		wireset.LockerOptions{dblock.Table("tb_lock"), m.LockerOption()}, tables, gateway)
//	srv := &http.Server{Handler: m.Wrap(h)} // GET /metrics, and the service
//
// The instruments come out as txlock_acquire_duration_seconds (histogram,
// labels granularity, outcome, table, txlock_mode), txlock_held_duration_seconds,
// txlock_lost_total and txlock_waiting.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	handler  http.Handler
}

// NewMetrics returns a MeterProvider exported to Prometheus, with names
// escaped to underscores and unit and _total suffixes added (the classic
// Prometheus style, whatever the name validation scheme of
// prometheus/common).
func NewMetrics() (*Metrics, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, fmt.Errorf("orders: Prometheus exporter: %w", err)
	}
	return &Metrics{
		provider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)),
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}, nil
}

// MeterProvider returns the provider whose measurements /metrics shows.
func (m *Metrics) MeterProvider() metric.MeterProvider { return m.provider }

// LockerOption returns the Locker option that records its metrics here.
func (m *Metrics) LockerOption() dblock.Option { return dblock.MeterProvider(m.provider) }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Wrap returns a handler that serves GET /metrics, and app for every other
// request.
func (m *Metrics) Wrap(app http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler)
	mux.Handle("/", app)
	return mux
}

// Shutdown stops the provider; /metrics then shows nothing more.
func (m *Metrics) Shutdown(ctx context.Context) error { return m.provider.Shutdown(ctx) }
