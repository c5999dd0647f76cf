package engine

import (
	"context"
	"sync"
	"time"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// Acks travel from a consumer to the publisher's ack channel, batched: the
// sender takes everything queued since its last send, so a busy consumer
// sends few large batches and an idle one sends at once. An ack that is
// lost only makes the publisher re-send, and the inbox answers the re-send
// with the event's current status.

const (
	maxAcksPerMessage = 512
	maxKeptAcks       = 4 * maxAcksPerMessage // room kept per publisher between flushes
	ackSendTimeout    = 5 * time.Second
)

type ackSender struct {
	e       *Engine
	mu      sync.Mutex
	pending map[string][]wire.Ack // by publisher
	queued  int                   // acks in pending
	// spare is the map of the previous flush, its slices emptied: the next
	// flush swaps it in, so that a busy consumer queues acks into slices
	// that already have room. Only the loop touches it.
	spare map[string][]wire.Ack
	kick  chan struct{}
}

func newAckSender(e *Engine) *ackSender {
	return &ackSender{e: e, pending: map[string][]wire.Ack{}, spare: map[string][]wire.Ack{}, kick: make(chan struct{}, 1)}
}

var wireStatus = map[string]string{store.Received: wire.AckReceived, store.Completed: wire.AckCompleted, store.Dead: wire.AckDead}

// add queues an ack for publisher.
func (s *ackSender) add(publisher string, a store.Ack) {
	s.mu.Lock()
	s.pending[publisher] = append(s.pending[publisher], wire.Ack{EventID: a.EventID, Status: wireStatus[a.Status], Error: a.Error, Replay: a.Replay})
	s.queued++
	s.mu.Unlock()
	wake(s.kick)
}

// loop sends queued acks until ctx ends, then sends what is left once.
func (s *ackSender) loop(ctx context.Context) {
	for {
		select {
		case <-s.kick:
			s.flush()
		case <-ctx.Done():
			s.flush()
			return
		}
	}
}

func (s *ackSender) flush() {
	s.mu.Lock()
	batch := s.pending
	if s.queued == 0 {
		s.mu.Unlock()
		return
	}
	s.pending, s.spare, s.queued = s.spare, nil, 0
	s.mu.Unlock()
	defer func() {
		for publisher, acks := range batch {
			if cap(acks) > maxKeptAcks {
				delete(batch, publisher) // a burst's slice is not kept
				continue
			}
			clear(acks) // let the sent IDs go
			batch[publisher] = acks[:0]
		}
		s.spare = batch
	}()
	ctx, cancel := context.WithTimeout(context.Background(), ackSendTimeout)
	defer cancel()
	for publisher, acks := range batch {
		for len(acks) > 0 {
			n := min(len(acks), maxAcksPerMessage)
			s.send(ctx, publisher, acks[:n])
			acks = acks[n:]
		}
	}
}

func (s *ackSender) send(ctx context.Context, publisher string, acks []wire.Ack) {
	e := s.e
	msg, err := wire.EncodeAcks(e.cfg.Name, acks)
	if err == nil {
		err = e.cfg.PubSub.Publish(ctx, e.ackChannel(publisher), msg)
	}
	if err != nil {
		e.log.Debug("durabus: send acks; the publisher will re-send", "publisher", publisher, "acks", len(acks), "err", err)
	}
}

var storeStatus = map[string]string{wire.AckReceived: store.Received, wire.AckCompleted: store.Completed, wire.AckDead: store.Dead}

// receiveAcks applies an ack batch sent to this bus's ack channel.
func (e *Engine) receiveAcks(ctx context.Context, msg []byte) error {
	b, err := wire.DecodeAcks(msg)
	if err != nil {
		e.log.Warn("durabus: ignored an invalid ack message", "err", err, "bytes", len(msg))
		return nil
	}
	ids := make([]string, len(b.Acks))
	for i, a := range b.Acks {
		ids[i] = a.EventID
	}
	e.flow.done(ids...)
	now := e.nowMS()
	next := now + e.cfg.PendingDelay.Milliseconds()
	// COMPLETED acks, the bulk of them, are applied together.
	var completed [2][]string // by replay
	for _, a := range b.Acks {
		if a.Status == wire.AckCompleted {
			i := 0
			if a.Replay {
				i = 1
			}
			completed[i] = append(completed[i], a.EventID)
		}
	}
	return e.w.DoLazy(ctx, func(ctx context.Context, q store.Querier) error {
		for i, ids := range completed {
			if len(ids) == 0 {
				continue
			}
			if err := e.st.CompleteMany(ctx, q, e.cfg.Name, b.Group, i == 1, ids, now); err != nil {
				return err
			}
		}
		for _, a := range b.Acks {
			if a.Status == wire.AckCompleted {
				continue
			}
			ack := store.Ack{EventID: a.EventID, Status: storeStatus[a.Status], Group: b.Group, Error: a.Error, Replay: a.Replay}
			if _, err := e.st.ApplyAck(ctx, q, e.cfg.Name, ack, next, now); err != nil {
				return err
			}
		}
		return nil
	})
}
