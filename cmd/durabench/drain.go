package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The drain workload: a publisher that cannot reach Redis piles up events
// in its outbox; then Redis comes back and the workload measures how fast
// the backlog drains to a consumer, and how much memory that takes. It runs
// in a child process, so that the peak RSS it reports is its own.

// childFlag, as the first argument, makes durabench run as a workload's
// child process rather than as the benchmark.
const childFlag = "-child"

// drainTimeout bounds the drain child's whole run.
const drainTimeout = 20 * time.Minute

// drainResult is what the drain child prints, as one JSON line.
type drainResult struct {
	N               int     `json:"n"`
	PublishSeconds  float64 `json:"publish_seconds"`
	DrainSeconds    float64 `json:"drain_seconds"`
	PeakRSSMB       float64 `json:"peak_rss_mb"`
	OutboxCompleted int     `json:"outbox_completed"`
	InboxCompleted  int     `json:"inbox_completed"`
	// The CPU time the drain used, in the child and in Redis.
	ProcessCPUSeconds float64 `json:"process_cpu_seconds"`
	RedisCPUSeconds   float64 `json:"redis_cpu_seconds"`
}

// runDrain runs the drain workload in a child process (this executable
// again, with childFlag) and records what it printed.
func runDrain(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultDrainN)
	exe := w.cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("find this executable to run the drain child: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	args := []string{childFlag, "drain", "-redis", w.redisURL, "-n", strconv.Itoa(n), "-dir", w.dir, "-prefix", w.prefix,
		"-t0", strconv.FormatInt(w.start.UnixNano(), 10)}
	if w.cfg.Verbose {
		args = append(args, "-v")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	var stdout bytes.Buffer
	tail := &tailBuffer{max: 2048}
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(w.cfg.Stderr, tail)
	cmd.WaitDelay = 10 * time.Second
	dieWithParent(cmd)
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("the drain child did not finish within %v; its last output: %s", drainTimeout, tail)
		}
		return fmt.Errorf("the drain child failed: %w; its last output: %s", err, tail)
	}
	var res drainResult
	line := lastLine(stdout.String())
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return fmt.Errorf("the drain child's result %q: %w", line, err)
	}
	if res.N != n || res.OutboxCompleted != n || res.InboxCompleted != n || res.DrainSeconds <= 0 {
		return fmt.Errorf("the drain child's result does not add up for %d events: %+v", n, res)
	}
	r.Drain = &throughput{
		N:       n,
		Elapsed: time.Duration(res.DrainSeconds * float64(time.Second)),
		CPU: &cpuUse{
			Process: time.Duration(res.ProcessCPUSeconds * float64(time.Second)),
			Redis:   time.Duration(res.RedisCPUSeconds * float64(time.Second)),
		},
		Note: fmt.Sprintf("%d events published while Redis was unreachable (%.1fs), then drained; peak RSS %.0f MB; verified",
			n, res.PublishSeconds, res.PeakRSSMB),
	}
	r.DrainPeakRSSMB = res.PeakRSSMB
	return nil
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// childMain runs durabench as a child process: args are what follows
// childFlag. It returns the exit code.
func childMain(args []string) int {
	if len(args) == 0 || args[0] != "drain" {
		fmt.Fprintf(os.Stderr, "durabench %s: unknown child %q (known: drain)\n", childFlag, args)
		return 2
	}
	fs := flag.NewFlagSet("durabench "+childFlag+" drain", flag.ContinueOnError)
	var s drainSettings
	fs.StringVar(&s.RedisURL, "redis", "", "Redis URL")
	fs.IntVar(&s.N, "n", defaultDrainN, "events")
	fs.StringVar(&s.Dir, "dir", "", "directory of the SQLite files")
	fs.StringVar(&s.Prefix, "prefix", "durabench:drain:", "channel prefix")
	fs.BoolVar(&s.Verbose, "v", false, "log durabus's warnings")
	t0 := fs.Int64("t0", 0, "when the parent's run started (Unix ns), for the progress lines")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	s.Start = time.Now()
	if *t0 > 0 {
		s.Start = time.Unix(0, *t0)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := drainChild(ctx, s, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "durabench drain child: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "durabench drain child: write the result: %v\n", err)
		return 1
	}
	return 0
}

// drainSettings are the drain child's flags.
type drainSettings struct {
	RedisURL, Dir, Prefix string
	N                     int
	Verbose               bool
	Start                 time.Time // progress lines count from it
}

// drainChild is the drain workload proper. The publisher bus reaches Redis
// through a proxy that starts down, so its relay cannot send and its
// subscription to its own acks cannot be made; the consumer bus reaches
// Redis directly. With the proxy down, 64 (publishers) goroutines publish n
// events; then the proxy comes up, and the drain time runs until every
// event was handled and every outbox row is COMPLETED.
func drainChild(ctx context.Context, s drainSettings, stderr io.Writer) (res drainResult, err error) {
	if s.RedisURL == "" || s.Dir == "" || s.N <= 0 {
		return res, fmt.Errorf("need -redis, -dir and a positive -n")
	}
	start := time.Now()
	if s.Start.IsZero() {
		s.Start = start
	}
	w := &workEnv{
		cfg:      &config{Verbose: s.Verbose, Stderr: stderr},
		redisURL: s.RedisURL,
		dir:      s.Dir,
		prefix:   s.Prefix,
		start:    s.Start,
		logf: func(format string, args ...any) {
			fmt.Fprintf(stderr, "[%6.1fs] drain (child): %s\n", time.Since(s.Start).Seconds(), fmt.Sprintf(format, args...))
		},
	}
	target, err := redisAddr(s.RedisURL)
	if err != nil {
		return res, err
	}
	px, err := startProxy(target)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, px.Close()) }()

	var handled atomic.Int64
	pub, err := openBus(ctx, w, "drain-pub", px.Addr(), nil)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, closeAll(pub)) }()
	w.logf("publisher opened with Redis unreachable in %.1fs", time.Since(start).Seconds())
	con, err := openBus(ctx, w, "drain-con", "", countingHandler(&handled))
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, closeAll(con)) }()

	published, err := publishAll(ctx, pub, s.N, publishers)
	if err != nil {
		return res, err
	}
	w.logf("%d published in %.1fs (%.0f/s) with Redis unreachable; bringing it back", s.N, published.Seconds(), float64(s.N)/published.Seconds())
	meter, err := newRedisClient(s.RedisURL)
	if err != nil {
		return res, err
	}
	defer func() { _ = meter.Close() }()
	watch := startWatch(ctx, meter)
	px.SetUp(true)
	if err := waitCompleted(ctx, w, pub, s.N, &handled, drainTimeout); err != nil {
		return res, err
	}
	drained, cpu := watch.stop(ctx)
	w.logf("drained in %.1fs (%.0f/s)", drained.Seconds(), float64(s.N)/drained.Seconds())
	if err := closeAll(pub, con); err != nil {
		return res, err
	}
	pub, con = nil, nil
	out, in, err := verifyCompleted(ctx, w.path("drain-pub.db"), w.path("drain-con.db"), s.N)
	if err != nil {
		return res, fmt.Errorf("after the drain: %w", err)
	}
	rss, err := peakRSSMB()
	if err != nil {
		return res, err
	}
	return drainResult{
		N:               s.N,
		PublishSeconds:  published.Seconds(),
		DrainSeconds:    drained.Seconds(),
		PeakRSSMB:       rss,
		OutboxCompleted: out["COMPLETED"],
		InboxCompleted:  in["COMPLETED"],

		ProcessCPUSeconds: cpu.Process.Seconds(),
		RedisCPUSeconds:   cpu.Redis.Seconds(),
	}, nil
}

// peakRSSMB is this process's peak resident set size (VmHWM) in MiB.
func peakRSSMB() (float64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak RSS: %w", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kib, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				return 0, fmt.Errorf("peak RSS: parse %q: %w", sc.Text(), err)
			}
			return kib / 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("peak RSS: %w", err)
	}
	return 0, errors.New("peak RSS: no VmHWM line in /proc/self/status")
}
