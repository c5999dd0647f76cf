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

// settleDisk asks the kernel to write out what earlier workloads left in
// the page cache, so that their write-back does not slow the next
// workload's fsyncs.
func settleDisk() { syscall.Sync() }
