package main

import (
	"go/token"
	"testing"
)

// TestReview20MinIntervalSubMicrosecond: txlockgen accepted mininterval=
// values that dblock refuses at every call:
// "mininterval=500ns" parses (durationTerm only asks for a positive
// duration) and renders dblock.MinInterval(time.Duration(500)), which
// compiles, and then fails every call of the generated method with
// "MinInterval must be at least 1µs". Bad input must fail at generation,
// at the directive's position, not in production on every call. (A value
// that is not a whole number of microseconds, such as 1500ns, is
// silently truncated by MinInterval: also worth refusing or naming.)
func TestReview20MinIntervalSubMicrosecond(t *testing.T) {
	pos := token.Position{Filename: "x.go", Line: 3, Column: 1}
	for _, v := range []string{"500ns", "999ns", "1500ns"} {
		s, err := parseLock("//txlock:lock resource=job:{ID} mininterval="+v, pos)
		if err == nil {
			t.Errorf("mininterval=%s accepted (%v): the generated call fails at run time with MinInterval must be at least 1µs", v, s.minIntvl)
		}
	}
}
