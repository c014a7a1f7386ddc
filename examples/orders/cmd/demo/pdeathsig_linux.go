package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel stop an instance if the demo dies
// without stopping it.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
