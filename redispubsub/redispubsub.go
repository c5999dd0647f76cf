// Package redispubsub is a durabus PubSub on Redis pub/sub, built on go-redis
// v9. It works with any redis.UniversalClient: a single node, Sentinel or a
// Cluster.
//
// Publish is PUBLISH, PublishBatch is one pipeline of PUBLISH commands.
//
// Subscriptions share one subscriber connection per PubSub; go-redis
// reconnects it and re-subscribes its channels after a network error. A
// connection silent for 10 seconds is pinged, and replaced when the reply
// does not come within 5 seconds, so that a connection that died silently
// is noticed too. Every subscription has a bounded queue and a bounded
// number of concurrent fn calls. When a queue is full the connection is not
// read until there is room again (which also delays the confirmation of new
// subscriptions): no message is dropped inside the adapter. Redis itself
// disconnects a subscriber that falls too far behind, and messages published
// while a subscriber is disconnected are lost: Redis pub/sub is
// fire-and-forget.
//
// Claim offers a simple lease on a key, with SET NX PX.
package redispubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/durabus/durabus/internal/subqueue"
)

// ErrClosed is returned by the methods of a PubSub after Close.
var ErrClosed = errors.New("redispubsub: closed")

// Defaults of the options.
const (
	DefaultQueueSize = 1024
	// DefaultMaxInFlight is large because a bus returns from fn once the
	// message is on disk, and stores what arrives meanwhile in one commit:
	// the calls in flight bound how many messages one fsync serves.
	DefaultMaxInFlight = 256
)

type options struct {
	queueSize   int
	maxInFlight int
	healthCheck time.Duration // silence after which the subscriber connection is pinged
	pongTimeout time.Duration // how long the reply to that PING may take
}

// Option configures a PubSub created by New or NewURL.
type Option func(*options)

// WithQueueSize sets how many messages each subscription buffers before the
// subscriber connection stops being read (default DefaultQueueSize). Values
// below 1 mean 1.
func WithQueueSize(n int) Option {
	return func(o *options) { o.queueSize = max(n, 1) }
}

// WithMaxInFlight sets how many fn calls may run at once for one
// subscription (default DefaultMaxInFlight). Values below 1 mean 1.
func WithMaxInFlight(n int) Option {
	return func(o *options) { o.maxInFlight = max(n, 1) }
}

// withHealthCheck sets how long the subscriber connection may stay silent
// before it is pinged, and how long the reply may take; tests shorten them.
func withHealthCheck(idle, pongTimeout time.Duration) Option {
	return func(o *options) { o.healthCheck, o.pongTimeout = idle, pongTimeout }
}

// PubSub is a Redis pub/sub adapter. Create it with New or NewURL. It is safe
// for concurrent use.
type PubSub struct {
	client    redis.UniversalClient
	ownClient bool
	opts      options

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	ps       *redis.PubSub // the subscriber connection, made by the first Subscribe
	channels map[string]*channelSubs
	pending  map[string]int // SUBSCRIBE commands not yet confirmed, by channel

	receiving sync.WaitGroup // the receive loop
}

// New returns a PubSub using client, which must not be nil. Close does not
// close client: the caller still owns it.
func New(client redis.UniversalClient, opts ...Option) *PubSub {
	o := options{
		queueSize:   DefaultQueueSize,
		maxInFlight: DefaultMaxInFlight,
		healthCheck: 10 * time.Second,
		pongTimeout: 5 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	p := &PubSub{
		client:   client,
		opts:     o,
		channels: make(map[string]*channelSubs),
		pending:  make(map[string]int),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// NewURL returns a PubSub on a client it creates from url, parsed by
// redis.ParseURL (for example "redis://user:password@localhost:6379/0").
// Close closes that client.
func NewURL(url string, opts ...Option) (*PubSub, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redispubsub: %w", err)
	}
	p := New(redis.NewClient(o), opts...)
	p.ownClient = true
	return p, nil
}

// Publish sends msg on channel with PUBLISH. It returns once Redis accepted
// it, whether or not anybody subscribes to channel.
func (p *PubSub) Publish(ctx context.Context, channel string, msg []byte) error {
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	return p.client.Publish(ctx, channel, msg).Err()
}

// PublishBatch sends msgs[i] on channels[i] in one pipeline of PUBLISH
// commands. It returns the first error; the other messages may have been
// sent.
func (p *PubSub) PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error {
	if len(channels) != len(msgs) {
		return fmt.Errorf("redispubsub: %d channels for %d messages", len(channels), len(msgs))
	}
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	_, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, msg := range msgs {
			pipe.Publish(ctx, channels[i], msg)
		}
		return nil
	})
	return err
}

// Claim takes key for owner with SET key owner NX PX ttl. It reports whether
// owner holds the claim: it set it now, or had set it before and it has not
// expired; false means somebody else holds it.
func (p *PubSub) Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if ttl < time.Millisecond {
		return false, fmt.Errorf("redispubsub: claim %q: ttl %v is below 1ms", key, ttl)
	}
	if p.ctx.Err() != nil {
		return false, ErrClosed
	}
	took, err := p.client.SetNX(ctx, key, owner, ttl).Result()
	if err != nil || took {
		return took, err
	}
	holder, err := p.client.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil // expired in between: someone else may take it now
	}
	return holder == owner, err
}

// ClaimBatch is Claim for many keys in two pipelined round trips: SET NX
// PX for every key, then GET for those already taken.
func (p *PubSub) ClaimBatch(ctx context.Context, keys []string, owner string, ttl time.Duration) ([]bool, error) {
	if ttl < time.Millisecond {
		return nil, fmt.Errorf("redispubsub: claim %d keys: ttl %v is below 1ms", len(keys), ttl)
	}
	if p.ctx.Err() != nil {
		return nil, ErrClosed
	}
	sets := make([]*redis.BoolCmd, len(keys))
	if _, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range keys {
			sets[i] = pipe.SetNX(ctx, k, owner, ttl)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	held := make([]bool, len(keys))
	gets := make(map[int]*redis.StringCmd)
	if _, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range sets {
			if held[i] = c.Val(); !held[i] {
				gets[i] = pipe.Get(ctx, keys[i])
			}
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, c := range gets {
		holder, err := c.Result()
		switch {
		case errors.Is(err, redis.Nil):
			// expired in between: someone else may take it now
		case err != nil:
			return nil, err
		default:
			held[i] = holder == owner
		}
	}
	return held, nil
}

// Close ends every subscription, waiting for the running fn calls to return,
// and closes the subscriber connection, and the client if NewURL created it.
// After Close, the other methods return ErrClosed. Close is idempotent.
func (p *PubSub) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	ps := p.ps
	var subs []*subqueue.Subscription
	for _, cs := range p.channels {
		subs = append(subs, cs.subs...)
	}
	p.mu.Unlock()

	if ps != nil {
		_ = ps.Close() // also ends the receive loop's blocking read
	}
	p.receiving.Wait()
	for _, s := range subs {
		s.Stop()
	}
	if p.ownClient {
		return p.client.Close()
	}
	return nil
}
