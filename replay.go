package durabus

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// ReplayFilter selects the stored events Replay re-delivers. The zero value
// selects every event still in the outbox, for every group.
type ReplayFilter struct {
	// EventNames limits the replay to these events. Empty: all.
	EventNames []string
	// Group is the consumer group to re-deliver to. Empty: every group known
	// to consume each event.
	Group string
	// From and To limit the replay to events published in [From, To). Zero
	// values leave that end open.
	From, To time.Time
}

// Replay re-delivers this bus's stored events that match f, including
// completed ones, and returns how many it scheduled. Each goes to its
// group's own channel marked as a replay, so the group runs its handlers
// again even for events it completed; the relay sends them paced (see
// Config.CatchUpRate), re-sends until each group acknowledges, and the
// outbox rows go through PROCESSING to COMPLETED again. Only events within
// the retention window are still stored.
func (b *Bus[P, S]) Replay(ctx context.Context, f ReplayFilter) (int, error) {
	if b.eng.Closed() {
		return 0, ErrClosed
	}
	if !b.canPublish() {
		return 0, fmt.Errorf("durabus: replay: %w (the bus's PubSub is subscribe-only)", ErrNotSupported)
	}
	sf := store.ReplayFilter{EventNames: f.EventNames, From: math.MinInt64, To: math.MaxInt64}
	if !f.From.IsZero() {
		sf.From = f.From.UnixMilli()
	}
	if !f.To.IsZero() {
		sf.To = f.To.UnixMilli()
	}
	n, err := b.eng.Replay(ctx, sf, f.Group)
	if err != nil {
		return n, fmt.Errorf("durabus: replay: %w", err)
	}
	return n, nil
}
