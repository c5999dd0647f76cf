package main

import (
	"os/exec"
	"syscall"
	"time"
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

// processCPU is the CPU time this process used so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
