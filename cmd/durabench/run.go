package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Default sizes of the workloads at -scale 1.
const (
	defaultRawN         = 500_000
	defaultNaiveN       = 200_000
	defaultInsertN      = 200_000
	defaultE2EN         = 200_000
	defaultPublishN     = 200_000
	defaultDrainN       = 1_000_000
	defaultLatencyPhase = 5 * time.Second

	// minEvents is the fewest events a scaled workload sends.
	minEvents = 100
	// minLatencyPhase is the shortest latency phase a scale gives.
	minLatencyPhase = time.Second
)

// publishers is how many goroutines call Publish at once in the publish
// and drain workloads: each call returns after its commit, so they bound
// how many events one commit holds.
const publishers = 64

// e2ePublishers is how many goroutines publish in the end-to-end workload,
// which measures the pipeline (a service serving many requests at once),
// as the naive loop it is compared with commits 1000 events at a time.
const e2ePublishers = 256

// workloadNames lists the workloads in the order they run and -only names
// them.
var workloadNames = []string{"raw", "naive", "insert", "e2e", "e2e-batch", "publish", "latency", "drain"}

// config is one run's settings; main fills it from the flags, tests directly.
type config struct {
	RedisURL   string   // the Redis to use; "" starts a redis-server
	Scale      float64  // multiplies every event count
	Only       []string // workloads to run; empty runs them all
	Dir        string   // where the SQLite files go; "" makes a temporary one
	CPUProfile string   // CPU profile of the e2e workload, if set
	Verbose    bool     // durabus's warnings to Stderr

	// LatencyPhase overrides how long each latency phase lasts (0: 5 s
	// scaled, at least minLatencyPhase).
	LatencyPhase time.Duration
	// Exe is the program the drain workload re-runs as its child (""
	// means this executable).
	Exe string

	Stderr io.Writer // progress
}

// n scales a default event count.
func (c *config) n(def int) int {
	return max(int(math.Round(float64(def)*c.Scale)), minEvents)
}

// latencyPhase is how long each latency phase offers its rate.
func (c *config) latencyPhase() time.Duration {
	if c.LatencyPhase > 0 {
		return c.LatencyPhase
	}
	return max(time.Duration(float64(defaultLatencyPhase)*c.Scale), minLatencyPhase)
}

// runs reports whether workload name is selected.
func (c *config) runs(name string) bool { return len(c.Only) == 0 || slices.Contains(c.Only, name) }

// check reports a config that cannot run.
func (c *config) check() error {
	var errs []error
	if !(c.Scale > 0) || math.IsInf(c.Scale, 0) {
		errs = append(errs, fmt.Errorf("-scale %v: must be a positive number", c.Scale))
	}
	for _, w := range c.Only {
		if !slices.Contains(workloadNames, w) {
			errs = append(errs, fmt.Errorf("-only: unknown workload %q (known: %s)", w, strings.Join(workloadNames, ",")))
		}
	}
	return errors.Join(errs...)
}

// throughput is the result of a workload that moves n events.
type throughput struct {
	N       int
	Elapsed time.Duration
	CPU     *cpuUse // nil: not measured
	Note    string
}

// EPS is events per second.
func (t *throughput) EPS() float64 {
	if t == nil || t.Elapsed <= 0 {
		return 0
	}
	return float64(t.N) / t.Elapsed.Seconds()
}

// latencyResult is one phase of the latency workload.
type latencyResult struct {
	Rate           int     // offered events per second
	Issued         float64 // events per second the pacer actually issued
	Samples        int     // after the warm-up
	P50, P99, P999 float64 // milliseconds, publish call to handler
}

// results is everything one run measured. A workload that did not run (or
// failed) leaves its field nil.
type results struct {
	Raw, Naive, Insert, E2E, E2EBatch, Publish, Drain *throughput
	Latency                                           []latencyResult // at 1k/s, then 10k/s
	DrainPeakRSSMB                                    float64
	Errors                                            map[string]error // by workload

	// DiskFloor is the disk alone at the first latency rate: one write of
	// diskFloorBytes and an fsync (see measureDiskFloor).
	DiskFloor *latencyResult

	Redis  string // version and where
	Scale  float64
	CPUs   int
	GoVer  string
	Total  time.Duration
	Finish time.Time
}

