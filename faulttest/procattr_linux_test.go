package faulttest

import (
	"os/exec"
	"syscall"
)

// setPdeathsig makes the kernel kill cmd when the test binary dies, so that
// a crashed or timed-out suite leaves no redis-server or helper behind.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
