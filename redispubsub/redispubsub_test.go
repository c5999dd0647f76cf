package redispubsub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/durabus/durabus/pubsubtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// redisURL returns REDIS_URL, or skips the test when it is not set.
func redisURL(t *testing.T) string {
	url := os.Getenv("REDIS_URL")
	if url == "" {
		t.Skip("REDIS_URL not set: skipping tests against a real Redis")
	}
	return url
}

// newMiniredis returns a PubSub on a fresh miniredis, and that miniredis.
func newMiniredis(t *testing.T, opts ...Option) (*PubSub, *miniredis.Miniredis, *redis.Client) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	p := New(client, opts...)
	t.Cleanup(func() { _ = p.Close() })
	return p, mr, client
}

func TestContractMiniredis(t *testing.T) {
	pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
		p, _, _ := newMiniredis(t)
		return p
	})
}

func TestContractMiniredisSmallLimits(t *testing.T) {
	pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
		p, _, _ := newMiniredis(t, WithQueueSize(1), WithMaxInFlight(1))
		return p
	})
}

func TestContractRedis(t *testing.T) {
	url := redisURL(t)
	pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
		p, err := NewURL(url)
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
}

// subscribeChan subscribes and returns the messages received.
func subscribeChan(t *testing.T, p *PubSub, channel string) <-chan string {
	t.Helper()
	got := make(chan string, 100)
	unsubscribe, err := p.Subscribe(t.Context(), channel, func(ctx context.Context, msg []byte) error {
		select {
		case got <- string(msg):
		case <-ctx.Done():
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unsubscribe() })
	return got
}

// publishUntilReceived publishes on channel until a message arrives in got:
// the subscription recovers from a lost connection, but what is published
// while it is down is lost.
func publishUntilReceived(t *testing.T, publisher redis.UniversalClient, channel string, got <-chan string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for i := 0; ; i++ {
		// The publisher's own connection may have been cut too: retry.
		_ = publisher.Publish(t.Context(), channel, fmt.Sprint("attempt ", i)).Err()
		select {
		case <-got:
			return
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("the subscription did not recover")
		}
	}
}

func TestDoesNotCloseCallersClient(t *testing.T) {
	p, _, client := newMiniredis(t)
	subscribeChan(t, p, "c")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := client.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("the caller's client no longer works after Close: %v", err)
	}
}

func TestNewURLOwnsClient(t *testing.T) {
	mr := miniredis.RunT(t)
	p, err := NewURL("redis://" + mr.Addr() + "/0")
	if err != nil {
		t.Fatal(err)
	}
	subscribeChan(t, p, "c")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.client.Ping(t.Context()).Err(); !errors.Is(err, redis.ErrClosed) {
		t.Fatalf("Ping on the client after Close: got %v, want redis.ErrClosed", err)
	}
}

func TestNewURLInvalid(t *testing.T) {
	if _, err := NewURL("http://localhost"); err == nil {
		t.Fatal("NewURL accepted an http URL")
	}
}

func TestClosedErrors(t *testing.T) {
	p, _, _ := newMiniredis(t)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := p.Publish(ctx, "c", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish: got %v, want ErrClosed", err)
	}
	if err := p.PublishBatch(ctx, []string{"c"}, [][]byte{nil}); !errors.Is(err, ErrClosed) {
		t.Errorf("PublishBatch: got %v, want ErrClosed", err)
	}
	if _, err := p.Subscribe(ctx, "c", func(context.Context, []byte) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe: got %v, want ErrClosed", err)
	}
	if _, err := p.Claim(ctx, "k", "me", time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Claim: got %v, want ErrClosed", err)
	}
}

func TestPublishBatchLengthMismatch(t *testing.T) {
	p, _, _ := newMiniredis(t)
	if err := p.PublishBatch(t.Context(), []string{"a", "b"}, [][]byte{nil}); err == nil {
		t.Fatal("PublishBatch with 2 channels for 1 message succeeded")
	}
}