// Saturated reports whether the pacer could not issue the offered rate:
// Publish calls took so long that every publisher goroutine was busy and
// the queue of due events filled up.
func (l latencyResult) Saturated() bool { return l.Issued < 0.95*float64(l.Rate) }

// latencyAt returns the phase at rate, or nil.
func (r *results) latencyAt(rate int) *latencyResult {
	for i := range r.Latency {
		if r.Latency[i].Rate == rate {
			return &r.Latency[i]
		}
	}
	return nil
}

// logFunc prints one progress line.
type logFunc func(format string, args ...any)

// workEnv is what a workload gets: the run's settings, the Redis, a fresh
// directory and a channel prefix of its own.
type workEnv struct {
	cfg      *config
	redisURL string
	dir      string
	prefix   string    // channel prefix, unique to the run and the workload
	start    time.Time // when the run started; progress lines count from it
	logf     logFunc
	// redis reads the Redis server's CPU time for stopwatches (nil: not
	// counted).
	redis *redis.Client
}

// startWatch starts timing the measured part of the workload.
func (w *workEnv) startWatch(ctx context.Context) *stopwatch { return startWatch(ctx, w.redis) }

// path is a file in the workload's directory.
func (w *workEnv) path(name string) string { return filepath.Join(w.dir, name) }

// workloads maps the workload names to what runs them.
var workloads = map[string]func(ctx context.Context, w *workEnv, r *results) error{
	"raw":       runRaw,
	"naive":     runNaive,
	"insert":    runInsert,
	"e2e":       runE2E,
	"e2e-batch": runE2EBatch,
	"publish":   runPublish,
	"latency":   runLatency,
	"drain":     runDrain,
}

// run runs the selected workloads against one Redis and returns what they
// measured. A failed workload is recorded in results.Errors and the others
// still run; run itself fails only when nothing can run at all.
func run(ctx context.Context, cfg config) (*results, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	start := time.Now()
	// runID names the run, so that its channels and files are its own even
	// on a Redis that other runs share.
	runID := strings.ToLower(rand.Text()[:8])
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	dir := cfg.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "durabench-")
		if err != nil {
			return nil, fmt.Errorf("make a directory for the SQLite files: %w", err)
		}
		defer func() { _ = os.RemoveAll(tmp) }()
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("-dir: %w", err)
	}

	redisURL := cfg.RedisURL
	srv, err := findRedis(ctx, redisURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			logf("stop redis-server: %v", err)
		}
	}()
	where := srv.URL + " (REDIS_URL)"
	if srv.Own {
		where = srv.URL + " (started by durabench)"
	}
	logf("redis %s at %s; SQLite files in %s", srv.Version, where, dir)
	meter, err := newRedisClient(srv.URL)
	if err != nil {
		return nil, err
	}
	defer func() { _ = meter.Close() }()

	r := &results{
		Errors: map[string]error{},
		Redis:  "Redis " + srv.Version,
		Scale:  cfg.Scale,
		CPUs:   runtime.NumCPU(),
		GoVer:  runtime.Version(),
	}
	for _, name := range workloadNames {
		if !cfg.runs(name) {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		w := &workEnv{
			cfg:      &cfg,
			redisURL: srv.URL,
			dir:      filepath.Join(dir, runID+"-"+name),
			prefix:   "durabench:" + runID + ":" + name + ":",
			start:    start,
			logf:     func(format string, args ...any) { logf(name+": "+format, args...) },
			redis:    meter,
		}
		if err := os.Mkdir(w.dir, 0o755); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		settleDisk()
		w.logf("start")
		began := time.Now()
		if err := workloads[name](ctx, w, r); err != nil {
			r.Errors[name] = err
			w.logf("FAILED after %.1fs: %v", time.Since(began).Seconds(), err)
			continue
		}
		w.logf("done in %.1fs", time.Since(began).Seconds())
	}
	r.Total = time.Since(start)
	r.Finish = time.Now()
	return r, ctx.Err()
}
