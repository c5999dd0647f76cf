package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
)

// Never is the due time of rows nothing will send by itself.
const Never = math.MaxInt64

// Delivery states: how far one group got with one event.
const (
	DeliveryPending   = "PENDING"
	DeliveryReceived  = "RECEIVED"
	DeliveryCompleted = "COMPLETED"
	DeliveryDead      = "DEAD"
)

const (
	// Delivery rows for the expected groups, in the state of the row, due
	// when the row's re-send was due; then the row waits for its groups.
	qMaterialize = `INSERT INTO {p}deliveries (outbox_id, group_name, state, due_at, updated_at)
SELECT o.id, j.value, CASE o.state WHEN 'COMPLETED' THEN 'COMPLETED' WHEN 'DEAD' THEN 'DEAD' ELSE 'PENDING' END, o.due_at, ?
FROM {p}outbox o, json_each(o.expected) j
WHERE o.id IN (SELECT value FROM json_each(?)) AND o.expected IS NOT NULL
ON CONFLICT (outbox_id, group_name) DO NOTHING`
	qMaterialized = `UPDATE {p}outbox SET expected = NULL,
due_at = CASE WHEN state IN ('PENDING', 'PROCESSING') THEN 9223372036854775807 ELSE due_at END
WHERE id IN (SELECT value FROM json_each(?)) AND expected IS NOT NULL`
	qLazyOf = `SELECT id FROM {p}outbox WHERE publisher = ? AND expected IS NOT NULL AND state IN ('PENDING', 'PROCESSING')
AND EXISTS (SELECT 1 FROM json_each(expected) WHERE value = ?)`
	qTracked = `SELECT tracked FROM {p}outbox WHERE id = ?`
	// While a delivery is a replay, only acks about the replayed run count.
	qDeliveryReceived = `UPDATE {p}deliveries SET state = 'RECEIVED', sends = 0, due_at = ?, updated_at = ?
WHERE outbox_id = ? AND group_name = ? AND state = 'PENDING' AND (replay = 0 OR ?)`
	qDeliveryCompleted = `UPDATE {p}deliveries SET state = 'COMPLETED', replay = 0, last_error = NULL, updated_at = ?
WHERE outbox_id = ? AND group_name = ? AND state <> 'COMPLETED' AND (replay = 0 OR ?)`
	qDeliveryDead = `UPDATE {p}deliveries SET state = 'DEAD', replay = 0, last_error = ?, updated_at = ?
WHERE outbox_id = ? AND group_name = ? AND state IN ('PENDING', 'RECEIVED') AND (replay = 0 OR ?)`
	qDeliveryCounts = `SELECT state, COUNT(*), MAX(CASE WHEN state = 'DEAD' THEN COALESCE(last_error, '') END),
MAX(CASE WHEN state = 'DEAD' AND undelivered = 0 THEN group_name END) FROM {p}deliveries WHERE outbox_id = ? GROUP BY state`
	qSetOutboxState = `UPDATE {p}outbox SET state = ?, last_error = ?, dead_by = ?, updated_at = ? WHERE id = ? AND state <> ?`
	qDueDeliveries  = `SELECT d.outbox_id, o.event_id, o.event_name, d.state, d.sends, d.replay, d.updated_at, o.message
FROM {p}deliveries d JOIN {p}outbox o ON o.id = d.outbox_id
WHERE d.group_name = ? AND d.state IN ('PENDING', 'RECEIVED') AND d.due_at <= ? AND o.publisher = ?
ORDER BY d.due_at, d.outbox_id LIMIT ?`
	qNextDeliveryDue     = `SELECT MIN(due_at) FROM {p}deliveries WHERE group_name = ? AND state IN ('PENDING', 'RECEIVED')`
	qDeliverySent        = `UPDATE {p}deliveries SET sends = ?, due_at = ?, updated_at = ? WHERE outbox_id = ? AND group_name = ?`
	qDeliveryUndelivered = `UPDATE {p}deliveries SET state = 'DEAD', undelivered = 1, replay = 0, last_error = ?, updated_at = ?
WHERE outbox_id = ? AND group_name = ?`
	qUpsertGroup = `INSERT INTO {p}groups (publisher, group_name, event_name, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (publisher, group_name, event_name) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)`
	qLoadGroups     = `SELECT group_name, event_name, last_seen FROM {p}groups WHERE publisher = ?`
	qForgetGroup    = `DELETE FROM {p}groups WHERE publisher = ? AND group_name = ?`
	qDropDeliveries = `DELETE FROM {p}deliveries WHERE group_name = ? AND state IN ('PENDING', 'RECEIVED')
AND outbox_id IN (SELECT id FROM {p}outbox WHERE publisher = ?) RETURNING outbox_id`
	qAddCounter = `INSERT INTO {p}counters (publisher, name, value) VALUES (?, ?, ?)
ON CONFLICT (publisher, name) DO UPDATE SET value = value + excluded.value`
	qCounter          = `SELECT COALESCE((SELECT value FROM {p}counters WHERE publisher = ? AND name = ?), 0)`
	qRecallDeliveries = `UPDATE {p}deliveries SET sends = 0, due_at = ?, updated_at = ?
WHERE state IN ('PENDING', 'RECEIVED') AND outbox_id IN (SELECT value FROM json_each(?))`
	qRecallDeadDeliveries = `UPDATE {p}deliveries SET state = 'PENDING', sends = 0, undelivered = 0, due_at = ?, updated_at = ?
WHERE state = 'DEAD' AND undelivered = 1 AND outbox_id IN (SELECT value FROM json_each(?))`
	qReplayRows = `SELECT id, event_name FROM {p}outbox WHERE publisher = ? AND id > ? AND created_at >= ? AND created_at < ?
AND (? = '' OR event_name IN (SELECT value FROM json_each(?))) ORDER BY id LIMIT ?`
	qReplayDeliveries = `INSERT INTO {p}deliveries (outbox_id, group_name, state, sends, due_at, replay, updated_at) VALUES (?, ?, 'PENDING', 0, ?, 1, ?)
ON CONFLICT (outbox_id, group_name) DO UPDATE SET state = 'PENDING', sends = 0, due_at = excluded.due_at, replay = 1,
undelivered = 0, last_error = NULL, updated_at = excluded.updated_at`
	qUntrack = `UPDATE {p}outbox SET tracked = 0 WHERE id IN (SELECT value FROM json_each(?)) AND expected IS NULL
AND NOT EXISTS (SELECT 1 FROM {p}deliveries d WHERE d.outbox_id = {p}outbox.id)`
	qReplayMark  = `UPDATE {p}outbox SET tracked = MAX(tracked, 1), due_at = ? WHERE id = ?`
	qGroupCounts = `SELECT d.group_name, d.state, COUNT(*) FROM {p}deliveries d JOIN {p}outbox o ON o.id = d.outbox_id
WHERE o.publisher = ?1 GROUP BY d.group_name, d.state
UNION ALL
SELECT j.value, CASE o.state WHEN 'COMPLETED' THEN 'COMPLETED' WHEN 'DEAD' THEN 'DEAD' ELSE 'PENDING' END, COUNT(*)
FROM {p}outbox o, json_each(o.expected) j WHERE o.publisher = ?1 AND o.expected IS NOT NULL GROUP BY 1, 2`
)

