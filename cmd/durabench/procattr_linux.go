package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill cmd when the benchmark dies, so that
// an interrupted run leaves no redis-server or drain child behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
