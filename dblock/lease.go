package dblock

import (
	"fmt"
	"math"
	"time"
)

// DefaultLease is the lease of a lock whose acquisition does not set one.
const DefaultLease = 60 * time.Second

// minLease is the shortest lease: the server's idle timeouts count whole
// seconds.
const minLease = time.Second

// Lease bounds how long a lock outlives a holder that stopped talking to
// the server (a process frozen, a network silently cut): the server ends
// the transaction once it has been idle for the lease, and the holder
// learns it first (Lost, fn's context). Keep each statement shorter than
// the lease minus twice the margin (a fifth, at least 200 ms). Rounded up
// to whole seconds, at least 1 s; the default is DefaultLease. See "The
// lease" in the package documentation.
func Lease(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d < minLease {
			return fmt.Errorf("dblock: Lease must be at least %v, got %v", minLease, d)
		}
		lc.lease = d
		return nil
	}
}

// leaseSeconds is d rounded up to the whole seconds the server counts.
func leaseSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// leaseMargin is how much before the server's bound the holder gives up.
func leaseMargin(d time.Duration) time.Duration {
	return max(d/5, 200*time.Millisecond)
}