// applyGroupAck applies an ack to the delivery row of its group, for outbox
// row id, which tracks groups, and then sums the deliveries up into the
// outbox row's state.
func (s *Store) applyGroupAck(ctx context.Context, q Querier, id int64, a Ack, nextDue, now int64) (bool, error) {
	var res sql.Result
	var err error
	switch a.Status {
	case Received:
		res, err = q.ExecContext(ctx, s.q(qDeliveryReceived), nextDue, now, id, a.Group, a.Replay)
	case Completed:
		res, err = q.ExecContext(ctx, s.q(qDeliveryCompleted), now, id, a.Group, a.Replay)
	case Dead:
		res, err = q.ExecContext(ctx, s.q(qDeliveryDead), a.Error, now, id, a.Group, a.Replay)
	}
	if err != nil {
		return false, Classify(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil // a group that was not expected, or nothing new
	}
	return true, s.Aggregate(ctx, q, id, now)
}

// Aggregate sets an outbox row's state from its deliveries: COMPLETED when
// every group completed, DEAD when a group gave up and none is still at
// work, PROCESSING once a group received it, PENDING before.
func (s *Store) Aggregate(ctx context.Context, q Querier, id, now int64) error {
	rows, err := q.QueryContext(ctx, s.q(qDeliveryCounts), id)
	if err != nil {
		return Classify(err)
	}
	counts := map[string]int{}
	var lastError, deadBy sql.NullString
	for rows.Next() {
		var st string
		var n int
		var le, db sql.NullString
		if err := rows.Scan(&st, &n, &le, &db); err != nil {
			rows.Close()
			return err
		}
		counts[st] = n
		if st == DeliveryDead {
			lastError, deadBy = le, db
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	state := Pending
	var le, db any
	switch {
	case counts[DeliveryPending]+counts[DeliveryReceived]+counts[DeliveryDead] == 0 && counts[DeliveryCompleted] > 0:
		state = Completed
	case counts[DeliveryDead] > 0 && counts[DeliveryPending]+counts[DeliveryReceived] == 0:
		state, le, db = Dead, lastError, deadBy
	case counts[DeliveryReceived]+counts[DeliveryCompleted]+counts[DeliveryDead] > 0:
		state = Processing
	case len(counts) == 0:
		var tracked int
		if err := q.QueryRowContext(ctx, s.q(qTracked), id).Scan(&tracked); err != nil || tracked == 0 {
			return Classify(err) // a row without groups: its acks decide
		}
		// Every expected group was forgotten before it took the event.
		state, le = Dead, "undelivered: every group expected to handle it was forgotten (GroupTTL)"
	}
	_, err = q.ExecContext(ctx, s.q(qSetOutboxState), state, le, db, now, id, state)
	return Classify(err)
}

// Materialize gives the rows ids that still keep their expected groups on
// the row a delivery row per group; from then on the rows wait for their
// groups, re-sent per group.
func (s *Store) Materialize(ctx context.Context, q Querier, ids []int64, now int64) error {
	if len(ids) == 0 {
		return nil
	}
	list, err := json.Marshal(ids)
	if err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, s.q(qMaterialize), now, string(list)); err != nil {
		return fmt.Errorf("write delivery rows: %w", Classify(err))
	}
	_, err = q.ExecContext(ctx, s.q(qMaterialized), string(list))
	return Classify(err)
}

// DeliverySend is a due delivery handed to the relay.
type DeliverySend struct {
	OutboxID  int64
	EventID   string
	EventName string
	State     string
	Sends     int
	Replay    bool
	UpdatedAt int64 // the last send, ack or recall
	Message   []byte
}

// DueDeliveries returns up to limit deliveries of group that are due.
func (s *Store) DueDeliveries(ctx context.Context, q Querier, publisher, group string, now int64, limit int) ([]DeliverySend, error) {
	rows, err := q.QueryContext(ctx, s.q(qDueDeliveries), group, now, publisher, limit)
	if err != nil {
		return nil, fmt.Errorf("select due deliveries: %w", Classify(err))
	}
	defer rows.Close()
	var out []DeliverySend
	for rows.Next() {
		var d DeliverySend
		if err := rows.Scan(&d.OutboxID, &d.EventID, &d.EventName, &d.State, &d.Sends, &d.Replay, &d.UpdatedAt, &d.Message); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// NextDeliveryDue returns the earliest due time of group's open deliveries,
// of any publisher on the database; ok is false when there is none.
func (s *Store) NextDeliveryDue(ctx context.Context, q Querier, group string) (due int64, ok bool, err error) {
	return nextDue(ctx, q, s.q(qNextDeliveryDue), group)
}

// DeliverySent records a delivery's send count and next due time.
func (s *Store) DeliverySent(ctx context.Context, q Querier, outboxID int64, group string, sends int, dueAt, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qDeliverySent), sends, dueAt, now, outboxID, group)
	return Classify(err)
}

// DeliveryUndelivered marks a delivery DEAD because its group never
// acknowledged it, and updates the outbox row.
func (s *Store) DeliveryUndelivered(ctx context.Context, q Querier, outboxID int64, group, reason string, now int64) error {
	if _, err := q.ExecContext(ctx, s.q(qDeliveryUndelivered), reason, now, outboxID, group); err != nil {
		return Classify(err)
	}
	return s.Aggregate(ctx, q, outboxID, now)
}

// GroupSeen is a group's subscription to one event name.
type GroupSeen struct {
	Group, EventName string
	LastSeen         int64
}

// UpsertGroup records that group consumes eventName, seen at now.
func (s *Store) UpsertGroup(ctx context.Context, q Querier, publisher string, g GroupSeen) error {
	_, err := q.ExecContext(ctx, s.q(qUpsertGroup), publisher, g.Group, g.EventName, g.LastSeen, g.LastSeen)
	return Classify(err)
}

// LoadGroups returns every group subscription publisher has heard of.
func (s *Store) LoadGroups(ctx context.Context, q Querier, publisher string) ([]GroupSeen, error) {
	rows, err := q.QueryContext(ctx, s.q(qLoadGroups), publisher)
	if err != nil {
		return nil, Classify(err)
	}
	defer rows.Close()
	var out []GroupSeen
	for rows.Next() {
		var g GroupSeen
		if err := rows.Scan(&g.Group, &g.EventName, &g.LastSeen); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// ForgetGroup deletes a group and its unfinished deliveries, updates the
// affected outbox rows and returns how many deliveries it dropped.
func (s *Store) ForgetGroup(ctx context.Context, q Querier, publisher, group string, now int64) (int, error) {
	lazy, err := column[int64](ctx, s, q, qLazyOf, publisher, group)
	if err != nil {
		return 0, err
	}
	if err := s.Materialize(ctx, q, lazy, now); err != nil {
		return 0, err
	}
	if _, err := q.ExecContext(ctx, s.q(qForgetGroup), publisher, group); err != nil {
		return 0, Classify(err)
	}
	ids, err := column[int64](ctx, s, q, qDropDeliveries, group, publisher)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		if err := s.Aggregate(ctx, q, id, now); err != nil {
			return 0, err
		}
	}
	if len(ids) > 0 {
		if _, err := q.ExecContext(ctx, s.q(qAddCounter), publisher, CounterDropped, len(ids)); err != nil {
			return 0, Classify(err)
		}
	}
	return len(ids), nil
}

// CounterDropped counts deliveries dropped because their group was forgotten.
const CounterDropped = "dropped_deliveries"

// Counter reads a counter of publisher.
func (s *Store) Counter(ctx context.Context, q Querier, publisher, name string) (int64, error) {
	var v int64
	err := q.QueryRowContext(ctx, s.q(qCounter), publisher, name).Scan(&v)
	return v, Classify(err)
}

// recallDeliveries follows an outbox recall onto the rows' deliveries.
func (s *Store) recallDeliveries(ctx context.Context, q Querier, kind int, ids []int64, now int64) error {
	query := qRecallDeliveries
	if kind == RecallDeadOutbox {
		query = qRecallDeadDeliveries
	}
	if err := s.Materialize(ctx, q, ids, now); err != nil {
		return err
	}
	list, _ := json.Marshal(ids)
	if _, err := q.ExecContext(ctx, s.q(query), now, now, string(list)); err != nil {
		return Classify(err)
	}
	if kind == RecallDeadOutbox {
		// Rows whose groups were all forgotten go back to the rule for rows
		// without groups: the first consumer's acks decide.
		if _, err := q.ExecContext(ctx, s.q(qUntrack), string(list)); err != nil {
			return Classify(err)
		}
	}
	for _, id := range ids {
		if err := s.Aggregate(ctx, q, id, now); err != nil {
			return err
		}
	}
	return nil
}

// ReplayFilter selects outbox rows to replay.
type ReplayFilter struct {
	EventNames []string // empty: all
	From, To   int64    // created_at range [From, To)
}

// Replay marks up to limit rows of publisher with id > after, matching f,
// for re-delivery to the groups that groups(event name) returns, and returns
// the largest id it looked at and how many rows got a delivery.
func (s *Store) Replay(ctx context.Context, q Querier, publisher string, f ReplayFilter, groups func(event string) []string, after int64, limit int, now int64) (last int64, seen, n int, err error) {
	names := ""
	if len(f.EventNames) > 0 {
		b, _ := json.Marshal(f.EventNames)
		names = string(b)
	}
	rows, err := q.QueryContext(ctx, s.q(qReplayRows), publisher, after, f.From, f.To, names, names, limit)
	if err != nil {
		return 0, 0, 0, Classify(err)
	}
	type row struct {
		id    int64
		event string
	}
	var found []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.event); err != nil {
			rows.Close()
			return 0, 0, 0, err
		}
		found = append(found, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, 0, err
	}
	ids := make([]int64, len(found))
	for i, r := range found {
		ids[i] = r.id
	}
	if err := s.Materialize(ctx, q, ids, now); err != nil {
		return 0, 0, 0, err
	}
	for _, r := range found {
		last = r.id
		gs := groups(r.event)
		if len(gs) == 0 {
			continue
		}
		for _, g := range gs {
			if _, err := q.ExecContext(ctx, s.q(qReplayDeliveries), r.id, g, now, now); err != nil {
				return 0, 0, 0, Classify(err)
			}
		}
		if _, err := q.ExecContext(ctx, s.q(qReplayMark), Never, r.id); err != nil {
			return 0, 0, 0, Classify(err)
		}
		if err := s.Aggregate(ctx, q, r.id, now); err != nil {
			return 0, 0, 0, err
		}
		n++
	}
	return last, len(found), n, nil
}

// GroupCount counts one group's deliveries in one state.
type GroupCount struct {
	Group, State string
	N            int
}

// GroupCounts counts the deliveries of publisher's events by group and state.
func (s *Store) GroupCounts(ctx context.Context, q Querier, publisher string) ([]GroupCount, error) {
	rows, err := q.QueryContext(ctx, s.q(qGroupCounts), publisher)
	if err != nil {
		return nil, Classify(err)
	}
	defer rows.Close()
	var out []GroupCount
	for rows.Next() {
		var c GroupCount
		if err := rows.Scan(&c.Group, &c.State, &c.N); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

const (
	qMetaGet = `SELECT value FROM {p}meta WHERE key = ?`
	qMetaSet = `INSERT INTO {p}meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`
)

// Meta returns the value of key in the meta table, setting it to def when
// it has none yet.
func (s *Store) Meta(ctx context.Context, q Querier, key, def string) (string, error) {
	if _, err := q.ExecContext(ctx, s.q(qMetaSet), key, def); err != nil {
		return "", Classify(err)
	}
	var v string
	err := q.QueryRowContext(ctx, s.q(qMetaGet), key).Scan(&v)
	return v, Classify(err)
}
