package durabus_test

// Integration tests: buses talking through Redis. Those against a real Redis
// run when REDIS_URL is set (CI sets it); the same scenarios run against
// miniredis always. Every test uses bus names, client names and a channel
// prefix with a random suffix, so parallel runs against one Redis do not
// see each other's events.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/redispubsub"
)

const (
	integWait = 60 * time.Second
	integTick = 10 * time.Millisecond
)

// integEvent is the event of the integration tests. Its name is fixed; each
// test isolates its channels with Config.ChannelPrefix.
type integEvent struct {
	N int `json:"n"`
}

func (integEvent) EventName() string { return "durabus.integration.event" }

type integBus = durabus.Bus[integEvent, integEvent]

// integQuickRetry is a RetryPolicy for tests that must not wait long:
// base × attempt, capped.
type integQuickRetry struct{ base, max time.Duration }

func (p integQuickRetry) NextRetry(attempt int) time.Duration {
	return min(p.base*time.Duration(max(attempt, 1)), p.max)
}

func integSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func integCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*integWait)
	t.Cleanup(cancel)
	return ctx
}

// integClients makes a go-redis client named name (CLIENT SETNAME), closed
// when the test ends.
type integClients func(t *testing.T, name string) redis.UniversalClient

// integRealRedis returns clients of the Redis at REDIS_URL, or skips.
func integRealRedis(t *testing.T) integClients {
	t.Helper()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		t.Skip("REDIS_URL not set: skipping integration tests against a real Redis (CI sets it)")
	}
	opts, err := redis.ParseURL(url)
	require.NoError(t, err, "REDIS_URL")
	return func(t *testing.T, name string) redis.UniversalClient {
		t.Helper()
		o := *opts
		o.ClientName = name
		c := redis.NewClient(&o)
		t.Cleanup(func() { assert.NoError(t, c.Close()) })
		require.NoError(t, c.Ping(integCtx(t)).Err(), "Redis at REDIS_URL")
		return c
	}
}

// integMiniredis returns clients of a miniredis started for the test.
func integMiniredis(t *testing.T) integClients {
	t.Helper()
	mr := miniredis.RunT(t)
	return func(t *testing.T, name string) redis.UniversalClient {
		t.Helper()
		c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ClientName: name})
		t.Cleanup(func() { assert.NoError(t, c.Close()) })
		return c
	}
}

// integRedisPubSub wraps client in a redispubsub closed when the test ends.
func integRedisPubSub(t *testing.T, client redis.UniversalClient) *redispubsub.PubSub {
	t.Helper()
	ps := redispubsub.New(client)
	t.Cleanup(func() { assert.NoError(t, ps.Close()) })
	return ps
}

// integOpen opens a bus on a fresh SQLite file, closed when the test ends,
// and returns it with its path.
func integOpen(t *testing.T, cfg durabus.Config) (*integBus, string) {
	t.Helper()
	cfg.Path = filepath.Join(t.TempDir(), cfg.Name+".db")
	bus, err := durabus.Open[integEvent, integEvent](integCtx(t), cfg)
	require.NoError(t, err, "open bus %s", cfg.Name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		assert.NoError(t, bus.Close(ctx), "close bus %s", cfg.Name)
	})
	return bus, cfg.Path
}

// integSeen records which events a handler ran for.
type integSeen struct {
	mu   sync.Mutex
	runs map[int]int
}

func newIntegSeen() *integSeen { return &integSeen{runs: map[int]int{}} }

func (s *integSeen) handler(_ context.Context, env durabus.Envelope[integEvent]) error {
	s.mu.Lock()
	s.runs[env.Payload.N]++
	s.mu.Unlock()
	return nil
}

// distinct is how many of the events [0, n) ran at least once.
func (s *integSeen) distinct(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := 0
	for i := range n {
		if s.runs[i] > 0 {
			c++
		}
	}
	return c
}

