package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// AddHandler registers h and subscribes to its event's channel when it is
// the first handler of that event (in the background while the broker is
// unreachable).
func (e *Engine) AddHandler(h Handler) error {
	if !e.cfg.CanSubscribe {
		return fmt.Errorf("the PubSub cannot subscribe")
	}
	e.mu.Lock()
	if e.isClosed() {
		e.mu.Unlock()
		return ErrClosed
	}
	for _, old := range e.handlers[h.EventName] {
		if old.Name == h.Name {
			e.mu.Unlock()
			return fmt.Errorf("a handler named %q is already registered for %q: name each handler of one event with WithHandlerName", h.Name, h.EventName)
		}
	}
	first := len(e.handlers[h.EventName]) == 0
	e.handlers[h.EventName] = append(e.handlers[h.EventName], h)
	e.mu.Unlock()
	if first {
		e.subscribe(e.bg, e.eventChannel(h.EventName), e.receiver(h.EventName))
		e.consuming.Do(func() {
			e.subscribe(e.bg, e.groupChannel(e.cfg.Name), e.groupReceiver)
			e.subscribe(e.bg, e.statusChannel(e.cfg.Name), e.receiveStatus)
			e.goBG(e.helloLoop)
			e.goBG(e.direct.loop)
			e.goBG(e.checkLoop)
		})
		wake(e.helloWake)
	}
	e.workers.start()
	// Entries stored for this handler may have been postponed while it was
	// not registered yet: make them due now.
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return e.st.InboxWake(ctx, q, e.cfg.Name, h.EventName, h.Name, noHandlerReason(h.EventName, h.Name), e.nowMS())
	})
	if err != nil {
		return fmt.Errorf("wake entries of handler %q: %w", h.Name, err)
	}
	wake(e.workWake)
	return nil
}

func (e *Engine) handlersFor(name string) []Handler {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handlers[name]
}

func (e *Engine) handler(event, name string) (Handler, bool) {
	for _, h := range e.handlersFor(event) {
		if h.Name == name {
			return h, true
		}
	}
	return Handler{}, false
}

// receiver returns the function the PubSub calls with each message of the
// channel of eventName. It stores the message in the inbox, one row per
// handler, and only then acknowledges receipt. A message that cannot be an
// event of that name is stored as a DEAD row with its reason.
func (e *Engine) receiver(eventName string) func(ctx context.Context, msg []byte) error {
	return func(ctx context.Context, msg []byte) error {
		if len(msg) > e.cfg.MaxMessageBytes {
			return e.storeBad(ctx, eventName, msg, fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", len(msg), e.cfg.MaxMessageBytes))
		}
		env, err := wire.Decode(msg)
		if err != nil {
			return e.storeBad(ctx, eventName, msg, err.Error())
		}
		if env.EventName != eventName {
			return e.storeBad(ctx, eventName, msg, fmt.Sprintf("event %q arrived on the channel of %q", env.EventName, eventName))
		}
		return e.store(ctx, env, msg)
	}
}

// groupReceiver takes the messages sent to this group alone: re-sends,
// catch-up and replays, of any event the group handles.
func (e *Engine) groupReceiver(ctx context.Context, msg []byte) error {
	if len(msg) > e.cfg.MaxMessageBytes {
		return e.storeBad(ctx, "", msg, fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", len(msg), e.cfg.MaxMessageBytes))
	}
	env, err := wire.Decode(msg)
	if err != nil {
		return e.storeBad(ctx, "", msg, err.Error())
	}
	if len(e.handlersFor(env.EventName)) == 0 {
		// Not (yet) handled here: the publisher asks again later.
		e.log.Debug("durabus: group message for an event without handler", "event", env.EventName)
		return nil
	}
	return e.store(ctx, env, msg)
}

// store writes the inbox rows of one event and acknowledges it.
func (e *Engine) store(ctx context.Context, env *wire.Envelope, msg []byte) error {
	hs := e.handlersFor(env.EventName)
	if len(hs) == 0 {
		return nil // unsubscribed while the message was in flight; the publisher re-sends
	}
	// Copies of one event are stored one after the other: a copy checked
	// after the first is on disk finds it there.
	release, err := e.direct.hold(ctx, env.EventID)
	if err != nil {
		return err
	}
	defer release()
	mine, seen, err := e.checkEvent(ctx, env)
	if err != nil || !mine {
		return err // another replica of this group has it
	}
	if !seen {
		if ran, err := e.tryDirect(ctx, env, msg, hs); ran || err != nil {
			return err
		}
	}
	insert := e.st.InsertInbox
	if env.Replay {
		insert = e.st.ReplayInbox
	}
	now := e.nowMS()
	rows := make([]store.InboxRow, len(hs))
	for i, h := range hs {
		rows[i] = store.InboxRow{Consumer: e.cfg.Name, EventID: env.EventID, Handler: h.Name, EventName: env.EventName,
			Publisher: env.PublishedBy, State: store.Processing, Message: msg, Now: now}
	}
	ack := store.Ack{EventID: env.EventID, Status: store.Received, Group: e.cfg.Name, Replay: env.Replay}
	local := env.PublishedBy == e.cfg.Name
	err = e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		added, err := insert(ctx, q, rows...)
		if err != nil {
			return err
		}
		ack.Status, ack.Error, ack.Replay = store.Received, "", env.Replay
		if added < len(rows) { // seen before: answer with what became of it
			st, _, err := e.st.InboxEventStatus(ctx, q, e.cfg.Name, env.EventID)
			if err != nil {
				return err
			}
			ack.Status, ack.Error, ack.Replay = st.Status, st.LastError, st.Replay
		}
		if local {
			_, err = e.st.ApplyAck(ctx, q, e.cfg.Name, ack, now+e.cfg.PendingDelay.Milliseconds(), now)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store event %s: %w", env.EventID, err)
	}
	if local {
		e.flow.done(env.EventID)
	} else {
		e.acks.add(env.PublishedBy, ack)
	}
	wake(e.workWake)
	return nil
}

// storeBad keeps a message that is not a valid event as a DEAD row with
// the reason and (up to 64 KiB of) its bytes.
func (e *Engine) storeBad(ctx context.Context, eventName string, msg []byte, reason string) error {
	if len(msg) > deadKeep {
		msg = msg[:deadKeep]
	}
	now := e.nowMS()
	row := store.InboxRow{Consumer: e.cfg.Name, EventID: "invalid-" + uuid.NewString(), Handler: "", EventName: eventName,
		State: store.Dead, Message: msg, LastError: reason, Now: now}
	e.log.Warn("durabus: stored an invalid message as DEAD", "event", eventName, "reason", reason)
	err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		_, err := e.st.InsertInbox(ctx, q, row)
		return err
	})
	if err != nil {
		return fmt.Errorf("store invalid message: %w", err)
	}
	if e.cfg.OnDead != nil {
		e.cfg.OnDead(ctx, Dead{EventID: row.EventID, EventName: eventName, Err: errors.New(reason), Message: msg})
	}
	return nil
}
