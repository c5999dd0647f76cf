// Package mempubsub is an in-memory durabus PubSub, for tests and for a bus
// whose publishers and subscribers all live in one process.
//
// Every subscription of a channel gets its own copy of every message published
// on that channel after it subscribed. Delivery is asynchronous: each
// subscription has a bounded queue and a bounded number of concurrent fn
// calls. When a queue is full, Publish blocks until there is room or its
// context ends; messages are never dropped silently.
//
// As with any pub/sub, delivery is fire-and-forget: the error returned by a
// subscription's fn is ignored.
//
// For tests of the bus, a PubSub can inject faults: see SetPublishError and
// DropNext.
package mempubsub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/durabus/durabus/internal/subqueue"
)

// ErrClosed is returned by Publish, PublishBatch and Subscribe after Close.
var ErrClosed = errors.New("mempubsub: closed")

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
}

// Option configures a PubSub created by New.
type Option func(*options)

// WithQueueSize sets how many messages each subscription buffers before
// Publish blocks (default DefaultQueueSize). Values below 1 mean 1.
func WithQueueSize(n int) Option {
	return func(o *options) { o.queueSize = max(n, 1) }
}

// WithMaxInFlight sets how many fn calls may run at once for one
// subscription (default DefaultMaxInFlight). Values below 1 mean 1.
func WithMaxInFlight(n int) Option {
	return func(o *options) { o.maxInFlight = max(n, 1) }
}

// PubSub is an in-memory pub/sub. Its zero value is not usable: call New.
// It is safe for concurrent use.
type PubSub struct {
	opts options

	mu     sync.RWMutex
	closed bool
	subs   map[string][]*subqueue.Subscription // copy-on-write slices, by channel

	faultMu    sync.Mutex
	publishErr error
	dropNext   int

	published atomic.Int64
}

// New returns an empty PubSub.
func New(opts ...Option) *PubSub {
	o := options{queueSize: DefaultQueueSize, maxInFlight: DefaultMaxInFlight}
	for _, opt := range opts {
		opt(&o)
	}
	return &PubSub{opts: o, subs: make(map[string][]*subqueue.Subscription)}
}

// Publish queues a copy of msg for every current subscription of channel. It
// blocks while a subscription's queue is full, until there is room or ctx
// ends. It returns ErrClosed after Close.
func (p *PubSub) Publish(ctx context.Context, channel string, msg []byte) error {
	return p.PublishBatch(ctx, []string{channel}, [][]byte{msg})
}

// PublishBatch publishes msgs[i] on channels[i], in order, as Publish does.
// It stops at the first error and returns it; the messages before it have
// been published.
func (p *PubSub) PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error {
	if len(channels) != len(msgs) {
		return fmt.Errorf("mempubsub: %d channels for %d messages", len(channels), len(msgs))
	}
	for i, msg := range msgs {
		if err := p.publish(ctx, channels[i], msg); err != nil {
			return err
		}
	}
	return nil
}

func (p *PubSub) publish(ctx context.Context, channel string, msg []byte) error {
	p.mu.RLock()
	closed, subs := p.closed, p.subs[channel]
	p.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	drop, err := p.nextFault()
	if err != nil {
		return err
	}
	if !drop {
		for _, s := range subs {
			if err := s.Deliver(ctx, bytes.Clone(msg)); err != nil {
				return err
			}
		}
	}
	p.published.Add(1)
	return nil
}

// nextFault reports the injected fault for the message being published.
func (p *PubSub) nextFault() (drop bool, err error) {
	p.faultMu.Lock()
	defer p.faultMu.Unlock()
	if p.publishErr != nil {
		return false, p.publishErr
	}
	if p.dropNext > 0 {
		p.dropNext--
		return true, nil
	}
	return false, nil
}

// Subscribe calls fn for every message published on channel from now on,
// until unsubscribe is called or the PubSub is closed. fn may run
// concurrently, up to the WithMaxInFlight limit; its error is ignored. The
// context given to fn carries the values of ctx and is cancelled when the
// subscription ends.
//
// unsubscribe is idempotent; it returns once no fn call runs or will start.
// fn must not call it, nor Close, as they wait for fn to return.
func (p *PubSub) Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (unsubscribe func() error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	s := subqueue.New(ctx, fn, p.opts.queueSize, p.opts.maxInFlight)
	p.subs[channel] = append(slices.Clip(p.subs[channel]), s)
	return sync.OnceValue(func() error {
		p.remove(channel, s)
		s.Stop()
		return nil
	}), nil
}

func (p *PubSub) remove(channel string, s *subqueue.Subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	subs := slices.DeleteFunc(slices.Clone(p.subs[channel]), func(x *subqueue.Subscription) bool { return x == s })
	if len(subs) == 0 {
		delete(p.subs, channel)
	} else {
		p.subs[channel] = subs
	}
}

// Close ends every subscription, waiting for the running fn calls to return.
// After Close, Publish and Subscribe return ErrClosed. Close is idempotent.
func (p *PubSub) Close() error {
	p.mu.Lock()
	all := p.subs
	p.subs = make(map[string][]*subqueue.Subscription)
	p.closed = true
	p.mu.Unlock()
	for _, subs := range all {
		for _, s := range subs {
			s.Stop()
		}
	}
	return nil
}

// SetPublishError makes every following Publish and PublishBatch fail with
// err, until it is called again with nil.
func (p *PubSub) SetPublishError(err error) {
	p.faultMu.Lock()
	defer p.faultMu.Unlock()
	p.publishErr = err
}

// DropNext makes the next n published messages succeed without reaching any
// subscription, as if the broker lost them. They count in Published.
func (p *PubSub) DropNext(n int) {
	p.faultMu.Lock()
	defer p.faultMu.Unlock()
	p.dropNext = max(n, 0)
}

// Published returns how many messages Publish and PublishBatch accepted,
// including those dropped by DropNext.
func (p *PubSub) Published() int64 {
	return p.published.Load()
}