func (s *integSeen) missing(n int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for i := range n {
		if s.runs[i] == 0 {
			out = append(out, i)
		}
	}
	return out
}

// integPublish publishes the events [from, to) from a few goroutines, so
// that the writer commits them in groups.
func integPublish(ctx context.Context, bus *integBus, from, to int) error {
	var next atomic.Int64
	next.Store(int64(from))
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				n := int(next.Add(1) - 1)
				if n >= to {
					return
				}
				if _, err := bus.Publish(ctx, integEvent{N: n}); err != nil {
					errs <- fmt.Errorf("publish %d: %w", n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// integOutbox counts the outbox rows of publisher by state, through a second
// connection pool on the bus's file.
func integOutbox(ctx context.Context, db *sql.DB, publisher string) (map[string]int, error) {
	rows, err := db.QueryContext(ctx, `SELECT state, COUNT(*) FROM durabus_outbox WHERE publisher = ? GROUP BY state`, publisher)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		out[state] = n
	}
	return out, rows.Err()
}

// integPair is a publishing bus A and a consuming bus B, each with its own
// SQLite file, go-redis client and redispubsub, as two services would be.
type integPair struct {
	a, b       *integBus
	aName      string
	aDB        *sql.DB
	aPubSub    *integCountingPubSub
	seen       *integSeen
	clientName string // prefix of the go-redis client names of A and B
}

func integOpenPair(t *testing.T, clients integClients, tweak func(*durabus.Config)) *integPair {
	t.Helper()
	sfx := integSuffix(t)
	p := &integPair{aName: "integ-pub-" + sfx, seen: newIntegSeen(), clientName: "durabus-test-" + sfx}
	cfg := func(name string, ps durabus.PubSub) durabus.Config {
		c := durabus.Config{Name: name, PubSub: ps, ChannelPrefix: "durabus-test-" + sfx + ":"}
		if tweak != nil {
			tweak(&c)
		}
		return c
	}
	var pathA string
	p.b, _ = integOpen(t, cfg("integ-sub-"+sfx, integRedisPubSub(t, clients(t, p.clientName+"-b"))))
	require.NoError(t, durabus.Handle(p.b, p.seen.handler))
	p.aPubSub = &integCountingPubSub{PubSub: integRedisPubSub(t, clients(t, p.clientName+"-a"))}
	p.a, pathA = integOpen(t, cfg(p.aName, p.aPubSub))
	p.aDB = envOpenDB(t, pathA)
	return p
}

// waitHandled waits until B ran every event of [0, n).
func (p *integPair) waitHandled(t *testing.T, n int) {
	t.Helper()
	if !assert.Eventually(t, func() bool { return p.seen.distinct(n) == n }, integWait, integTick) {
		missing := p.seen.missing(n)
		t.Fatalf("%d of %d events never reached the handler, e.g. %v", len(missing), n, missing[:min(len(missing), 20)])
	}
}

// waitCompleted waits until every outbox row of A is COMPLETED: B's acks
// came back through Redis.
func (p *integPair) waitCompleted(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	var last map[string]int
	var lastErr error
	if !assert.Eventually(t, func() bool {
		last, lastErr = integOutbox(ctx, p.aDB, p.aName)
		return lastErr == nil && last["COMPLETED"] == n && len(last) == 1
	}, integWait, integTick) {
		t.Fatalf("A's outbox rows did not all become COMPLETED: %v (err %v)", last, lastErr)
	}
}

// integCrossBusAcks is scenarios (a) and (b): A publishes n events, B handles
// them, and B's acks complete A's outbox rows.
func integCrossBusAcks(t *testing.T, clients integClients, n int) {
	ctx := integCtx(t)
	p := integOpenPair(t, clients, nil)

	start := time.Now()
	require.NoError(t, integPublish(ctx, p.a, 0, n))
	published := time.Since(start)

	p.waitHandled(t, n)
	handled := time.Since(start)
	p.waitCompleted(t, ctx, n)
	t.Logf("%d events: published after %v, handled after %v, completed after %v; A sent %d messages",
		n, published, handled, time.Since(start), p.aPubSub.sent.Load())
	stats, err := p.b.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, n, stats.Inbox.Completed, "B's inbox: %+v", stats.Inbox)
	assert.Zero(t, stats.Inbox.Dead, "B's inbox: %+v", stats.Inbox)
}

func TestIntegrationRedisCrossBusAcks(t *testing.T) {
	integCrossBusAcks(t, integRealRedis(t), 1000)
}

func TestIntegrationMiniredisCrossBusAcks(t *testing.T) {
	integCrossBusAcks(t, integMiniredis(t), 1000)
}

// integKill kills, by ID, the pubsub and normal connections of the clients
// whose name starts with prefix (CLIENT KILL ID, after CLIENT LIST TYPE
// pubsub and TYPE normal), and returns how many of each type it killed.
// Killing by name rather than with CLIENT KILL TYPE spares other users of
// a shared Redis.
func integKill(t *testing.T, ctx context.Context, admin *redis.Client, prefix string) (killed map[string]int) {
	t.Helper()
	killed = map[string]int{}
	for _, typ := range []string{"pubsub", "normal"} {
		list, err := admin.Do(ctx, "CLIENT", "LIST", "TYPE", typ).Text()
		require.NoError(t, err)
		for line := range strings.Lines(list) {
			fields := map[string]string{}
			for f := range strings.FieldsSeq(line) {
				k, v, _ := strings.Cut(f, "=")
				fields[k] = v
			}
			if !strings.HasPrefix(fields["name"], prefix) {
				continue
			}
			err := admin.Do(ctx, "CLIENT", "KILL", "ID", fields["id"]).Err()
			if err == nil {
				killed[typ]++
			}
		}
	}
	return killed
}

// (c) The Redis connections of both buses are cut again and again while
// events flow: messages published while B's subscriber reconnects are lost
// by Redis, and acks are lost while A's is; the relay re-sends and B's inbox
// absorbs the copies, so every event is handled and every row completes.
func TestIntegrationRedisConnectionsKilled(t *testing.T) {
	clients := integRealRedis(t)
	ctx := integCtx(t)
	p := integOpenPair(t, clients, func(c *durabus.Config) {
		c.PendingDelay = 200 * time.Millisecond
		c.RetryPolicy = integQuickRetry{base: 50 * time.Millisecond, max: 500 * time.Millisecond}
		c.MaxRetries = 200 // enough re-sends to outlast the cuts
		c.PollInterval = 100 * time.Millisecond
	})
	admin := clients(t, "durabus-test-admin-"+integSuffix(t)).(*redis.Client)

	const waves, perWave = 5, 100
	for w := range waves {
		from, to := w*perWave, (w+1)*perWave
		published := make(chan error, 1)
		go func() { published <- integPublish(ctx, p.a, from, to) }()
		killed := integKill(t, ctx, admin, p.clientName) // while the relay sends this wave
		t.Logf("wave %d: killed %v", w, killed)
		if w == 0 {
			assert.GreaterOrEqual(t, killed["pubsub"], 2, "A's ack and B's event subscriptions should have been cut")
		}
		require.NoError(t, <-published)
		if w%2 == 1 {
			// And once more while the wave is in flight.
			require.Eventually(t, func() bool { return p.seen.distinct(to) > from }, integWait, integTick)
			t.Logf("wave %d, mid-flight: killed %v", w, integKill(t, ctx, admin, p.clientName))
		}
	}

	p.waitHandled(t, waves*perWave)
	p.waitCompleted(t, ctx, waves*perWave)
	t.Logf("A sent %d messages for %d events (%d failed sends)", p.aPubSub.sent.Load(), waves*perWave, p.aPubSub.failures.Load())
}

// integCountingPubSub counts the sends of the PubSub it wraps: messages
// the broker accepted, and calls that failed.
type integCountingPubSub struct {
	*redispubsub.PubSub
	sent, failures atomic.Int64
}

func (c *integCountingPubSub) Publish(ctx context.Context, channel string, msg []byte) error {
	err := c.PubSub.Publish(ctx, channel, msg)
	c.count(1, err)
	return err
}

func (c *integCountingPubSub) PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error {
	err := c.PubSub.PublishBatch(ctx, channels, msgs)
	c.count(len(msgs), err)
	return err
}

// Subscribe counts failures too: a bus sends nothing until it hears acks.
func (c *integCountingPubSub) Subscribe(ctx context.Context, channel string, fn func(context.Context, []byte) error) (func() error, error) {
	unsub, err := c.PubSub.Subscribe(ctx, channel, fn)
	if err != nil {
		c.failures.Add(1)
	}
	return unsub, err
}

func (c *integCountingPubSub) count(n int, err error) {
	if err != nil {
		c.failures.Add(1)
	} else {
		c.sent.Add(int64(n))
	}
}

// integFailingClient is a go-redis client that fails fast while its broker is
// unreachable: no command retries, a small pool, a short dial timeout. It
// dials the address in target, which the test may change.
func integFailingClient(t *testing.T, target *atomic.Value) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr: target.Load().(string),
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, target.Load().(string))
		},
		DialTimeout: 500 * time.Millisecond,
		MaxRetries:  -1,
		PoolSize:    2,
	})
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// integQuick makes a bus re-send and poll fast.
func integQuick(c *durabus.Config) {
	c.PendingDelay = 200 * time.Millisecond
	c.RetryPolicy = integQuickRetry{base: 20 * time.Millisecond, max: 100 * time.Millisecond}
	c.PollInterval = 50 * time.Millisecond
	c.MaxRetries = 100 // the scenarios below test outages, not giving up
}

