package dblock

// lockMode is the mode a key is taken in: the value of the txlock.mode
// attribute of the metrics and spans (telemetry.go).
type lockMode uint8

const (
	modeExclusive lockMode = iota // the default: one holder at a time
	modeShared                    // Shared: any number of shared holders at once
	modeSemaphore                 // Permits: one of a key's permits
	numModes
)

var modeNames = [numModes]string{"exclusive", "shared", "semaphore"}

func (m lockMode) String() string { return modeNames[m] }

// modeOf returns the mode lc takes key in.
func (lc *lockConfig) modeOf(key Key) lockMode {
	if lc.permits > 0 {
		return modeSemaphore
	}
	if lc.shared(key) {
		return modeShared
	}
	return modeExclusive
}
