package main

import (
	"context"
	"fmt"
	"time"
)

// pollInterval is how often the workloads look at their counters while they
// wait for a condition.
const pollInterval = 20 * time.Millisecond

// progressInterval is how often a long wait prints where it stands.
const progressInterval = 5 * time.Second

// waitUntil calls check every pollInterval until it reports done, fails, ctx
// ends or timeout passes. While it waits it logs check's status every
// progressInterval; errors carry the last status, so that a wait that timed
// out shows the counts it was waiting on.
func waitUntil(ctx context.Context, what string, timeout time.Duration, logf logFunc,
	check func(ctx context.Context) (done bool, status string, err error)) error {
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	logged := start
	for {
		done, status, err := check(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		case done:
			return nil
		}
		if time.Since(logged) >= progressInterval {
			logged = time.Now()
			logf("%s: %s (%.0fs)", what, status, time.Since(start).Seconds())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w; %s", what, ctx.Err(), status)
		case <-deadline.C:
			return fmt.Errorf("%s: not done after %v; %s", what, timeout, status)
		case <-tick.C:
		}
	}
}