// integAssertHeld waits until A failed to reach Redis several times (to
// send, or to subscribe to its acks, which the relay waits for), then
// checks that A's unfinished rows are all PENDING and that the failures did
// not count as sends (so they spend none of the rows' retries).
func integAssertHeld(t *testing.T, ctx context.Context, db *sql.DB, publisher string, ps *integCountingPubSub, pending, completed int) {
	t.Helper()
	require.Eventually(t, func() bool { return ps.failures.Load() >= 10 }, integWait, integTick,
		"the bus should have tried, and failed, to reach Redis again and again")
	states, err := integOutbox(ctx, db, publisher)
	require.NoError(t, err)
	want := map[string]int{"PENDING": pending}
	if completed > 0 {
		want["COMPLETED"] = completed
	}
	assert.Equal(t, want, states, "rows stay PENDING while Redis is unreachable")
	var sends int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT COALESCE(MAX(sends), 0) FROM durabus_outbox WHERE publisher = ? AND state = 'PENDING'`,
		publisher).Scan(&sends))
	// 1 when a relay attempt is between its claim and its failure.
	assert.LessOrEqual(t, sends, 1, "%d failed sends were counted against the rows' retries", ps.failures.Load())
}

// (d) Redis is unreachable from the start (a port nobody listens on):
// Publish still succeeds, since it only writes the outbox; the relay's sends
// fail and the rows stay PENDING. Once the network comes back (the client's
// dialer is pointed at a live Redis), everything is delivered without any
// manual call.
func TestIntegrationRedisUnreachable(t *testing.T) {
	t.Run("full", func(t *testing.T) { integUnreachable(t, false) })
	// A publish-only bus does not subscribe to acks: its rows complete once
	// the broker accepted them.
	t.Run("publish-only", func(t *testing.T) { integUnreachable(t, true) })
}

func integUnreachable(t *testing.T, publishOnly bool) {
	ctx := integCtx(t)
	sfx := integSuffix(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := ln.Addr().String()
	require.NoError(t, ln.Close())

	var target atomic.Value
	target.Store(closedAddr)
	counting := &integCountingPubSub{PubSub: integRedisPubSub(t, integFailingClient(t, &target))}
	var ps durabus.PubSub = counting
	if publishOnly {
		ps = durabus.PublishOnly(counting)
	}
	prefix := "durabus-test-" + sfx + ":"
	cfgA := durabus.Config{Name: "integ-unreachable-" + sfx, PubSub: ps, ChannelPrefix: prefix}
	integQuick(&cfgA)
	cfgA.Path = filepath.Join(t.TempDir(), cfgA.Name+".db")
	a, err := durabus.Open[integEvent, integEvent](ctx, cfgA)
	require.NoError(t, err, "Open must not need the broker: P1 promises durable publishing while Redis is down")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		assert.NoError(t, a.Close(ctx))
	})
	db := envOpenDB(t, cfgA.Path)

	const n = 50
	require.NoError(t, integPublish(ctx, a, 0, n), "Publish must succeed while Redis is unreachable")
	integAssertHeld(t, ctx, db, cfgA.Name, counting, n, 0)

	// The network comes back: a consumer B on a live Redis, then A's client
	// dialing it.
	mr := miniredis.RunT(t)
	cfgB := durabus.Config{Name: "integ-consumer-" + sfx, ChannelPrefix: prefix,
		PubSub: integRedisPubSub(t, integMiniredisClient(t, mr))}
	integQuick(&cfgB)
	b, _ := integOpen(t, cfgB)
	seen := newIntegSeen()
	require.NoError(t, durabus.Handle(b, seen.handler))
	target.Store(mr.Addr())

	p := &integPair{a: a, b: b, aName: cfgA.Name, aDB: db, seen: seen}
	p.waitHandled(t, n)
	p.waitCompleted(t, ctx, n)
}

func integMiniredisClient(t *testing.T, mr *miniredis.Miniredis) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// (d') Redis goes away after the buses opened (miniredis closed, then
// restarted on the same port): Publish goes on succeeding, rows stay
// PENDING while it is down, and once it is back both buses reconnect and
// re-subscribe by themselves and everything is delivered and completed.
func TestIntegrationMiniredisDownAfterOpen(t *testing.T) {
	ctx := integCtx(t)
	sfx := integSuffix(t)
	mr := miniredis.RunT(t)
	var target atomic.Value
	target.Store(mr.Addr())
	counting := &integCountingPubSub{PubSub: integRedisPubSub(t, integFailingClient(t, &target))}
	prefix := "durabus-test-" + sfx + ":"
	cfgB := durabus.Config{Name: "integ-consumer-" + sfx, ChannelPrefix: prefix,
		PubSub: integRedisPubSub(t, integMiniredisClient(t, mr))}
	integQuick(&cfgB)
	b, _ := integOpen(t, cfgB)
	seen := newIntegSeen()
	require.NoError(t, durabus.Handle(b, seen.handler))
	cfgA := durabus.Config{Name: "integ-publisher-" + sfx, ChannelPrefix: prefix, PubSub: counting}
	integQuick(&cfgA)
	a, pathA := integOpen(t, cfgA)
	p := &integPair{a: a, b: b, aName: cfgA.Name, aDB: envOpenDB(t, pathA), seen: seen}

	const before, n = 10, 60
	require.NoError(t, integPublish(ctx, a, 0, before))
	p.waitHandled(t, before)
	p.waitCompleted(t, ctx, before)

	mr.Close()
	require.NoError(t, integPublish(ctx, a, before, n), "Publish must succeed while Redis is down")
	integAssertHeld(t, ctx, p.aDB, cfgA.Name, counting, n-before, before)

	require.NoError(t, mr.Restart())
	p.waitHandled(t, n)
	p.waitCompleted(t, ctx, n)
}
