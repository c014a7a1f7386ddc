package dblock

import (
	"math"
	"time"
)

// leaseSeconds is d rounded up to the whole seconds the server counts.
func leaseSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// leaseMargin is how much before the server's bound the holder gives up.
func leaseMargin(d time.Duration) time.Duration {
	return max(d/5, 200*time.Millisecond)
}
