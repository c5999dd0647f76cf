// Package pubsubtest checks that a durabus PubSub adapter keeps the contract
// the bus relies on. An adapter's tests call Run with a constructor:
//
//	func TestSuite(t *testing.T) {
//		pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
//			return mempubsub.New()
//		})
//	}
//
// Every subtest gets a fresh PubSub, which the suite closes at the end, and
// channel names with a random suffix, so that concurrent runs against one
// shared broker do not interfere.
package pubsubtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// PubSubUnderTest has the methods of the durabus PubSub contract.
type PubSubUnderTest interface {
	// Publish sends msg on channel. It returns once the broker accepted it.
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe calls fn for every message on channel until unsubscribe is
	// called or the PubSub is closed. A message published after Subscribe
	// returned is delivered. unsubscribe is idempotent and returns once no
	// fn call runs or will start.
	Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (unsubscribe func() error, err error)
	// Close releases what the PubSub created. It is idempotent; afterwards
	// Publish and Subscribe fail.
	Close() error
}

// batchPublisher is the optional batch capability of an adapter.
type batchPublisher interface {
	PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error
}

// timeout bounds every wait of the suite.
const timeout = 15 * time.Second

// Run runs the contract's subtests, each on a PubSub made by newPubSub.
func Run(t *testing.T, newPubSub func(t *testing.T) PubSubUnderTest) {
	tests := []struct {
		name string
		run  func(t *testing.T, ps PubSubUnderTest)
	}{
		{"PublishSubscribeRoundTrip", testRoundTrip},
		{"BinarySafePayload", testBinarySafePayload},
		{"EmptyPayload", testEmptyPayload},
		{"LargeMessage", testLargeMessage},
		{"FanOutToEverySubscription", testFanOut},
		{"ChannelIsolation", testChannelIsolation},
		{"UnsubscribeStopsDelivery", testUnsubscribeStopsDelivery},
		{"UnsubscribeIdempotent", testUnsubscribeIdempotent},
		{"SubscribeAgainAfterUnsubscribe", testSubscribeAgain},
		{"ManyMessagesNoLoss", testManyMessagesNoLoss},
		{"ConcurrentFnCalls", testConcurrentFnCalls},
		{"CloseIdempotent", testCloseIdempotent},
		{"PublishAfterCloseFails", testPublishAfterClose},
		{"SubscribeAfterCloseFails", testSubscribeAfterClose},
		{"BatchPublish", testBatchPublish},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := newPubSub(t)
			t.Cleanup(func() { _ = ps.Close() })
			tt.run(t, ps)
		})
	}
}

func testRoundTrip(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	got := collect(t, ps, ch)
	publish(t, ps, ch, []byte("hello"))
	expect(t, got, []byte("hello"))
}

func testBinarySafePayload(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	got := collect(t, ps, ch)
	msg := make([]byte, 0, 512)
	for i := range 256 {
		msg = append(msg, byte(i))
	}
	msg = append(msg, "\r\n$-1\r\n*3\r\n"...) // looks like the Redis protocol
	publish(t, ps, ch, msg)
	expect(t, got, msg)
}

func testEmptyPayload(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	got := collect(t, ps, ch)
	publish(t, ps, ch, []byte{})
	publish(t, ps, ch, []byte("after"))
	// fn calls may overlap, so the order of arrival is free.
	want := map[string]bool{"": true, "after": true}
	for range 2 {
		m := receive(t, got)
		if !want[string(m)] {
			t.Fatalf("unexpected message %q", m)
		}
		delete(want, string(m))
	}
}

func testLargeMessage(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	got := collect(t, ps, ch)
	msg := make([]byte, 1<<20)
	_, _ = rand.Read(msg)
	publish(t, ps, ch, msg)
	expect(t, got, msg)
}

func testFanOut(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	subs := []<-chan []byte{collect(t, ps, ch), collect(t, ps, ch), collect(t, ps, ch)}
	publish(t, ps, ch, []byte("to all"))
	for _, got := range subs {
		expect(t, got, []byte("to all"))
	}
}

