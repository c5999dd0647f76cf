// Package subqueue is the delivery machinery the PubSub adapters share: a
// subscription's bounded queue and its fixed pool of fn callers.
package subqueue

import (
	"context"
	"sync"
)

// Subscription hands queued messages to fn from a fixed pool of workers, so
// the queue bounds memory and the pool bounds concurrent fn calls.
type Subscription struct {
	fn     func(ctx context.Context, msg []byte) error
	ctx    context.Context // passed to fn; cancelled by stop
	cancel context.CancelFunc
	queue  chan []byte
	done   chan struct{} // closed by stop

	stopOnce sync.Once
	workers  sync.WaitGroup
}

// New starts a subscription whose maxInFlight workers call fn with the
// messages queued (up to queueSize) by Deliver.
func New(ctx context.Context, fn func(context.Context, []byte) error, queueSize, maxInFlight int) *Subscription {
	s := &Subscription{
		fn:    fn,
		queue: make(chan []byte, queueSize),
		done:  make(chan struct{}),
	}
	// fn keeps the values of the Subscribe context, not its deadline.
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for range maxInFlight {
		s.workers.Go(s.work)
	}
	return s
}

func (s *Subscription) work() {
	for {
		select {
		case <-s.done:
			return
		case msg := <-s.queue:
			select {
			case <-s.done: // stopped while the message waited: drop it
				return
			default:
			}
			// Pub/sub is fire-and-forget: what fn does with a failure is its
			// own business, there is nobody to report it to.
			_ = s.fn(s.ctx, msg)
		}
	}
}

// Deliver queues msg, blocking while the queue is full until there is room
// or ctx ends. A stopped subscription silently takes nothing.
func (s *Subscription) Deliver(ctx context.Context, msg []byte) error {
	select {
	case s.queue <- msg:
		return nil
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop cancels fn's context, lets no new fn call start and waits for the
// running ones to return. It may be called more than once, concurrently.
func (s *Subscription) Stop() {
	s.stopOnce.Do(func() {
		close(s.done)
		s.cancel()
	})
	s.workers.Wait()
}
