package dblock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// A release sent into a silent partition is never bounded. Commit and
// Rollback stop the keepalive first (keeper.commit / keeper.rollback) and
// then wait for the driver, which reads the answer with no deadline: the
// lease, which bounds every other statement of the holder, no longer
// applies, Lost never closes, and the call returns only when TCP gives up
// (about 15 minutes with Linux defaults; never through this relay, which
// keeps the connection open). Meanwhile the server ends the transaction
// after the lease and another holder gets the key.

// reviewWithin runs f and fails the test if it has not returned after d;
// it then resets the relay, so that f returns and the test can clean up.
func reviewWithin(t *testing.T, relay interface{ Reset() }, what string, d time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Errorf("%s still blocked after %v (lease %v): a release sent into a partition is not bounded by the lease", what, d, partitionLease)
		relay.Reset()
		return <-done
	}
}

func TestReviewReleaseIntoPartitionHangs(t *testing.T) {
	for _, c := range []struct {
		name    string
		release func(lk *dblock.Lock) error
	}{
		{"Commit", (*dblock.Lock).Commit},
		{"Rollback", (*dblock.Lock).Rollback},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, relay, holderL, waiterL := partitionSetup(t)
			kv := e.kvTable(t)
			ctx := ctxT(t)
			key := dblock.Resource("release-" + c.name)
			lk := leasedLock(t, ctx, holderL, key)
			if err := put(lk.Tx(), kv, "a", 1); err != nil {
				t.Fatal(err)
			}
			relay.Blackhole()
			start := time.Now()
			// Ten leases: the holder would have declared any other
			// statement lost after 1.6 s.
			err := reviewWithin(t, relay, c.name, 10*partitionLease, func() error { return c.release(lk) })
			t.Logf("%s into the partition returned after %v: %v", c.name, time.Since(start).Round(time.Millisecond), err)
			if c.name == "Commit" && !errors.Is(err, dblock.ErrLockLost) {
				t.Errorf("Commit = %v, want ErrLockLost (with ErrCommitUnknown if COMMIT was sent)", err)
			}
			assertFreeSoon(t, waiterL, key)
		})
	}
}

// TestReviewDoReturnIntoPartitionHangs is the same through Do: fn returns
// after the partition began and before the lease ran out, and Do's commit
// (or its rollback, when fn fails) never returns.
func TestReviewDoReturnIntoPartitionHangs(t *testing.T) {
	for _, fnErr := range []error{nil, errors.New("fn failed")} {
		name := "fn nil"
		if fnErr != nil {
			name = "fn error"
		}
		t.Run(name, func(t *testing.T) {
			e, relay, holderL, _ := partitionSetup(t)
			kv := e.kvTable(t)
			ctx := ctxT(t)
			err := reviewWithin(t, relay, "Do", 10*partitionLease, func() error {
				return holderL.Do(ctx, dblock.Resource("do-release"), func(_ context.Context, tx *gorm.DB) error {
					if err := put(tx, kv, "a", 1); err != nil {
						return err
					}
					relay.Blackhole()
					return fnErr
				}, dblock.Lease(partitionLease))
			})
			t.Logf("Do returned %v", err)
		})
	}
}
