//go:build !linux

package testdb

import "os/exec"

// setParentDeathSignal does nothing outside Linux: a test process that dies
// without running Main's cleanup leaves its throwaway server running.
func setParentDeathSignal(*exec.Cmd) {}
