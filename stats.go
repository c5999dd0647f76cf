package durabus

import (
	"context"
	"fmt"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// Stats is a snapshot of this bus's rows.
type Stats struct {
	// Outbox counts the events this bus published, by state.
	Outbox StateCounts
	// Inbox counts the entries of this bus's handlers, by state.
	Inbox StateCounts
	// Events breaks Outbox down by event name.
	Events []EventStats
	// Handlers breaks Inbox down by event name and handler. Messages that
	// were not valid events have an empty Handler.
	Handlers []HandlerStats
	// OldestOutbox is the age of the oldest PENDING or PROCESSING outbox row,
	// 0 if there is none.
	OldestOutbox time.Duration
	// OldestInbox is the age of the oldest PROCESSING inbox entry, 0 if
	// there is none.
	OldestInbox time.Duration
	// Groups lists the consumer groups this bus heard of, with the state of
	// their deliveries of this bus's events.
	Groups []GroupStats
	// DroppedDeliveries counts deliveries dropped because their group was
	// silent for longer than Config.GroupTTL.
	DroppedDeliveries int64
}

// GroupStats describes one consumer group, as its publisher sees it.
// Deliveries a group received but has not finished count as Processing.
type GroupStats struct {
	Name     string
	Events   []string
	LastSeen time.Time
	// Online is false when the group has not said hello for three
	// HelloIntervals: its re-sends wait until it is back.
	Online     bool
	Deliveries StateCounts
}

// StateCounts counts rows by state. Inbox entries are never PENDING.
type StateCounts struct {
	Pending, Processing, Completed, Dead int
}

// Unfinished is Pending + Processing.
func (c StateCounts) Unfinished() int { return c.Pending + c.Processing }

func (c *StateCounts) add(state string, n int) {
	switch state {
	case store.Pending:
		c.Pending += n
	case store.Processing:
		c.Processing += n
	case store.Completed:
		c.Completed += n
	case store.Dead:
		c.Dead += n
	}
}

// EventStats counts the outbox rows of one event name.
type EventStats struct {
	EventName string
	StateCounts
}

// HandlerStats counts the inbox entries of one handler.
type HandlerStats struct {
	EventName, Handler string
	StateCounts
}

// Stats counts this bus's rows by state, event name and handler.
func (b *Bus[P, S]) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	if b.eng.Closed() {
		return s, ErrClosed
	}
	db, st := b.eng.DB(), b.eng.Store()
	now := b.cfg.now().UnixMilli()
	age := func(oldest, cur int64) int64 {
		if oldest > 0 && (cur == 0 || oldest < cur) {
			return oldest
		}
		return cur
	}
	out, err := st.OutboxCounts(ctx, db, b.cfg.Name)
	if err != nil {
		return s, fmt.Errorf("durabus: stats: %w", err)
	}
	var oldestOut, oldestIn int64
	events := map[string]int{}
	for _, c := range out {
		s.Outbox.add(c.State, c.N)
		i, ok := events[c.EventName]
		if !ok {
			i = len(s.Events)
			events[c.EventName] = i
			s.Events = append(s.Events, EventStats{EventName: c.EventName})
		}
		s.Events[i].add(c.State, c.N)
		oldestOut = age(c.Oldest, oldestOut)
	}
	in, err := st.InboxCounts(ctx, db, b.cfg.Name)
	if err != nil {
		return s, fmt.Errorf("durabus: stats: %w", err)
	}
	handlers := map[[2]string]int{}
	for _, c := range in {
		s.Inbox.add(c.State, c.N)
		k := [2]string{c.EventName, c.Handler}
		i, ok := handlers[k]
		if !ok {
			i = len(s.Handlers)
			handlers[k] = i
			s.Handlers = append(s.Handlers, HandlerStats{EventName: c.EventName, Handler: c.Handler})
		}
		s.Handlers[i].add(c.State, c.N)
		oldestIn = age(c.Oldest, oldestIn)
	}
	groups, err := st.GroupCounts(ctx, db, b.cfg.Name)
	if err != nil {
		return s, fmt.Errorf("durabus: stats: %w", err)
	}
	for _, g := range b.eng.Groups() {
		gs := GroupStats{Name: g.Name, Events: g.Events, LastSeen: g.LastSeen, Online: g.Online}
		for _, c := range groups {
			if c.Group == g.Name {
				state := c.State
				if state == store.DeliveryReceived {
					state = store.Processing
				}
				gs.Deliveries.add(state, c.N)
			}
		}
		s.Groups = append(s.Groups, gs)
	}
	if s.DroppedDeliveries, err = st.Counter(ctx, db, b.cfg.Name, store.CounterDropped); err != nil {
		return s, fmt.Errorf("durabus: stats: %w", err)
	}
	if oldestOut > 0 {
		s.OldestOutbox = time.Duration(now-oldestOut) * time.Millisecond
	}
	if oldestIn > 0 {
		s.OldestInbox = time.Duration(now-oldestIn) * time.Millisecond
	}
	return s, nil
}
