package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/redispubsub"
)

// The durabus workloads: end to end between two buses (e2e), Publish alone
// (publish), and the latency at a fixed rate (latency.go). Every bus runs
// with durabus's defaults (synchronous=FULL, WAL) on a file of its own and
// a redispubsub adapter on a Redis client of its own, as two services would.

// Timeouts of the durabus workloads' waits.
const (
	groupTimeout    = 30 * time.Second // a consumer's hello reaching the publisher
	completeTimeout = 10 * time.Minute // every outbox row COMPLETED
	closeTimeout    = time.Minute      // a bus's Close
)

// bus is the bus type of the benchmark: it publishes and consumes
// benchEvent only.
type bus = durabus.Bus[benchEvent, benchEvent]

// handlerFunc handles one benchEvent.
type handlerFunc = func(ctx context.Context, env durabus.Envelope[benchEvent]) error

// benchBus is a bus with what it was opened on.
type benchBus struct {
	*bus
	name   string
	path   string
	client *redis.Client
	ps     *redispubsub.PubSub
}

// openBus opens bus name on a fresh file in the workload's directory, with
// its own Redis client that connects to addr ("" means the Redis of the
// run) and its own redispubsub adapter. A non-nil handle is added as the
// bus's handler of benchEvent.
func openBus(ctx context.Context, w *workEnv, name, addr string, handle handlerFunc) (*benchBus, error) {
	var client *redis.Client
	var err error
	if addr == "" {
		client, err = newRedisClient(w.redisURL)
	} else {
		client, err = newRedisClientAt(w.redisURL, addr)
	}
	if err != nil {
		return nil, err
	}
	b := &benchBus{name: name, path: w.path(name + ".db"), client: client, ps: redispubsub.New(client)}
	logger := slog.New(slog.DiscardHandler)
	if w.cfg.Verbose {
		logger = slog.New(slog.NewTextHandler(w.cfg.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("bus", name)
	}
	b.bus, err = durabus.Open[benchEvent, benchEvent](ctx, durabus.Config{
		Name:          name,
		Path:          b.path,
		PubSub:        b.ps,
		ChannelPrefix: w.prefix,
		Logger:        logger,
	})
	if err != nil {
		_ = b.ps.Close()
		_ = client.Close()
		return nil, fmt.Errorf("open bus %s: %w", name, err)
	}
	if handle != nil {
		if err := durabus.Handle(b.bus, handle); err != nil {
			return nil, errors.Join(fmt.Errorf("bus %s: %w", name, err), b.close())
		}
	}
	return b, nil
}

// close closes the bus, then its adapter, then its client.
func (b *benchBus) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	if err := b.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close bus %s: %w", b.name, err))
	}
	if err := b.ps.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close the adapter of %s: %w", b.name, err))
	}
	if err := b.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close the Redis client of %s: %w", b.name, err))
	}
	return errors.Join(errs...)
}

// closeAll closes the buses that are not nil.
func closeAll(buses ...*benchBus) error {
	var errs []error
	for _, b := range buses {
		if b != nil {
			errs = append(errs, b.close())
		}
	}
	return errors.Join(errs...)
}

// waitForGroup waits until pub has heard the hello of consumer group group,
// so that the events it publishes from then on are tracked per group.
func waitForGroup(ctx context.Context, w *workEnv, pub *benchBus, group string) error {
	return waitUntil(ctx, "waiting for "+pub.name+" to hear "+group, groupTimeout, w.logf,
		func(ctx context.Context) (bool, string, error) {
			s, err := pub.Stats(ctx)
			if err != nil {
				return false, "", err
			}
			known := slices.ContainsFunc(s.Groups, func(g durabus.GroupStats) bool { return g.Name == group && g.Online })
			return known, fmt.Sprintf("%d groups known", len(s.Groups)), nil
		})
}

// publishAll publishes events 0..n-1 from callers goroutines, each call
// returning after its commit, and returns how long that took.
func publishAll(ctx context.Context, b *benchBus, n, callers int) (time.Duration, error) {
	var next atomic.Int64
	g, gctx := newGroup(ctx)
	start := time.Now()
	for range callers {
		g.Go(func() error {
			for {
				seq := int(next.Add(1) - 1)
				if seq >= n {
					return nil
				}
				if _, err := b.Publish(gctx, newEvent(seq)); err != nil {
					return fmt.Errorf("publish event %d: %w", seq, err)
				}
			}
		})
	}
	err := g.Wait()
	return time.Since(start), err
}

// waitCompleted waits until handled reached n and every outbox row of pub
// is COMPLETED; it fails when it finds a DEAD row. An outbox row completes
// only after its handler ran, so it looks at the outbox only once handled
// reached n; from then on each poll asks for the first row not COMPLETED
// from a watermark that only moves forward, along the rowid. That costs
// one pass over the table in all, whatever indexes the schema has, rather
// than a count of a million rows every poll.
func waitCompleted(ctx context.Context, w *workEnv, pub *benchBus, n int, handled *atomic.Int64, timeout time.Duration) error {
	db, err := openReader(pub.path)
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	var mark int64 // every row below it is COMPLETED
	return waitUntil(ctx, "waiting for "+pub.name+"'s outbox to complete", timeout, w.logf,
		func(ctx context.Context) (bool, string, error) {
			h := handled.Load()
			status := fmt.Sprintf("handled %d of %d", h, n)
			if h < int64(n) {
				return false, status, nil
			}
			id, state, err := firstUnfinished(ctx, db, pub.name, mark)
			switch {
			case err != nil:
				return false, status, err
			case id == 0:
				return true, status, nil
			case state == "DEAD":
				return false, status, fmt.Errorf("outbox row %d is DEAD; %s", id, status)
			}
			mark = id
			return false, fmt.Sprintf("%s; outbox row %d is still %s", status, id, state), nil
		})
}

