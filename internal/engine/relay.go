package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// The relay sends due outbox rows. Every decision lives in the row (its
// state, send count and due time), so a crash loses no retry state: a row
// claimed by a relay that died is due again once its PendingDelay passed.

// relayLoop runs until ctx ends: it sends the rows Publish handed over as
// they come, and scans the table for due rows when the next one is due, on
// a wake-up (PublishTx, recall) or at the poll interval.
func (e *Engine) relayLoop(ctx context.Context) {
	failures := 0
	scanAt := time.Now() // when the table is next scanned
	for ctx.Err() == nil {
		err := e.sendHandedOff(ctx)
		n := 0
		if err == nil && !time.Now().Before(scanAt) {
			n, err = e.relayOnce(ctx)
			if err == nil {
				var m int
				m, err = e.relayDeliveries(ctx)
				n = max(n, m)
			}
			scanAt = time.Now().Add(e.untilNextDue(ctx))
		}
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			e.log.Warn("durabus: relay", "err", err, "failures", failures)
			e.sleep(ctx, e.relayWake, min(e.cfg.Backoff(failures), e.cfg.PollInterval*5), false)
			scanAt = time.Now()
			continue
		case err == nil:
			failures = 0
		}
		if n >= relayBatch {
			scanAt = time.Now() // more may be due
			continue
		}
		if e.waitRelay(ctx, time.Until(scanAt)) {
			scanAt = time.Now()
		}
	}
}

// waitRelay waits for d, a wake-up, handed-over rows or the end of ctx. It
// reports whether the table should be scanned now.
func (e *Engine) waitRelay(ctx context.Context, d time.Duration) (scan bool) {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-e.relayWake:
		return true
	case <-e.handoff.signal:
		return false
	}
}

// sendHandedOff sends the rows Publish handed over, in batches, until none
// is left. Rows whose send failed are put back in the table, due soon.
func (e *Engine) sendHandedOff(ctx context.Context) error {
	for {
		rows := e.handoff.take(handoffBatch)
		if len(rows) == 0 {
			return nil
		}
		err := e.send(ctx, rows)
		if err != nil {
			e.unclaim(rows, e.nowMS())
		} else if !e.cfg.CanSubscribe {
			e.completeUnheard(rows)
		}
		e.handoff.release(len(rows))
		if err != nil {
			return err
		}
	}
}

// handoffBatch is how many handed-over rows one pipelined send carries.
const handoffBatch = 1024

// untilNextDue is how long the relay may sleep: until the earliest due row,
// at most the poll interval.
func (e *Engine) untilNextDue(ctx context.Context) time.Duration {
	wait := e.cfg.PollInterval
	due, ok, err := e.st.NextOutboxDue(ctx, e.rd, e.cfg.Name)
	if since := time.Duration(e.nowMS()-e.nudgedAt.Load()) * time.Millisecond; since < e.cfg.PollInterval {
		wait = min(wait, nudgePoll)
	}
	if err != nil || !ok || due == never {
		return wait
	}
	return min(wait, time.Duration(due-e.nowMS())*time.Millisecond)
}

// sleep waits for d, a wake-up on ch or the end of ctx.
func (e *Engine) sleep(ctx context.Context, ch chan struct{}, d time.Duration, wakeable bool) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	if !wakeable {
		ch = nil
	}
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-ch:
	}
}

// nudgeRelay makes the relay look again soon; used after PublishTx, whose
// commit the bus cannot see.
func (e *Engine) nudgeRelay() {
	e.nudgedAt.Store(e.nowMS())
	wake(e.relayWake)
}

// nudgePoll is how often the relay looks for rows during the poll interval
// that follows a PublishTx.
const nudgePoll = 20 * time.Millisecond

