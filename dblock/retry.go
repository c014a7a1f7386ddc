package dblock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// backoff is a jittered exponential backoff: base doubled per retry up to
// max, drawn uniformly from [d/2, d) so that the victims of one conflict
// do not meet again.
type backoff struct {
	base, max time.Duration
}

// Backoffs of Retry, of the row step and of the fencing bumps.
var (
	retryBackoff = backoff{5 * time.Millisecond, 200 * time.Millisecond}
	rowBackoff   = backoff{2 * time.Millisecond, 50 * time.Millisecond}
	fenceBackoff = backoff{time.Millisecond, 20 * time.Millisecond}
)

// pause returns the pause before retry number n (1 for the first).
func (b backoff) pause(n int) time.Duration {
	d := b.base
	for i := 1; i < n && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// retryable reports whether err says the server rolled the whole
// transaction back, so that running it again from the start is safe.
func retryable(err error) bool {
	return (errors.Is(err, ErrDeadlock) || errors.Is(err, ErrStaleSnapshot)) && !errors.Is(err, ErrCommitUnknown)
}

// retrying runs attempt until it succeeds, fails with an error that is not
// retryable, or attempts or ctx run out.
func retrying(ctx context.Context, attempts int, attempt func() error) error {
	for n := 1; ; n++ {
		err := attempt()
		if err == nil || !retryable(err) || n >= attempts {
			return err
		}
		if serr := sleepCtx(ctx, retryBackoff.pause(n)); serr != nil {
			return fmt.Errorf("%w (retry abandoned: %w)", err, serr)
		}
	}
}

// sleepCtx pauses for d, or until ctx ends (returning its cause).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
