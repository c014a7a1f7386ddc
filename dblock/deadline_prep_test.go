package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestDeadlineDuringLeasePreset: a context deadline that runs out while a
// Locker presets the lease on a connection new to it (before BEGIN) is
// reported as the deadline. CI once saw the driver's "bad connection"
// instead (TestSmallPoolHotKey: the deadline closed the connection right
// after the lease statement, and the id read met the closed connection);
// this test then met the same after BEGIN, in the locking read (1 run in 6
// before the fix). It checks that every deadline in the first statements,
// wherever it lands, is reported as one. Each round uses a new Locker, so that the preset
// runs; the deadlines are spread over the time the first statements take.
func TestDeadlineDuringLeasePreset(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	var ok, ran int
	for round := range 200 {
		l := e.locker(t)
		d := time.Duration(100+round*15) * time.Microsecond
		cctx, cancel := context.WithTimeout(ctx, d)
		err := l.Do(cctx, dblock.Resource("deadline:preset"), func(context.Context, *gorm.DB) error { return nil })
		cancel()
		_ = l.Close()
		switch {
		case err == nil:
			ran++
		case errors.Is(err, context.DeadlineExceeded):
			ok++
		default:
			t.Fatalf("round %d (deadline %v): %v, want the deadline", round, d, err)
		}
	}
	t.Logf("200 rounds: %d ran out of their deadline, %d ran", ok, ran)
}
