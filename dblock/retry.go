package dblock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// A RetryPolicy says how Do runs its work again after the server rolled
// its transaction back: a deadlock victim (ErrDeadlock), or a transaction
// whose snapshot predated one of its locks (ErrStaleSnapshot).
//
// Do re-runs fn from the start in a new transaction, so fn must be safe to
// run again: everything it did through the transaction was rolled back,
// but effects outside it (calls to other services, in-memory state) were
// not.
type RetryPolicy struct {
	// Attempts is the most times fn runs in all, first run included
	// (at least 2 for a retry to happen).
	Attempts int
	// Base is the backoff before the first retry; each retry doubles it up
	// to Max. The pause is drawn uniformly from [backoff/2, backoff)
	// (jitter), so that the victims of one deadlock do not meet again.
	Base time.Duration
	// Max caps the backoff (default 1 s).
	Max time.Duration
}

// DefaultRetryPolicy retries a deadlock victim up to 4 more times, backing
// off from 5 ms to at most 200 ms.
var DefaultRetryPolicy = RetryPolicy{Attempts: 5, Base: 5 * time.Millisecond, Max: 200 * time.Millisecond}

// Retry makes Do run fn again, in a new transaction, when the server
// rolled its transaction back (ErrDeadlock, ErrStaleSnapshot). It applies
// to transactions that Do opens; a Do that joins a caller's transaction
// cannot retry (the caller's whole transaction was rolled back) and
// returns the error.
func Retry(p RetryPolicy) LockOption {
	return func(lc *lockConfig) error {
		if p.Attempts < 1 {
			return fmt.Errorf("dblock: Retry: Attempts must be at least 1, got %d", p.Attempts)
		}
		if p.Base < 0 || p.Max < 0 {
			return fmt.Errorf("dblock: Retry: negative backoff (Base %v, Max %v)", p.Base, p.Max)
		}
		if p.Max == 0 {
			p.Max = time.Second
		}
		lc.retry = p
		return nil
	}
}

// backoff returns the pause before retry number n (1 for the first).
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.Base
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
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
// retryable, or the policy or ctx runs out.
func retrying(ctx context.Context, p RetryPolicy, attempt func() error) error {
	for n := 1; ; n++ {
		err := attempt()
		if err == nil || !retryable(err) || n >= p.Attempts {
			return err
		}
		if serr := sleepCtx(ctx, p.backoff(n)); serr != nil {
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
