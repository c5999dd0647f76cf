package store

import (
	"context"
	"encoding/json"
	"fmt"
)

// Completed acks arrive in batches (one ack message holds up to a few
// hundred); CompleteMany applies a batch with a few set-based statements
// instead of a lookup, an update and an aggregate per ack.

const (
	// Rows whose one expected group is this one, without delivery rows.
	qCompleteLazy = `UPDATE {p}outbox SET state = 'COMPLETED', last_error = NULL, dead_by = NULL, updated_at = ?
WHERE id IN (SELECT o.id FROM json_each(?) AS j CROSS JOIN {p}outbox AS o ON o.event_id = j.value
WHERE o.publisher = ? AND o.expected IS NOT NULL AND o.tracked = 1 AND o.expected ->> '$[0]' = ? AND o.state <> 'COMPLETED')`
	// Other rows without delivery rows: they need them now.
	qLazyAcked = `SELECT o.id FROM json_each(?) AS j CROSS JOIN {p}outbox AS o ON o.event_id = j.value
WHERE o.publisher = ? AND o.expected IS NOT NULL AND o.state <> 'COMPLETED'`
	// The deliveries of the group, for the batch's events that track groups.
	qCompleteDeliveries = `UPDATE {p}deliveries SET state = 'COMPLETED', replay = 0, last_error = NULL, updated_at = ?
WHERE group_name = ? AND state <> 'COMPLETED' AND (replay = 0 OR ?)
AND outbox_id IN (SELECT o.id FROM json_each(?) AS j CROSS JOIN {p}outbox AS o ON o.event_id = j.value WHERE o.publisher = ?)
RETURNING outbox_id`
	// The rows whose every delivery is now COMPLETED.
	qCompleteTracked = `UPDATE {p}outbox SET state = 'COMPLETED', last_error = NULL, dead_by = NULL, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state <> 'COMPLETED'
AND NOT EXISTS (SELECT 1 FROM {p}deliveries d WHERE d.outbox_id = {p}outbox.id AND d.state <> 'COMPLETED')
RETURNING id`
	// Rows without groups: the first consumer's acks decide.
	qCompleteUntracked = `UPDATE {p}outbox SET state = 'COMPLETED', last_error = NULL, dead_by = NULL, updated_at = ?
WHERE id IN (SELECT o.id FROM json_each(?) AS j CROSS JOIN {p}outbox AS o ON o.event_id = j.value
WHERE o.publisher = ? AND o.tracked = 0 AND o.state <> 'COMPLETED')`
)

// CompleteMany applies the COMPLETED acks of group for the events eventIDs
// of publisher, as ApplyAck would one by one. replay says whether the acks
// are about replayed runs.
func (s *Store) CompleteMany(ctx context.Context, q Querier, publisher, group string, replay bool, eventIDs []string, now int64) error {
	list, err := json.Marshal(eventIDs)
	if err != nil {
		return err
	}
	if !replay { // a replay has delivery rows
		// Most acks complete an event this group alone was expected to
		// handle; only the others need the statements below.
		res, err := q.ExecContext(ctx, s.q(qCompleteLazy), now, string(list), publisher, group)
		if err != nil {
			return fmt.Errorf("complete acknowledged rows: %w", Classify(err))
		}
		if n, err := res.RowsAffected(); err == nil && n == int64(len(eventIDs)) {
			return nil
		}
		// Some rows need more (or were completed before). The statements
		// below skip the rows that are COMPLETED now, so they can take the
		// whole batch.
	}
	if _, err := q.ExecContext(ctx, s.q(qCompleteUntracked), now, string(list), publisher); err != nil {
		return fmt.Errorf("complete acknowledged rows: %w", Classify(err))
	}
	lazy, err := column[int64](ctx, s, q, qLazyAcked, string(list), publisher)
	if err != nil {
		return err
	}
	if err := s.Materialize(ctx, q, lazy, now); err != nil {
		return err
	}
	moved, err := column[int64](ctx, s, q, qCompleteDeliveries, now, group, replay, string(list), publisher)
	if err != nil || len(moved) == 0 {
		return err
	}
	movedList, err := json.Marshal(moved)
	if err != nil {
		return err
	}
	done, err := column[int64](ctx, s, q, qCompleteTracked, now, string(movedList))
	if err != nil {
		return err
	}
	if len(done) == len(moved) {
		return nil
	}
	// Rows with other groups still at work: sum their deliveries up.
	finished := make(map[int64]bool, len(done))
	for _, id := range done {
		finished[id] = true
	}
	for _, id := range moved {
		if !finished[id] {
			if err := s.Aggregate(ctx, q, id, now); err != nil {
				return err
			}
		}
	}
	return nil
}

// column runs query and returns its one column.
func column[T any](ctx context.Context, s *Store, q Querier, query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, Classify(err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, Classify(rows.Err())
}
