package testdb

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel stop the throwaway server if the
// test process dies without running Main's cleanup (a panic, a timeout, a
// SIGKILL).
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
