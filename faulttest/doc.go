// Package faulttest is durabus's fault suite. Publishers and consumers run
// as separate processes (re-executions of the test binary), each with its
// own SQLite file, against a redis-server that every scenario starts for
// itself on a free port. The scenarios kill processes with SIGKILL, restart
// Redis, cut and blackhole connections through a TCP proxy, stall consumers
// and feed them garbage, then count what was published, acknowledged,
// delivered, lost and handled more than once:
//
//	go test ./faulttest -v -timeout 15m
//
// Every scenario prints one line per run:
//
//	scenario=NAME published=N acknowledged=N delivered=N lost=N duplicates=N
//
// and passes when lost is 0. The suite is skipped when redis-server is not
// on PATH, and under -race (its helper processes would be race builds, too
// slow for its time budget). FAULTTEST_SEED fixes the seed of the random
// fault timings.
package faulttest
