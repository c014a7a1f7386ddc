package dblock

import (
	"context"
	"time"
)

// telemetry records the Locker's metrics and traces. This stub records
// nothing; see the observability work.
type telemetry struct{}

func newTelemetry(*config) (*telemetry, error) { return &telemetry{}, nil }

// startDo starts the span of a Do (or DoMulti) over keys.
func (t *telemetry) startDo(ctx context.Context, key Key, keys int) (context.Context, func(error)) {
	return ctx, func(error) {}
}

// startAcquire starts timing an acquisition (not a reentrant one) of key;
// the returned func records its outcome from err.
func (t *telemetry) startAcquire(ctx context.Context, key Key) func(error) {
	return func(error) {}
}

// waiting adds delta to the number of acquisitions waiting on the server.
func (t *telemetry) waiting(ctx context.Context, key Key, delta int64) {}

// held records how long a lock was held, at its release or loss.
func (t *telemetry) held(ctx context.Context, key Key, d time.Duration) {}

// lost counts a lost lock.
func (t *telemetry) lost(ctx context.Context, key Key, err error) {}
