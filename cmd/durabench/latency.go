package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/durabus/durabus"
)

// latencyRates are the offered rates of the latency workload's phases, in
// events per second, in the order they run.
var latencyRates = []int{1_000, 10_000}

// warmupShare is the share of each latency phase's first events left out of
// its percentiles.
const warmupShare = 0.1

// runLatency measures the latency from a Publish call to the consumer's
// handler at fixed offered rates, between two buses as in runE2E. A pacer
// hands event numbers to a pool of 64 (publishers) goroutines at the phase's
// rate, so that one slow Publish call does not lower the offered rate; each
// event carries the time just before its Publish call, and the handler
// records its own time minus that one. Each phase waits until every one of
// its events was handled before the next starts. Before the buses open, it
// times the disk alone (measureDiskFloor).
func runLatency(ctx context.Context, w *workEnv, r *results) (err error) {
	phase := w.cfg.latencyPhase()
	counts := make([]int, len(latencyRates))
	total := 0
	for i, rate := range latencyRates {
		counts[i] = max(int(float64(rate)*phase.Seconds()), 1)
		total += counts[i]
	}
	// lat[seq] is event seq's latency in ns, 0 until it was handled; a
	// copy handled again keeps the first.
	lat := make([]atomic.Int64, total)
	var handled atomic.Int64
	handle := func(_ context.Context, env durabus.Envelope[benchEvent]) error {
		d := max(time.Now().UnixNano()-env.Payload.Sent, 1)
		if seq := env.Payload.Seq; seq >= 0 && seq < total && lat[seq].CompareAndSwap(0, d) {
			handled.Add(1)
		}
		return nil
	}
	if r.DiskFloor, err = measureDiskFloor(ctx, w, phase); err != nil {
		return err
	}
	pub, err := openBus(ctx, w, "bench-pub", "", nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(pub)) }()
	con, err := openBus(ctx, w, "bench-con", "", handle)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(con)) }()
	if err := waitForGroup(ctx, w, pub, con.name); err != nil {
		return err
	}

	jobs := make(chan int, slices.Max(latencyRates)) // a second of events at most
	g, gctx := newGroup(ctx)
	for range publishers {
		g.Go(func() error {
			for seq := range jobs {
				if _, err := pub.Publish(gctx, newEvent(seq)); err != nil {
					return fmt.Errorf("publish event %d: %w", seq, err)
				}
			}
			return nil
		})
	}
	phases := func() error {
		defer close(jobs)
		first := 0
		for i, rate := range latencyRates {
			n := counts[i]
			took, err := pace(gctx, rate, n, first, jobs)
			if err != nil {
				return err
			}
			want := int64(first + n)
			err = waitUntil(gctx, fmt.Sprintf("waiting for the %d/s phase's events", rate), completeTimeout, w.logf,
				func(context.Context) (bool, string, error) {
					h := handled.Load()
					return h >= want, fmt.Sprintf("handled %d of %d", h, want), nil
				})
			if err != nil {
				return err
			}
			res := percentiles(lat[first+int(float64(n)*warmupShare) : first+n])
			res.Rate, res.Issued = rate, float64(n)/took.Seconds()
			w.logf("%d/s: p50 %.2f ms, p99 %.2f ms, p999 %.2f ms over %d events (issued %.0f/s)",
				rate, res.P50, res.P99, res.P999, res.Samples, res.Issued)
			r.Latency = append(r.Latency, res)
			first += n
		}
		return nil
	}
	err = phases()
	if gerr := g.Wait(); gerr != nil {
		err = gerr // a publisher's error, rather than the cancellation it caused
	}
	if err != nil {
		r.Latency = nil
	}
	return err
}

// diskFloorBytes is what the disk-floor probe writes before each fsync:
// about the WAL frames of one Publish committed alone (a table page and
// three index pages).
const diskFloorBytes = 16 << 10

// diskFloorSlots is how many diskFloorBytes slots the probe's file cycles
// through, so that it overwrites a file of fixed size, as SQLite reuses its
// WAL after a checkpoint.
const diskFloorSlots = 256

// measureDiskFloor times one write of diskFloorBytes and its fsync, on a
// file in the workload's directory, issued at the first latency rate for
// phase: the disk's own share of the latency of a Publish that commits
// alone, measured in the same run and on the same disk as the buses.
func measureDiskFloor(ctx context.Context, w *workEnv, phase time.Duration) (*latencyResult, error) {
	rate := latencyRates[0]
	n := max(int(float64(rate)*phase.Seconds()), 1)
	f, err := os.OpenFile(w.path("disk-floor.probe"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk floor: %w", err)
	}
	defer func() { _ = f.Close() }()
	buf := make([]byte, diskFloorBytes)
	lat := make([]atomic.Int64, n)
	took, err := paceEach(ctx, rate, n, func(i int) error {
		t := time.Now()
		if _, err := f.WriteAt(buf, int64(i%diskFloorSlots)*diskFloorBytes); err != nil {
			return fmt.Errorf("disk floor: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("disk floor: %w", err)
		}
		lat[i].Store(max(time.Since(t).Nanoseconds(), 1))
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := percentiles(lat[int(float64(n)*warmupShare):])
	res.Rate, res.Issued = rate, float64(n)/took.Seconds()
	w.logf("disk floor at %d/s: p50 %.2f ms, p99 %.2f ms, p999 %.2f ms", rate, res.P50, res.P99, res.P999)
	return &res, nil
}

// pace sends the numbers first..first+n-1 on jobs at rate per second (see
// paceEach). It returns how long it took.
func pace(ctx context.Context, rate, n, first int, jobs chan<- int) (time.Duration, error) {
	return paceEach(ctx, rate, n, func(i int) error {
		select {
		case jobs <- first + i:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}

// paceEach calls issue with 0..n-1 at rate per second, following a 1 ms
// ticker: at each tick it issues as many as are due since it started. It
// returns how long it took, or the first error of issue.
func paceEach(ctx context.Context, rate, n int, issue func(i int) error) (time.Duration, error) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for issued := 0; issued < n; {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
		for due := min(int(float64(rate)*time.Since(start).Seconds()), n); issued < due; issued++ {
			if err := issue(issued); err != nil {
				return 0, err
			}
		}
	}
	return time.Since(start), nil
}

// percentiles sorts the latencies (ns) and returns their p50, p99 and p999
// in ms, by the nearest-rank method.
func percentiles(lat []atomic.Int64) latencyResult {
	s := make([]int64, len(lat))
	for i := range lat {
		s[i] = lat[i].Load()
	}
	slices.Sort(s)
	at := func(q float64) float64 {
		if len(s) == 0 {
			return 0
		}
		i := min(max(int(math.Ceil(q*float64(len(s))))-1, 0), len(s)-1)
		return float64(s[i]) / 1e6
	}
	return latencyResult{Samples: len(s), P50: at(0.50), P99: at(0.99), P999: at(0.999)}
}