// relayOnce claims up to relayBatch due rows, sends them and returns how many
// it claimed.
func (e *Engine) relayOnce(ctx context.Context) (int, error) {
	now := e.nowMS()
	if !anyDue(now, func() (int64, bool, error) { return e.st.NextOutboxDue(ctx, e.rd, e.cfg.Name) }) {
		return 0, nil
	}
	var due []store.OutboxSend
	claimed := 0
	err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		due = due[:0]
		rows, err := e.st.DueOutbox(ctx, q, e.cfg.Name, now, relayBatch)
		if err != nil {
			return err
		}
		claimed = len(rows)
		byDue := map[int64][]int64{} // ids by their next due time
		var lazy []int64
		for _, r := range rows {
			var next int64
			switch {
			case r.Lazy && r.Sends > 0:
				// Its first re-send is due: from now on it is re-sent per
				// group, through delivery rows.
				lazy = append(lazy, r.ID)
				continue
			case r.Lazy:
				// Never sent (the handoff was full, or a send failed).
				next = now + e.cfg.PendingDelay.Milliseconds()
			case r.Tracked > 0:
				next = never // re-sends are per group
			case r.State == store.Pending && r.Sends > e.cfg.MaxRetries:
				reason := fmt.Sprintf("undelivered: no subscriber acknowledged it after %d sends", r.Sends)
				if err := e.st.OutboxDead(ctx, q, r.ID, reason, "", now); err != nil {
					return err
				}
				continue
			default:
				next = e.nextSend(r.State, r.Sends+1, now)
			}
			byDue[next] = append(byDue[next], r.ID)
			due = append(due, r)
		}
		if err := e.st.Materialize(ctx, q, lazy, now); err != nil {
			return err
		}
		for next, ids := range byDue {
			if err := e.st.SentMany(ctx, q, ids, 1, next, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("claim outbox rows: %w", err)
	}
	if len(due) == 0 {
		return claimed, nil
	}
	if err := e.send(ctx, due); err != nil {
		e.unclaim(due, now)
		return 0, err
	}
	if !e.cfg.CanSubscribe {
		e.completeUnheard(due)
	}
	return claimed, nil
}

// anyDue reports whether a read on the pool (next) finds a row due at now.
// The relay takes the writer only then: a scan that finds nothing must not
// queue behind the commits of Publish calls, nor hold up handed-over rows
// while it waits. A failed read counts as due, and the scan proper reports
// the error.
func anyDue(now int64, next func() (int64, bool, error)) bool {
	due, ok, err := next()
	return err != nil || (ok && due <= now)
}

// nextSend is when a row sent for the sends-th time is due again. A row no
// one acknowledged is re-sent after PendingDelay, then with backoff; a row a
// consumer received is asked about again (a re-send the inbox absorbs and
// answers) until MaxRetries, and then left to the acks and to recall.
func (e *Engine) nextSend(state string, sends int, now int64) int64 {
	if state == store.Processing && sends > e.cfg.MaxRetries {
		return never
	}
	d := max(e.cfg.PendingDelay, e.cfg.Backoff(sends))
	return now + d.Milliseconds()
}

// send publishes rows, pipelined when the PubSub can, once the flow window
// has room for those whose acks are expected.
func (e *Engine) send(ctx context.Context, rows []store.OutboxSend) error {
	if e.cfg.CanSubscribe {
		// Acks sent before the ack channel is subscribed would be lost,
		// and their rows wait for a re-send.
		select {
		case <-e.acksUp:
		case <-ctx.Done():
			return ctx.Err()
		}
		now := e.nowMS()
		ids, sizes := make([]string, 0, len(rows)), make([]int, 0, len(rows))
		for _, r := range rows {
			if r.Tracked > 0 || e.expectsAck(r.EventName, now) {
				ids, sizes = append(ids, r.EventID), append(sizes, len(r.Message))
			}
		}
		if err := e.flow.acquire(ctx, ids, sizes); err != nil {
			return err
		}
	}
	if bp, ok := e.cfg.PubSub.(BatchPublisher); ok && len(rows) > 1 {
		channels := make([]string, len(rows))
		msgs := make([][]byte, len(rows))
		for i, r := range rows {
			channels[i], msgs[i] = e.eventChannel(r.EventName), r.Message
		}
		if err := bp.PublishBatch(ctx, channels, msgs); err != nil {
			return fmt.Errorf("publish %d events: %w", len(rows), err)
		}
		return nil
	}
	for _, r := range rows {
		if err := e.cfg.PubSub.Publish(ctx, e.eventChannel(r.EventName), r.Message); err != nil {
			return fmt.Errorf("publish event %s: %w", r.EventID, err)
		}
	}
	return nil
}

// unclaim puts rows whose send failed back as they were, due again after a
// short pause: a broker outage does not spend their retries.
func (e *Engine) unclaim(rows []store.OutboxSend, now int64) {
	due := now + min(e.cfg.PollInterval, time.Second).Milliseconds()
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return e.st.SentMany(ctx, q, ids, -1, due, now)
	})
	if err != nil {
		// The rows are due after PendingDelay anyway.
		e.log.Warn("durabus: relay: put back unsent rows", "err", err)
	}
}

// completeUnheard marks rows COMPLETED once the broker took them, for a bus
// that cannot subscribe and so never hears acks.
func (e *Engine) completeUnheard(rows []store.OutboxSend) {
	now := e.nowMS()
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		for _, r := range rows {
			if err := e.st.CompleteOutbox(ctx, q, r.ID, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.log.Warn("durabus: relay: complete published rows", "err", err)
	}
}