// countingHandler returns a handler that counts the events it ran.
func countingHandler(n *atomic.Int64) handlerFunc {
	return func(context.Context, durabus.Envelope[benchEvent]) error {
		n.Add(1)
		return nil
	}
}

// runE2E measures durabus end to end: 256 (e2ePublishers) goroutines publish on one
// bus, a second bus (its own file, its own Redis client) handles every
// event, and the rate is the events over the time from the first publish
// until every outbox row of the publisher is COMPLETED, that is until the
// consumer reported every handler done. The counts are then checked in
// both files.
func runE2E(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultE2EN)
	t, err := endToEnd(ctx, w, n, func(ctx context.Context, pub *benchBus) (time.Duration, error) {
		return publishAll(ctx, pub, n, e2ePublishers)
	})
	if err != nil {
		return err
	}
	t.Note = fmt.Sprintf("%d events, %d publishers, 2 buses; %s", n, e2ePublishers, t.Note)
	r.E2E = t
	return nil
}

// runE2EBatch is runE2E with one goroutine that publishes batches of
// batchSize events with PublishBatch, one commit each, as the naive loop
// commits its batches.
func runE2EBatch(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultE2EN)
	t, err := endToEnd(ctx, w, n, func(ctx context.Context, pub *benchBus) (time.Duration, error) {
		start := time.Now()
		batch := make([]benchEvent, 0, batchSize)
		for seq := 0; seq < n; seq += len(batch) {
			batch = batch[:0]
			for i := seq; i < min(seq+batchSize, n); i++ {
				batch = append(batch, newEvent(i))
			}
			if _, err := pub.PublishBatch(ctx, batch); err != nil {
				return 0, fmt.Errorf("publish events %d..%d: %w", seq, seq+len(batch)-1, err)
			}
		}
		return time.Since(start), nil
	})
	if err != nil {
		return err
	}
	t.Note = fmt.Sprintf("%d events, PublishBatch of %d from 1 goroutine, 2 buses; %s", n, batchSize, t.Note)
	r.E2EBatch = t
	return nil
}

// endToEnd runs an end-to-end workload of n events that publish publishes
// on the publishing bus.
func endToEnd(ctx context.Context, w *workEnv, n int, publish func(context.Context, *benchBus) (time.Duration, error)) (t *throughput, err error) {
	var handled atomic.Int64
	pub, err := openBus(ctx, w, "bench-pub", "", nil)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeAll(pub)) }()
	con, err := openBus(ctx, w, "bench-con", "", countingHandler(&handled))
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeAll(con)) }()
	if err := waitForGroup(ctx, w, pub, con.name); err != nil {
		return nil, err
	}

	stopProfile, err := startCPUProfile(w.cfg.CPUProfile)
	if err != nil {
		return nil, err
	}
	watch := w.startWatch(ctx)
	published, err := publish(ctx, pub)
	if err != nil {
		return nil, errors.Join(err, stopProfile())
	}
	w.logf("%d published in %.1fs (%.0f/s); waiting for the consumer", n, published.Seconds(), float64(n)/published.Seconds())
	err = waitCompleted(ctx, w, pub, n, &handled, completeTimeout)
	elapsed, cpu := watch.stop(ctx)
	if err := errors.Join(err, stopProfile()); err != nil {
		return nil, err
	}
	if err := closeAll(pub, con); err != nil {
		return nil, err
	}
	pub, con = nil, nil // closed: the deferred closeAll skips them
	if _, _, err := verifyCompleted(ctx, w.path("bench-pub.db"), w.path("bench-con.db"), n); err != nil {
		return nil, fmt.Errorf("after the run: %w", err)
	}
	return &throughput{N: n, Elapsed: elapsed, CPU: cpu, Note: fmt.Sprintf("publish took %.1fs; verified %d+%d COMPLETED",
		published.Seconds(), n, n)}, nil
}

// runPublish measures Publish alone: 64 (publishers) goroutines publish on one
// bus, each call returning after its row's commit. Nobody consumes; the
// bus's relay sends the rows to Redis meanwhile, as it would in service.
func runPublish(ctx context.Context, w *workEnv, r *results) (err error) {
	n := w.cfg.n(defaultPublishN)
	b, err := openBus(ctx, w, "bench-one", "", nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(b)) }()
	watch := w.startWatch(ctx)
	if _, err := publishAll(ctx, b, n, publishers); err != nil {
		return err
	}
	elapsed, cpu := watch.stop(ctx)
	if err := closeAll(b); err != nil {
		return err
	}
	b = nil
	db, err := openReader(w.path("bench-one.db"))
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	c, err := allStates(ctx, db, outboxTable)
	if err != nil {
		return err
	}
	if total := c["PENDING"] + c["PROCESSING"] + c["COMPLETED"] + c["DEAD"]; total != n {
		return fmt.Errorf("expected %d outbox rows, found %s", n, c)
	}
	r.Publish = &throughput{N: n, Elapsed: elapsed, CPU: cpu, Note: fmt.Sprintf("%d events, %d callers, each returns after its commit; verified", n, publishers)}
	return nil
}

// startCPUProfile starts a CPU profile into path, if path is set, and
// returns what stops it.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		return nil
	}, nil
}