func testChannelIsolation(t *testing.T, ps PubSubUnderTest) {
	a, b := channelName(t), channelName(t)
	gotA, gotB := collect(t, ps, a), collect(t, ps, b)
	publish(t, ps, a, []byte("for a"))
	publish(t, ps, b, []byte("for b"))
	expect(t, gotA, []byte("for a"))
	expect(t, gotB, []byte("for b"))
	// A misrouted copy arrives before or with the next round.
	publish(t, ps, a, []byte("a again"))
	publish(t, ps, b, []byte("b again"))
	expect(t, gotA, []byte("a again"))
	expect(t, gotB, []byte("b again"))
	expectNothing(t, gotA)
	expectNothing(t, gotB)
}

func testUnsubscribeStopsDelivery(t *testing.T, ps PubSubUnderTest) {
	t.Run("SiblingRemains", func(t *testing.T) {
		// Two subscriptions on one channel; the first leaves.
		ch := channelName(t)
		gone, unsubscribe := collectUnsub(t, ps, ch)
		stays := collect(t, ps, ch)
		publish(t, ps, ch, []byte("before"))
		expect(t, gone, []byte("before"))
		expect(t, stays, []byte("before"))

		if err := unsubscribe(); err != nil {
			t.Fatalf("unsubscribe: %v", err)
		}
		publish(t, ps, ch, []byte("after"))
		publish(t, ps, ch, []byte("marker"))
		receiveAll(t, stays, "after", "marker")
		expectNothing(t, gone)
	})
	t.Run("LastOfItsChannel", func(t *testing.T) {
		// The only subscription of a channel leaves; a marker on another
		// channel, published later, shows the message would have arrived.
		ch, other := channelName(t), channelName(t)
		gone, unsubscribe := collectUnsub(t, ps, ch)
		stays := collect(t, ps, other)
		publish(t, ps, ch, []byte("before"))
		expect(t, gone, []byte("before"))

		if err := unsubscribe(); err != nil {
			t.Fatalf("unsubscribe: %v", err)
		}
		publish(t, ps, ch, []byte("after"))
		publish(t, ps, other, []byte("marker"))
		expect(t, stays, []byte("marker"))
		expectNothing(t, gone)
	})
}

func testUnsubscribeIdempotent(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	_, unsubscribe := collectUnsub(t, ps, ch)
	if err := unsubscribe(); err != nil {
		t.Fatalf("first unsubscribe: %v", err)
	}
	if err := unsubscribe(); err != nil {
		t.Fatalf("second unsubscribe: %v", err)
	}
	// Concurrent calls are fine too, and the PubSub still works.
	_, unsubscribe = collectUnsub(t, ps, ch)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := unsubscribe(); err != nil {
				t.Errorf("concurrent unsubscribe: %v", err)
			}
		})
	}
	wg.Wait()
	got := collect(t, ps, ch)
	publish(t, ps, ch, []byte("still works"))
	expect(t, got, []byte("still works"))
}

func testSubscribeAgain(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	for i := range 3 {
		got, unsubscribe := collectUnsub(t, ps, ch)
		msg := fmt.Appendf(nil, "round %d", i)
		publish(t, ps, ch, msg)
		expect(t, got, msg)
		if err := unsubscribe(); err != nil {
			t.Fatalf("unsubscribe: %v", err)
		}
	}
}