func TestClaimMiniredis(t *testing.T) {
	p, mr, _ := newMiniredis(t)
	claim := func(owner string) bool {
		t.Helper()
		ok, err := p.Claim(t.Context(), "lease", owner, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim("a") {
		t.Fatal("first claim failed")
	}
	if claim("b") {
		t.Fatal("another owner's claim succeeded while the first holds")
	}
	if !claim("a") {
		t.Fatal("the holder's claim failed")
	}
	mr.FastForward(9 * time.Second)
	if claim("b") {
		t.Fatal("claim succeeded before the ttl passed")
	}
	mr.FastForward(time.Second)
	if !claim("b") {
		t.Fatal("claim failed after the ttl passed")
	}
	if claim("a") {
		t.Fatal("the former holder's claim succeeded after another took it")
	}
	if _, err := p.Claim(t.Context(), "lease", "a", 0); err == nil {
		t.Fatal("Claim accepted a zero ttl")
	}
}

func TestClaimRedis(t *testing.T) {
	p, err := NewURL(redisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	key := fmt.Sprintf("durabus.redispubsub.claim.%016x", rand.Uint64())
	const ttl = 100 * time.Millisecond
	claimAs := func(owner string) bool {
		t.Helper()
		ok, err := p.Claim(t.Context(), key, owner, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	claim := func() bool { return claimAs("b") }
	if !claimAs("a") {
		t.Fatal("first claim failed")
	}
	start := time.Now()
	if claim() {
		t.Fatal("second claim succeeded while the first holds")
	}
	// Poll until the claim expires: not before the ttl, not much after.
	for !claim() {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the claim never expired")
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-t.Context().Done():
		}
	}
	if elapsed := time.Since(start); elapsed < ttl/2 {
		t.Fatalf("claimed again after %v, ttl is %v", elapsed, ttl)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	p, mr, client := newMiniredis(t)
	got := subscribeChan(t, p, "c")
	mr.Close() // cuts every connection
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	publishUntilReceived(t, client, "c", got)
}

func TestResubscribeAfterClientKillRedis(t *testing.T) {
	url := redisURL(t)
	p, err := NewURL(url)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(o)
	defer admin.Close()

	channel := fmt.Sprintf("durabus.redispubsub.kill.%016x", rand.Uint64())
	got := subscribeChan(t, p, channel)
	killed, err := admin.Do(t.Context(), "CLIENT", "KILL", "TYPE", "pubsub").Int()
	if err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("CLIENT KILL TYPE pubsub killed no connection")
	}
	publishUntilReceived(t, admin, channel, got)
}

func TestIdleConnectionIsPingedNotReplaced(t *testing.T) {
	p, mr, client := newMiniredis(t, withHealthCheck(5*time.Millisecond, 10*time.Second))
	got := subscribeChan(t, p, "c")
	conns, commands := mr.TotalConnectionCount(), mr.CommandCount()
	// Poll until several health-check pings went through.
	deadline := time.Now().Add(10 * time.Second)
	for mr.CommandCount() < commands+5 {
		if time.Now().After(deadline) {
			t.Fatal("no health-check pings")
		}
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
		}
	}
	if n := mr.TotalConnectionCount(); n != conns {
		t.Fatalf("%d new connections while idle, want none", n-conns)
	}
	if err := client.Publish(t.Context(), "c", "still there").Err(); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "still there" {
		t.Fatalf("got %q", m)
	}
}

func TestDeadConnectionIsReplaced(t *testing.T) {
	mr := miniredis.RunT(t)
	proxy := startProxy(t, mr.Addr())
	client := redis.NewClient(&redis.Options{Addr: proxy.addr()})
	defer client.Close()
	p := New(client, withHealthCheck(20*time.Millisecond, 100*time.Millisecond))
	defer p.Close()

	got := subscribeChan(t, p, "c")
	proxy.freeze() // the subscriber connection goes silent, as if the network vanished
	direct := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer direct.Close()
	publishUntilReceived(t, direct, "c", got)
}

// proxy forwards TCP connections to a target. Once frozen, the connections
// open at that moment swallow all traffic without closing, like a peer
// behind a vanished network; later connections work.
type proxy struct {
	ln       net.Listener
	accepted chan struct{} // closed when the accept loop ended
	mu       sync.Mutex
	conns    []net.Conn
	frozen   []*atomic.Bool
	pipes    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, accepted: make(chan struct{})}
	go func() {
		defer close(p.accepted)
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			frozen := new(atomic.Bool)
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.frozen = append(p.frozen, frozen)
			p.mu.Unlock()
			p.pipes.Go(func() { forward(out, in, frozen) })
			p.pipes.Go(func() { forward(in, out, frozen) })
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-p.accepted
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.pipes.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		f.Store(true)
	}
}

// forward copies src to dst, dropping the data once frozen.
func forward(dst, src net.Conn, frozen *atomic.Bool) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if !frozen.Load() {
				_ = dst.Close()
			}
			return
		}
	}
}

// TestClaimBatchMiniredis checks that ClaimBatch answers each key as Claim
// would: taken now, held already by the owner, or held by another.
func TestClaimBatchMiniredis(t *testing.T) {
	p, mr, _ := newMiniredis(t)
	if ok, err := p.Claim(t.Context(), "theirs", "b", 10*time.Second); err != nil || !ok {
		t.Fatalf("Claim: %v, %v", ok, err)
	}
	if ok, err := p.Claim(t.Context(), "mine-before", "a", 10*time.Second); err != nil || !ok {
		t.Fatalf("Claim: %v, %v", ok, err)
	}
	keys := []string{"new", "theirs", "mine-before"}
	held, err := p.ClaimBatch(t.Context(), keys, "a", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, false, true}; fmt.Sprint(held) != fmt.Sprint(want) {
		t.Fatalf("ClaimBatch(%v) = %v, want %v", keys, held, want)
	}
	if owner, err := mr.Get("new"); err != nil || owner != "a" {
		t.Fatalf("key new holds %q (%v), want a", owner, err)
	}
	mr.FastForward(10 * time.Second)
	held, err = p.ClaimBatch(t.Context(), keys, "a", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, true}; fmt.Sprint(held) != fmt.Sprint(want) {
		t.Fatalf("after the ttl, ClaimBatch(%v) = %v, want %v", keys, held, want)
	}
	if _, err := p.ClaimBatch(t.Context(), keys, "a", 0); err == nil {
		t.Fatal("ClaimBatch accepted a zero ttl")
	}
	if held, err := p.ClaimBatch(t.Context(), nil, "a", time.Second); err != nil || len(held) != 0 {
		t.Fatalf("ClaimBatch of no key = %v, %v", held, err)
	}
}
