package durabus

import (
	"context"
	"fmt"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// RecallOutgoing makes every unfinished (PENDING or PROCESSING) outbox row of
// this bus due now, with a fresh re-send budget, and returns how many. The
// relay sends them; consumers absorb the copies they already stored. Call it
// at start-up or on a schedule.
func (b *Bus[P, S]) RecallOutgoing(ctx context.Context) (int, error) {
	if b.eng.Closed() {
		return 0, ErrClosed
	}
	n, err := b.eng.Recall(ctx, store.RecallOutgoing)
	if err != nil {
		return n, fmt.Errorf("durabus: recall outgoing: %w", err)
	}
	return n, nil
}

// RecallDead gives DEAD rows of this bus another chance and returns how many:
// outbox rows no one acknowledged are sent again, and inbox entries whose
// handler gave up run again with a fresh retry budget. Messages that never
// were valid events stay DEAD.
func (b *Bus[P, S]) RecallDead(ctx context.Context) (int, error) {
	if b.eng.Closed() {
		return 0, ErrClosed
	}
	out, err := b.eng.Recall(ctx, store.RecallDeadOutbox)
	if err != nil {
		return out, fmt.Errorf("durabus: recall dead outbox rows: %w", err)
	}
	in, err := b.eng.Recall(ctx, store.RecallDeadInbox)
	if err != nil {
		return out + in, fmt.Errorf("durabus: recall dead inbox entries: %w", err)
	}
	return out + in, nil
}

// PerishDead deletes this bus's DEAD outbox rows and inbox entries last
// updated more than olderThan ago (0 deletes them all) and returns how many.
func (b *Bus[P, S]) PerishDead(ctx context.Context, olderThan time.Duration) (int, error) {
	if b.eng.Closed() {
		return 0, ErrClosed
	}
	if olderThan < 0 {
		return 0, fmt.Errorf("durabus: perish dead: olderThan is negative (%v)", olderThan)
	}
	before := b.cfg.now().Add(-olderThan)
	if olderThan == 0 {
		before = time.UnixMilli(1<<62 - 1) // every row, including those updated this millisecond
	}
	n, err := b.eng.Delete(ctx, store.Dead, before)
	if err != nil {
		return n, fmt.Errorf("durabus: perish dead: %w", err)
	}
	return n, nil
}
