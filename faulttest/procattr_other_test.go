//go:build !linux

package faulttest

import "os/exec"

// setPdeathsig does nothing where there is no parent-death signal: helper
// processes still exit when their stdin closes.
func setPdeathsig(*exec.Cmd) {}
