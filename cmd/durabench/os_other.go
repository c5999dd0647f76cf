//go:build !linux

package main

import (
	"os/exec"
	"time"
)

// dieWithParent does nothing where there is no parent-death signal; Stop
// and the drain's context still end the processes on a normal exit.
func dieWithParent(*exec.Cmd) {}

// settleDisk does nothing here; on Linux it flushes the page cache between
// workloads.
func settleDisk() {}

// processCPU is 0 here: the CPU figures are measured on Linux.
func processCPU() time.Duration { return 0 }
