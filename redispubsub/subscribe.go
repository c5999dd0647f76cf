package redispubsub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/durabus/durabus/internal/subqueue"
)

// channelSubs are the subscriptions of one Redis channel.
type channelSubs struct {
	subs      []*subqueue.Subscription // copy-on-write, so the receive loop can range over it unlocked
	ready     chan struct{}            // closed once Redis confirmed the SUBSCRIBE
	confirmed bool
}

// Subscribe calls fn for every message published on channel, until
// unsubscribe is called or the PubSub is closed. It returns once Redis
// confirmed the subscription, so a message published afterwards is
// delivered. fn may run concurrently, up to the WithMaxInFlight limit; its
// error is ignored (pub/sub is fire-and-forget). The context given to fn
// carries the values of ctx and is cancelled when the subscription ends.
//
// unsubscribe is idempotent; it returns once no fn call runs or will start,
// after sending UNSUBSCRIBE if this was the channel's last subscription. fn
// must not call it, nor Close, as they wait for fn to return.
func (p *PubSub) Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (unsubscribe func() error, err error) {
	s := subqueue.New(ctx, fn, p.opts.queueSize, p.opts.maxInFlight)
	ready, err := p.add(ctx, channel, s)
	if err != nil {
		s.Stop()
		return nil, err
	}
	unsubscribe = sync.OnceValue(func() error { return p.remove(channel, s) })
	select {
	case <-ready:
		return unsubscribe, nil
	case <-ctx.Done():
		_ = unsubscribe()
		return nil, ctx.Err()
	case <-p.ctx.Done(): // Close stopped s
		return nil, ErrClosed
	}
}

// add registers s and, for a channel new to this PubSub, sends SUBSCRIBE. It
// returns a channel closed once Redis confirmed the subscription.
func (p *PubSub) add(ctx context.Context, channel string, s *subqueue.Subscription) (ready <-chan struct{}, err error) {
	p.mu.Lock()
	defer p.mu.Unlock() // held while sending, so SUBSCRIBE and UNSUBSCRIBE go out in order
	if p.closed {
		return nil, ErrClosed
	}
	if p.ps == nil {
		ps := p.client.Subscribe(context.Background()) // connects on first use
		p.ps = ps
		p.receiving.Go(func() { p.receive(ps) })
	}
	cs := p.channels[channel]
	if cs == nil {
		if err := p.ps.Subscribe(ctx, channel); err != nil {
			// go-redis remembers the channel even though sending failed:
			// make it forget, so that a reconnection does not subscribe it.
			_ = p.ps.Unsubscribe(context.Background(), channel)
			return nil, fmt.Errorf("redispubsub: subscribe %q: %w", channel, err)
		}
		cs = &channelSubs{ready: make(chan struct{})}
		p.channels[channel] = cs
		p.pending[channel]++
	}
	cs.subs = append(slices.Clip(cs.subs), s)
	return cs.ready, nil
}

// remove unregisters s, sends UNSUBSCRIBE if it was the last subscription of
// channel, and waits for s's fn calls to return.
func (p *PubSub) remove(channel string, s *subqueue.Subscription) error {
	var err error
	p.mu.Lock()
	if cs := p.channels[channel]; cs != nil && slices.Contains(cs.subs, s) {
		cs.subs = slices.DeleteFunc(slices.Clone(cs.subs), func(x *subqueue.Subscription) bool { return x == s })
		if len(cs.subs) == 0 {
			delete(p.channels, channel)
			if !p.closed {
				err = p.ps.Unsubscribe(context.Background(), channel)
			}
		}
	}
	p.mu.Unlock()
	s.Stop()
	if err != nil {
		return fmt.Errorf("redispubsub: unsubscribe %q: %w", channel, err)
	}
	return nil
}

// confirm handles Redis' confirmation of a SUBSCRIBE. Confirmations come in
// the order of the commands, so the last pending one makes the channel ready
// (an earlier one may answer a SUBSCRIBE whose subscriptions gave up waiting).
func (p *PubSub) confirm(channel string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending[channel] > 1 {
		p.pending[channel]--
		return
	}
	delete(p.pending, channel) // also ignores confirmations of re-subscriptions after a reconnection
	if cs := p.channels[channel]; cs != nil && !cs.confirmed {
		cs.confirmed = true
		close(cs.ready)
	}
}

// dispatch queues a copy of msg for every subscription of its channel,
// blocking while a queue is full.
func (p *PubSub) dispatch(msg *redis.Message) {
	p.mu.Lock()
	var subs []*subqueue.Subscription
	if cs := p.channels[msg.Channel]; cs != nil {
		subs = cs.subs
	}
	p.mu.Unlock()
	for _, s := range subs {
		_ = s.Deliver(p.ctx, []byte(msg.Payload)) // fails only once Close began
	}
}

// receive reads the subscriber connection until Close. After a network
// error, go-redis reconnects and re-subscribes by itself on the next read;
// the loop only backs off while errors repeat.
//
// A connection silent for the health-check interval is pinged, so that a
// dead one is noticed: the reply is awaited with a context deadline, and
// go-redis reconnects when such a read times out.
func (p *PubSub) receive(ps *redis.PubSub) {
	var backoff time.Duration
	pinged := false
	for {
		var msg any
		var err error
		if pinged {
			ctx, cancel := context.WithTimeout(p.ctx, p.opts.pongTimeout)
			msg, err = ps.Receive(ctx)
			cancel()
		} else {
			msg, err = ps.ReceiveTimeout(p.ctx, p.opts.healthCheck)
		}
		if p.ctx.Err() != nil {
			return
		}
		if err != nil {
			if isTimeout(err) && !pinged {
				pinged = ps.Ping(p.ctx) == nil
				continue
			}
			pinged = false
			select {
			case <-time.After(backoff):
			case <-p.ctx.Done():
				return
			}
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			continue
		}
		backoff, pinged = 0, false
		switch msg := msg.(type) {
		case *redis.Subscription:
			if msg.Kind == "subscribe" {
				p.confirm(msg.Channel)
			}
		case *redis.Message:
			p.dispatch(msg)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
