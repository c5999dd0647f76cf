// Command durabench benchmarks durabus against the baselines it must beat,
// in one run against one Redis, and prints what it measured.
//
// Every workload moves 300-byte events (the JSON envelope) and every SQLite
// file runs in WAL mode with synchronous=FULL. The workloads, in order:
//
//	raw      Redis pub/sub alone: pipelined PUBLISH to one subscriber, nothing stored
//	naive    the naive outbox loop: outbox transaction + PUBLISH pipeline per 1000
//	         events; the consumer inserts and updates each batch in its inbox
//	insert   SQLite inserts alone, 1000 per transaction: the ceiling of a SQLite outbox
//	e2e      durabus end to end between two buses, 256 concurrent publishers, until
//	         every outbox row is COMPLETED
//	publish  durabus Publish, 64 concurrent callers, each returning after its commit
//	latency  Publish call to handler at 1,000 and 10,000 events/s offered: p50, p99, p999
//	drain    1,000,000 events published while Redis is unreachable, then drained;
//	         run in a child process, which also reports its peak RSS
//
// Redis is REDIS_URL, or else a redis-server from PATH that durabench starts
// on a free port (without persistence) and stops at the end.
//
// Usage:
//
//	durabench [-json] [-svg file] [-scale f] [-only list] [-dir dir] [-cpuprofile file] [-v]
//
// The table ends with the project's performance targets and whether this
// run met them. The table goes to stdout, progress to stderr. With -json, stdout carries
// a single JSON object instead (raw_eps, naive_eps, insert_ceiling_eps,
// e2e_eps, publish_eps, p99_ms_at_1k, p99_ms_at_10k, drain_eps,
// drain_peak_rss_mb) and the table goes to stderr. A workload that fails
// is reported and the others still run; the exit status is then 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		os.Exit(childMain(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli runs the benchmark as the command line asks and returns the exit code.
func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("durabench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonOut := fs.Bool("json", false, "print one JSON object to stdout; the table and progress go to stderr")
	svg := fs.String("svg", "", "write a chart of the results to this SVG `file`")
	scale := fs.Float64("scale", 1, "multiply every event count by `f` (e.g. 0.01 for a quick smoke run)")
	only := fs.String("only", "", "run only these comma-separated workloads: "+strings.Join(workloadNames, ","))
	dir := fs.String("dir", "", "put the SQLite files in `dir` and keep them (default: a temporary directory, removed)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the durabus e2e workload to `file`")
	verbose := fs.Bool("v", false, "log durabus's warnings to stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: durabench [flags]\n\n"+
			"Benchmarks durabus against Redis pub/sub, a naive outbox loop and plain SQLite inserts.\n"+
			"Uses the Redis at REDIS_URL, or starts a redis-server from PATH.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "durabench: unexpected arguments %q\n", fs.Args())
		fs.Usage()
		return 2
	}
	cfg := config{
		RedisURL:   os.Getenv("REDIS_URL"),
		Scale:      *scale,
		Dir:        *dir,
		CPUProfile: *cpuProfile,
		Verbose:    *verbose,
		Stderr:     stderr,
	}
	for w := range strings.SplitSeq(*only, ",") {
		if w = strings.TrimSpace(w); w != "" {
			cfg.Only = append(cfg.Only, w)
		}
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(stderr, "durabench: %v\n", err)
		return 2
	}

	res, err := run(ctx, cfg)
	if res == nil {
		fmt.Fprintf(stderr, "durabench: %v\n", err)
		return 1
	}
	table := stdout
	if *jsonOut {
		table = stderr
	}
	code := 0
	fail := func(err error) {
		fmt.Fprintf(stderr, "durabench: %v\n", err)
		code = 1
	}
	if err := writeTable(table, res); err != nil {
		fail(err)
	}
	if *jsonOut {
		if err := writeJSON(stdout, res); err != nil {
			fail(err)
		}
	}
	if *svg != "" {
		if err := os.WriteFile(*svg, renderSVG(res), 0o644); err != nil {
			fail(fmt.Errorf("-svg: %w", err))
		}
	}
	if err != nil {
		fail(err)
	}
	if len(res.Errors) > 0 {
		code = 1
	}
	return code
}