func testManyMessagesNoLoss(t *testing.T, ps PubSubUnderTest) {
	const publishers, perPublisher = 8, 625 // 5000 messages
	const total = publishers * perPublisher
	ch := channelName(t)

	type counter struct {
		mu   sync.Mutex
		seen map[string]int
		dups int
		all  chan struct{} // closed once every message arrived
	}
	counters := []*counter{}
	for range 2 {
		c := &counter{seen: make(map[string]int), all: make(chan struct{})}
		counters = append(counters, c)
		subscribe(t, ps, ch, func(_ context.Context, msg []byte) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.seen[string(msg)]++
			if c.seen[string(msg)] > 1 {
				c.dups++
			}
			if len(c.seen) == total && c.dups == 0 {
				close(c.all)
			}
			return nil
		})
	}

	var wg sync.WaitGroup
	for g := range publishers {
		wg.Go(func() {
			for i := range perPublisher {
				if err := ps.Publish(t.Context(), ch, fmt.Appendf(nil, "%d-%d", g, i)); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	for i, c := range counters {
		select {
		case <-c.all:
		case <-time.After(2 * timeout):
			c.mu.Lock()
			seen, dups := len(c.seen), c.dups
			c.mu.Unlock()
			t.Fatalf("subscription %d: %d of %d messages, %d duplicates", i, seen, total, dups)
		}
	}
	// Anything more would be a duplicate; give it the time a marker takes.
	publish(t, ps, ch, []byte("marker"))
	for i, c := range counters {
		waitFor(t, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.seen["marker"] == 1
		})
		c.mu.Lock()
		seen, dups := len(c.seen), c.dups
		c.mu.Unlock()
		if dups != 0 || seen != total+1 {
			t.Errorf("subscription %d: %d distinct messages, %d duplicates", i, seen, dups)
		}
	}
}

func testConcurrentFnCalls(t *testing.T, ps PubSubUnderTest) {
	const n = 8
	ch := channelName(t)
	var running, maxRunning atomic.Int64
	started := make(chan struct{}, n)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	unsubscribe := subscribe(t, ps, ch, func(context.Context, []byte) error {
		r := running.Add(1)
		for m := maxRunning.Load(); r > m && !maxRunning.CompareAndSwap(m, r); m = maxRunning.Load() {
		}
		select {
		case started <- struct{}{}:
		default:
		}
		<-release // deliberately deaf to ctx: unsubscribe must wait anyway
		running.Add(-1)
		return nil
	})
	t.Cleanup(releaseOnce) // runs before the cleanup of subscribe
	// Publish from aside: with small limits, Publish may block until fn returns.
	published := make(chan error, 1)
	go func() {
		for i := range n {
			if err := ps.Publish(t.Context(), ch, fmt.Appendf(nil, "%d", i)); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	select {
	case <-started:
	case <-time.After(timeout):
		t.Fatal("fn was not called")
	}

	unsubscribed := make(chan error, 1)
	go func() { unsubscribed <- unsubscribe() }()
	// Nothing to wait for: this only gives a wrong unsubscribe time to return.
	select {
	case err := <-unsubscribed:
		t.Fatalf("unsubscribe returned (%v) while fn was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	releaseOnce()
	select {
	case err := <-unsubscribed:
		if err != nil {
			t.Fatalf("unsubscribe: %v", err)
		}
	case <-time.After(timeout):
		t.Fatal("unsubscribe did not return")
	}
	if r := running.Load(); r != 0 {
		t.Fatalf("%d fn calls still running after unsubscribe returned", r)
	}
	if err := <-published; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	t.Logf("at most %d fn calls at once", maxRunning.Load())
}

func testCloseIdempotent(t *testing.T, ps PubSubUnderTest) {
	ch := channelName(t)
	_, unsubscribe := collectUnsub(t, ps, ch)
	if err := ps.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := ps.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Unsubscribing after Close returns; its error, if any, does not matter.
	if err := unsubscribe(); err != nil {
		t.Logf("unsubscribe after Close: %v", err)
	}
}

func testPublishAfterClose(t *testing.T, ps PubSubUnderTest) {
	if err := ps.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ps.Publish(t.Context(), channelName(t), []byte("x")); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
	if bp, ok := ps.(batchPublisher); ok {
		if err := bp.PublishBatch(t.Context(), []string{channelName(t)}, [][]byte{[]byte("x")}); err == nil {
			t.Fatal("PublishBatch after Close succeeded")
		}
	}
}

func testSubscribeAfterClose(t *testing.T, ps PubSubUnderTest) {
	if err := ps.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	unsubscribe, err := ps.Subscribe(t.Context(), channelName(t), func(context.Context, []byte) error { return nil })
	if err == nil {
		_ = unsubscribe()
		t.Fatal("Subscribe after Close succeeded")
	}
}

func testBatchPublish(t *testing.T, ps PubSubUnderTest) {
	bp, ok := ps.(batchPublisher)
	if !ok {
		t.Skip("the PubSub has no PublishBatch")
	}
	a, b := channelName(t), channelName(t)
	gotA, gotB := collect(t, ps, a), collect(t, ps, b)
	var channels []string
	var msgs [][]byte
	var wantA, wantB []string
	for i := range 50 {
		m := fmt.Sprintf("m%d", i)
		if i%2 == 0 {
			channels, wantA = append(channels, a), append(wantA, m)
		} else {
			channels, wantB = append(channels, b), append(wantB, m)
		}
		msgs = append(msgs, []byte(m))
	}
	if err := bp.PublishBatch(t.Context(), channels, msgs); err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	receiveAll(t, gotA, wantA...)
	receiveAll(t, gotB, wantB...)
	if err := bp.PublishBatch(t.Context(), nil, nil); err != nil {
		t.Fatalf("empty PublishBatch: %v", err)
	}
}

// channelName returns a channel name unique to this run.
func channelName(t *testing.T) string {
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	return fmt.Sprintf("durabus.pubsubtest.%s.%016x", name, mathrand.Uint64())
}

// subscribe subscribes fn and unsubscribes at the end of the test. The
// returned unsubscribe may be called earlier.
func subscribe(t *testing.T, ps PubSubUnderTest, channel string, fn func(context.Context, []byte) error) (unsubscribe func() error) {
	t.Helper()
	unsubscribe, err := ps.Subscribe(t.Context(), channel, fn)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", channel, err)
	}
	t.Cleanup(func() { _ = unsubscribe() })
	return unsubscribe
}

// collectUnsub subscribes to channel and returns the messages it receives.
func collectUnsub(t *testing.T, ps PubSubUnderTest, channel string) (<-chan []byte, func() error) {
	t.Helper()
	got := make(chan []byte, 100)
	stop := make(chan struct{})
	unsubscribe := subscribe(t, ps, channel, func(ctx context.Context, msg []byte) error {
		select {
		case got <- bytes.Clone(msg):
		case <-ctx.Done():
		case <-stop:
		}
		return nil
	})
	// Cleanups run last-registered first: fn stops blocking before the
	// cleanup of subscribe waits for it.
	t.Cleanup(func() { close(stop) })
	return got, unsubscribe
}

// collect is collectUnsub without the unsubscribe function.
func collect(t *testing.T, ps PubSubUnderTest, channel string) <-chan []byte {
	t.Helper()
	got, _ := collectUnsub(t, ps, channel)
	return got
}

func publish(t *testing.T, ps PubSubUnderTest, channel string, msg []byte) {
	t.Helper()
	if err := ps.Publish(t.Context(), channel, msg); err != nil {
		t.Fatalf("Publish(%q): %v", channel, err)
	}
}

func receive(t *testing.T, got <-chan []byte) []byte {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %v", timeout)
		return nil
	}
}

// expect receives one message and checks it is want.
func expect(t *testing.T, got <-chan []byte, want []byte) {
	t.Helper()
	if m := receive(t, got); !bytes.Equal(m, want) {
		t.Fatalf("got %s, want %s", abbreviate(m), abbreviate(want))
	}
}

// receiveAll receives len(want) messages and checks they are want, in any
// order: fn calls may overlap.
func receiveAll(t *testing.T, got <-chan []byte, want ...string) {
	t.Helper()
	missing := make(map[string]int)
	for _, w := range want {
		missing[w]++
	}
	for range want {
		m := string(receive(t, got))
		if missing[m] == 0 {
			t.Fatalf("unexpected message %q", m)
		}
		missing[m]--
	}
}

// expectNothing checks that no message has arrived.
func expectNothing(t *testing.T, got <-chan []byte) {
	t.Helper()
	select {
	case m := <-got:
		t.Fatalf("unexpected message %s", abbreviate(m))
	default:
	}
}

// waitFor polls cond until it holds, failing the test after the timeout.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
}

func abbreviate(m []byte) string {
	if len(m) > 40 {
		return fmt.Sprintf("%q... (%d bytes)", m[:40], len(m))
	}
	return fmt.Sprintf("%q", m)
}
