package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestFnContextCauseWithTransactionTimeout (issue 14 item 17): with gorm's
// DefaultTransactionTimeout set on the *gorm.DB, fn's context still ends
// with the library's cause. When the lock is lost (its connection killed
// from outside), context.Cause matches ErrLockLost, not a bare
// context.Canceled; when DefaultTransactionTimeout itself ends the
// transaction, the cause matches ErrLockLost and context.DeadlineExceeded.
func TestFnContextCauseWithTransactionTimeout(t *testing.T) {
	e := setup(t)
	killer := otherPool(t)
	for _, c := range []struct {
		name    string
		timeout time.Duration
		kill    bool
		want    []error
	}{
		{"lock lost", 30 * time.Second, true, []error{dblock.ErrLockLost}},
		{"DefaultTransactionTimeout ran out", time.Second, false, []error{dblock.ErrLockLost, context.DeadlineExceeded}},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := openGorm(t, &gorm.Config{DefaultTransactionTimeout: c.timeout})
			l := faultLocker(t, db, e.table)
			var cause error
			start := time.Now()
			err := l.Do(cancelOnly(t), dblock.Resource("k"), func(ctx context.Context, tx *gorm.DB) error {
				if c.kill {
					killConnection(t, killer, connectionID(t, tx))
				}
				select {
				case <-ctx.Done():
					cause = context.Cause(ctx)
				case <-time.After(opTimeout):
					t.Errorf("fn's context not done %v after the lock's end", opTimeout)
				}
				return nil
			}, dblock.Lease(3*time.Second))
			t.Logf("fn's context ended after %v with cause %v; Do = %v", time.Since(start).Round(time.Millisecond), cause, err)
			for _, w := range c.want {
				if !errors.Is(cause, w) {
					t.Errorf("context.Cause(fn's ctx) = %v, want it to match %v", cause, w)
				}
			}
			wantLost(t, "Do", err)
		})
	}
}
