package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Store runs durabus's queries against tables with one prefix.
type Store struct {
	Prefix string
	sql    map[string]string
}

// New returns a Store for tables named prefix+"outbox" and prefix+"inbox".
func New(prefix string) *Store {
	s := &Store{Prefix: prefix, sql: make(map[string]string, len(allQueries))}
	for _, q := range allQueries {
		s.sql[q] = strings.ReplaceAll(q, "{p}", prefix)
	}
	return s
}

func (s *Store) q(text string) string {
	if out, ok := s.sql[text]; ok {
		return out
	}
	panic("store: query not registered: " + text) // a programming error, caught by any test
}

// OutboxRow is a row to insert into the outbox.
type OutboxRow struct {
	ID        int64 // set by InsertOutbox
	EventID   string
	EventName string
	Publisher string
	Message   []byte
	// Sends and DueAt: 0 and the publish time for a row the relay picks
	// up from the table; 1 and the first re-send time for a row handed to
	// the relay in memory, which sends it right after the commit.
	Sends int
	DueAt int64
	Now   int64
	// Groups are the consumer groups expected to handle the event. They are
	// kept on the row (expected) until it needs delivery rows; its first
	// re-send is due at GroupsDueAt.
	Groups      []string
	GroupsDueAt int64
}

// OutboxSend is a due outbox row handed to the relay.
type OutboxSend struct {
	ID        int64
	EventID   string
	EventName string
	State     string
	Sends     int
	Tracked   int
	Lazy      bool // tracks groups and has no delivery rows yet
	Message   []byte
}

// InboxRow is a row to insert into the inbox.
type InboxRow struct {
	Consumer  string
	EventID   string
	Handler   string
	EventName string
	Publisher string
	State     string
	Message   []byte
	LastError string
	// Attempts is how many runs the row starts with: 0 for a row stored on
	// receipt, 1 for a row stored after its handler already ran.
	Attempts int
	// DueAt is when a PROCESSING row is due to run; 0 means Now.
	DueAt int64
	Now   int64
}

// InboxRun is an inbox row claimed for a handler run.
type InboxRun struct {
	ID        int64
	EventID   string
	Handler   string
	EventName string
	Publisher string
	Message   []byte
	Attempts  int
}

const (
	qInsertOutbox = `INSERT INTO {p}outbox (event_id, event_name, publisher, state, message, sends, due_at, tracked, expected, created_at, updated_at)
VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?)`
	qDueOutbox = `SELECT id, event_id, event_name, state, sends, tracked, expected IS NOT NULL, message FROM {p}outbox
WHERE publisher = ? AND state IN ('PENDING', 'PROCESSING') AND due_at < 9223372036854775807 AND due_at <= ? ORDER BY due_at LIMIT ?`
	qNextOutboxDue = `SELECT MIN(due_at) FROM {p}outbox WHERE publisher = ? AND state IN ('PENDING', 'PROCESSING') AND due_at < 9223372036854775807`
	qSentMany      = `UPDATE {p}outbox SET sends = MAX(sends + ?, 0), due_at = ?, updated_at = ? WHERE id IN (SELECT value FROM json_each(?))`
	qOutboxDead    = `UPDATE {p}outbox SET state = 'DEAD', last_error = ?, dead_by = ?, updated_at = ? WHERE id = ?`
	qAckTarget     = `SELECT id, tracked, expected IS NOT NULL FROM {p}outbox WHERE publisher = ? AND event_id = ?`
	qAckReceived   = `UPDATE {p}outbox SET state = 'PROCESSING', sends = 0, due_at = ?, updated_at = ?
WHERE id = ? AND state = 'PENDING'`
	qAckCompleted = `UPDATE {p}outbox SET state = 'COMPLETED', last_error = NULL, dead_by = NULL, updated_at = ?
WHERE id = ? AND state <> 'COMPLETED'`
	qAckDead = `UPDATE {p}outbox SET state = 'DEAD', last_error = ?, dead_by = ?, updated_at = ?
WHERE id = ? AND state IN ('PENDING', 'PROCESSING')`
	qCompleteOutbox = `UPDATE {p}outbox SET state = 'COMPLETED', updated_at = ? WHERE id = ? AND state <> 'COMPLETED'`

	qRecallOutgoing = `UPDATE {p}outbox SET sends = 0, due_at = ?, updated_at = ? WHERE id IN (
SELECT id FROM {p}outbox WHERE publisher = ? AND state IN ('PENDING', 'PROCESSING') AND id > ? ORDER BY id LIMIT ?) RETURNING id`
	qRecallDeadOutbox = `UPDATE {p}outbox SET state = 'PENDING', sends = 0, due_at = ?, updated_at = ? WHERE id IN (
SELECT id FROM {p}outbox WHERE publisher = ? AND state = 'DEAD' AND dead_by IS NULL AND id > ? ORDER BY id LIMIT ?) RETURNING id`
	qRecallDeadInbox = `UPDATE {p}inbox SET state = 'PROCESSING', attempts = 0, due_at = ?, updated_at = ? WHERE id IN (
SELECT id FROM {p}inbox WHERE consumer = ? AND state = 'DEAD' AND handler <> '' AND id > ? ORDER BY id LIMIT ?) RETURNING id`
	// A row is updated after it is created: the created index narrows the
	// search for old COMPLETED rows; DEAD rows have an index of their own.
	qDeleteOutbox = `DELETE FROM {p}outbox WHERE id IN (
SELECT id FROM {p}outbox WHERE created_at < ?3 AND publisher = ?1 AND state = ?2 AND updated_at < ?3 LIMIT ?4)`
	qDeleteOutboxDead = `DELETE FROM {p}outbox WHERE id IN (
SELECT id FROM {p}outbox WHERE publisher = ?1 AND state = 'DEAD' AND ?2 = 'DEAD' AND updated_at < ?3 LIMIT ?4)`
	qDeleteInbox = `DELETE FROM {p}inbox WHERE id IN (
SELECT id FROM {p}inbox WHERE created_at < ?3 AND consumer = ?1 AND state = ?2 AND updated_at < ?3 LIMIT ?4)`
	qDeleteInboxDead = `DELETE FROM {p}inbox WHERE id IN (
SELECT id FROM {p}inbox WHERE consumer = ?1 AND state = 'DEAD' AND ?2 = 'DEAD' AND updated_at < ?3 LIMIT ?4)`

	qInsertInbox = `INSERT INTO {p}inbox (consumer, event_id, handler, event_name, publisher, state, message, attempts, due_at, last_error, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?) ON CONFLICT (consumer, event_id, handler) DO NOTHING`
	qReplayInbox = `INSERT INTO {p}inbox (consumer, event_id, handler, event_name, publisher, state, message, attempts, due_at, last_error, created_at, updated_at, replay)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, 1) ON CONFLICT (consumer, event_id, handler) DO UPDATE SET
state = 'PROCESSING', attempts = 0, due_at = excluded.due_at, message = excluded.message, last_error = NULL, replay = 1,
updated_at = excluded.updated_at WHERE state <> 'PROCESSING'`
	qInboxEventStates = `SELECT state, COALESCE(last_error, ''), replay FROM {p}inbox WHERE consumer = ? AND event_id = ?`
	qSeen             = `SELECT DISTINCT i.event_id FROM json_each(?) AS j CROSS JOIN {p}inbox AS i ON i.consumer = ? AND i.event_id = j.value`
	qClaimInbox       = `UPDATE {p}inbox SET attempts = attempts + 1, due_at = ?, updated_at = ? WHERE id IN (
SELECT id FROM {p}inbox WHERE consumer = ? AND state = 'PROCESSING' AND due_at <= ? ORDER BY due_at LIMIT ?)
RETURNING id, event_id, handler, event_name, publisher, message, attempts`
	qNextInboxDue  = `SELECT MIN(due_at) FROM {p}inbox WHERE consumer = ? AND state = 'PROCESSING'`
	qInboxComplete = `UPDATE {p}inbox SET state = 'COMPLETED', last_error = NULL, updated_at = ? WHERE id = ? AND state = 'PROCESSING'`
	qInboxRetry    = `UPDATE {p}inbox SET due_at = ?, last_error = ?, updated_at = ? WHERE id = ? AND state = 'PROCESSING'`
	qInboxDead     = `UPDATE {p}inbox SET state = 'DEAD', last_error = ?, updated_at = ? WHERE id = ? AND state = 'PROCESSING'`
	qInboxRenew    = `UPDATE {p}inbox SET due_at = ? WHERE state = 'PROCESSING' AND id IN (SELECT value FROM json_each(?))`
	qInboxWake     = `UPDATE {p}inbox SET due_at = ?, updated_at = ?
WHERE consumer = ? AND state = 'PROCESSING' AND event_name = ? AND handler = ? AND last_error = ?`
	qInboxPostpone = `UPDATE {p}inbox SET attempts = MAX(attempts - ?, 0), due_at = ?, last_error = COALESCE(?, last_error), updated_at = ?
WHERE id = ? AND state = 'PROCESSING'`

	qOutboxCounts = `SELECT event_name, state, COUNT(*), MIN(CASE WHEN state IN ('PENDING', 'PROCESSING') THEN created_at END)
FROM {p}outbox WHERE publisher = ? GROUP BY event_name, state`
	qInboxCounts = `SELECT event_name, handler, state, COUNT(*), MIN(CASE WHEN state = 'PROCESSING' THEN created_at END)
FROM {p}inbox WHERE consumer = ? GROUP BY event_name, handler, state`
)

var allQueries = []string{
	qMaterialize, qMaterialized, qLazyOf, qTracked, qDeliveryReceived, qDeliveryCompleted, qDeliveryDead, qDeliveryCounts, qSetOutboxState,
	qDueDeliveries, qNextDeliveryDue, qDeliverySent, qDeliveryUndelivered, qUpsertGroup, qLoadGroups, qForgetGroup, qDropDeliveries,
	qAddCounter, qCounter, qRecallDeliveries, qRecallDeadDeliveries, qReplayDeliveries, qReplayRows, qReplayMark, qGroupCounts, qUntrack, qMetaGet, qMetaSet,
	qInsertOutbox, qDueOutbox, qNextOutboxDue, qSentMany, qOutboxDead, qAckTarget, qAckReceived, qAckCompleted, qAckDead,
	qCompleteOutbox, qRecallOutgoing, qRecallDeadOutbox, qRecallDeadInbox, qDeleteOutbox, qDeleteOutboxDead, qDeleteInbox, qDeleteInboxDead,
	qInsertInbox, qReplayInbox, qInboxEventStates, qSeen, qClaimInbox, qNextInboxDue, qInboxComplete, qInboxRetry, qInboxDead, qInboxPostpone, qInboxWake, qInboxRenew,
	qOutboxCounts, qInboxCounts,
	qCompleteLazy, qLazyAcked, qCompleteDeliveries, qCompleteTracked, qCompleteUntracked,
}

// InsertOutbox inserts PENDING rows and sets their IDs.
func (s *Store) InsertOutbox(ctx context.Context, q Querier, rows ...OutboxRow) error {
	for i, r := range rows {
		var expected any
		if len(r.Groups) > 0 {
			b, err := json.Marshal(r.Groups)
			if err != nil {
				return err
			}
			expected = string(b)
		}
		res, err := q.ExecContext(ctx, s.q(qInsertOutbox), r.EventID, r.EventName, r.Publisher, r.Message, r.Sends, r.DueAt,
			len(r.Groups), expected, r.Now, r.Now)
		if err != nil {
			return fmt.Errorf("insert outbox row: %w", Classify(err))
		}
		if rows[i].ID, err = res.LastInsertId(); err != nil {
			return err
		}
	}
	return nil
}

// DueOutbox returns up to limit rows of publisher that are due at now.
func (s *Store) DueOutbox(ctx context.Context, q Querier, publisher string, now int64, limit int) ([]OutboxSend, error) {
	rows, err := q.QueryContext(ctx, s.q(qDueOutbox), publisher, now, limit)
	if err != nil {
		return nil, fmt.Errorf("select due outbox rows: %w", Classify(err))
	}
	defer rows.Close()
	var out []OutboxSend
	for rows.Next() {
		var r OutboxSend
		if err := rows.Scan(&r.ID, &r.EventID, &r.EventName, &r.State, &r.Sends, &r.Tracked, &r.Lazy, &r.Message); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// NextDue returns the earliest due time of publisher's unfinished outbox rows
// (ok is false when there are none).
func (s *Store) NextOutboxDue(ctx context.Context, q Querier, publisher string) (due int64, ok bool, err error) {
	return nextDue(ctx, q, s.q(qNextOutboxDue), publisher)
}

// NextInboxDue is NextOutboxDue for the inbox rows of consumer.
func (s *Store) NextInboxDue(ctx context.Context, q Querier, consumer string) (due int64, ok bool, err error) {
	return nextDue(ctx, q, s.q(qNextInboxDue), consumer)
}

func nextDue(ctx context.Context, q Querier, query, name string) (int64, bool, error) {
	var due sql.NullInt64
	if err := q.QueryRowContext(ctx, query, name).Scan(&due); err != nil {
		return 0, false, Classify(err)
	}
	return due.Int64, due.Valid, nil
}

// SentMany adds delta to the send count of rows ids (1 when they are
// sent, -1 when a send failed) and makes them due at dueAt.
func (s *Store) SentMany(ctx context.Context, q Querier, ids []int64, delta int, dueAt, now int64) error {
	list, err := json.Marshal(ids)
	if err != nil {
		return err
	}
	_, err = q.ExecContext(ctx, s.q(qSentMany), delta, dueAt, now, string(list))
	return Classify(err)
}

// OutboxDead marks an outbox row DEAD; deadBy names the group that gave up on
// it, empty when no one acknowledged it.
func (s *Store) OutboxDead(ctx context.Context, q Querier, id int64, reason, deadBy string, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qOutboxDead), reason, nullString(deadBy), now, id)
	return Classify(err)
}

// CompleteOutbox marks an outbox row COMPLETED.
func (s *Store) CompleteOutbox(ctx context.Context, q Querier, id int64, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qCompleteOutbox), now, id)
	return Classify(err)
}

// Ack is an acknowledgement a consumer group sent about one event.
type Ack struct {
	EventID string
	Status  string // Received, Completed or Dead (the row states)
	Group   string
	Error   string
	Replay  bool // about a replayed run
}

// Received is the ack status for a stored but unfinished event.
const Received = "RECEIVED"

// ApplyAck moves publisher's outbox row along with an ack: the delivery of
// the ack's group when the row tracks groups, the row itself otherwise. It
// reports whether a row changed.
func (s *Store) ApplyAck(ctx context.Context, q Querier, publisher string, a Ack, nextDue, now int64) (bool, error) {
	var id int64
	var tracked int
	var lazy bool
	err := q.QueryRowContext(ctx, s.q(qAckTarget), publisher, a.EventID).Scan(&id, &tracked, &lazy)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil // not this publisher's, or deleted since
	}
	if err != nil {
		return false, Classify(err)
	}
	if tracked > 0 {
		if lazy {
			if err := s.Materialize(ctx, q, []int64{id}, now); err != nil {
				return false, err
			}
		}
		return s.applyGroupAck(ctx, q, id, a, nextDue, now)
	}
	var res sql.Result
	switch a.Status {
	case Received:
		res, err = q.ExecContext(ctx, s.q(qAckReceived), nextDue, now, id)
	case Completed:
		res, err = q.ExecContext(ctx, s.q(qAckCompleted), now, id)
	case Dead:
		res, err = q.ExecContext(ctx, s.q(qAckDead), a.Error, nullString(a.Group), now, id)
	default:
		return false, fmt.Errorf("unknown ack status %q", a.Status)
	}
	if err != nil {
		return false, Classify(err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// InsertInbox inserts rows unless the (consumer, event, handler) row exists.
// It reports how many rows were new.
func (s *Store) InsertInbox(ctx context.Context, q Querier, rows ...InboxRow) (int, error) {
	return s.insertInbox(ctx, q, qInsertInbox, rows)
}

// ReplayInbox inserts rows, or makes finished ones run again: a replay.
func (s *Store) ReplayInbox(ctx context.Context, q Querier, rows ...InboxRow) (int, error) {
	return s.insertInbox(ctx, q, qReplayInbox, rows)
}

func (s *Store) insertInbox(ctx context.Context, q Querier, query string, rows []InboxRow) (int, error) {
	added := 0
	for _, r := range rows {
		_, ok, err := s.insertInboxRow(ctx, q, query, r)
		if err != nil {
			return added, err
		}
		if ok {
			added++
		}
	}
	return added, nil
}

// InsertInboxID inserts one row unless it exists and returns its id, 0
// when it existed.
func (s *Store) InsertInboxID(ctx context.Context, q Querier, r InboxRow) (int64, error) {
	id, _, err := s.insertInboxRow(ctx, q, qInsertInbox, r)
	return id, err
}

// insertInboxRow runs query (an insert or a replay upsert) for r and
// reports whether it wrote, and the id of a row it inserted.
func (s *Store) insertInboxRow(ctx context.Context, q Querier, query string, r InboxRow) (int64, bool, error) {
	due := r.DueAt
	if due == 0 {
		due = r.Now
	}
	res, err := q.ExecContext(ctx, s.q(query), r.Consumer, r.EventID, r.Handler, r.EventName, r.Publisher, r.State,
		r.Message, r.Attempts, due, r.LastError, r.Now, r.Now)
	if err != nil {
		return 0, false, fmt.Errorf("insert inbox row: %w", Classify(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, false, nil
	}
	id, err := res.LastInsertId()
	return id, true, err
}

// EventStatus sums up the inbox entries of one event.
type EventStatus struct {
	// Status is Completed when every handler completed, Dead when one is
	// dead and none still runs, Received otherwise.
	Status    string
	LastError string
	// Replay is true when the latest run was asked for by a replay.
	Replay bool
}

// Seen reports which of eventIDs consumer has inbox rows for.
func (s *Store) Seen(ctx context.Context, q Querier, consumer string, eventIDs []string) (map[string]bool, error) {
	list, err := json.Marshal(eventIDs)
	if err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, s.q(qSeen), string(list), consumer)
	if err != nil {
		return nil, Classify(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		seen[id] = true
	}
	return seen, Classify(rows.Err())
}

// InboxEventStatus sums up the inbox rows of one event. ok is false when the
// event has no rows.
func (s *Store) InboxEventStatus(ctx context.Context, q Querier, consumer, eventID string) (st EventStatus, ok bool, err error) {
	rows, err := q.QueryContext(ctx, s.q(qInboxEventStates), consumer, eventID)
	if err != nil {
		return st, false, Classify(err)
	}
	defer rows.Close()
	var processing, dead, n int
	for rows.Next() {
		var state, le string
		var replay bool
		if err := rows.Scan(&state, &le, &replay); err != nil {
			return st, false, err
		}
		n++
		st.Replay = st.Replay || replay
		switch state {
		case Processing:
			processing++
		case Dead:
			dead++
			st.LastError = le
		}
	}
	if err := rows.Err(); err != nil {
		return st, false, err
	}
	switch {
	case n == 0:
		return st, false, nil
	case processing > 0:
		st.Status, st.LastError = Received, ""
	case dead > 0:
		st.Status = Dead
	default:
		st.Status, st.LastError = Completed, ""
	}
	return st, true, nil
}

// ClaimInbox leases up to limit due PROCESSING rows of consumer until
// leaseUntil, counting an attempt for each.
func (s *Store) ClaimInbox(ctx context.Context, q Querier, consumer string, now, leaseUntil int64, limit int) ([]InboxRun, error) {
	rows, err := q.QueryContext(ctx, s.q(qClaimInbox), leaseUntil, now, consumer, now, limit)
	if err != nil {
		return nil, fmt.Errorf("claim inbox rows: %w", Classify(err))
	}
	defer rows.Close()
	var out []InboxRun
	for rows.Next() {
		var r InboxRun
		if err := rows.Scan(&r.ID, &r.EventID, &r.Handler, &r.EventName, &r.Publisher, &r.Message, &r.Attempts); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// InboxComplete marks a row COMPLETED.
func (s *Store) InboxComplete(ctx context.Context, q Querier, id, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qInboxComplete), now, id)
	return Classify(err)
}

// InboxRetry schedules another run of a row at dueAt.
func (s *Store) InboxRetry(ctx context.Context, q Querier, id, dueAt int64, lastError string, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qInboxRetry), dueAt, lastError, now, id)
	return Classify(err)
}

// InboxDead marks a row DEAD with its last error.
func (s *Store) InboxDead(ctx context.Context, q Querier, id int64, lastError string, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qInboxDead), lastError, now, id)
	return Classify(err)
}

// InboxPostpone makes a claimed row due at dueAt, giving back its attempt
// when uncount is true, and records reason when it is not empty.
func (s *Store) InboxPostpone(ctx context.Context, q Querier, id int64, uncount bool, dueAt int64, reason string, now int64) error {
	n := 0
	if uncount {
		n = 1
	}
	_, err := q.ExecContext(ctx, s.q(qInboxPostpone), n, dueAt, nullString(reason), now, id)
	return Classify(err)
}

// InboxRenew extends the lease of running entries until until.
func (s *Store) InboxRenew(ctx context.Context, q Querier, ids []int64, until int64) error {
	list, err := json.Marshal(ids)
	if err != nil {
		return err
	}
	_, err = q.ExecContext(ctx, s.q(qInboxRenew), until, string(list))
	return Classify(err)
}

// InboxWake makes due at now the PROCESSING entries of one handler whose
// last error is reason.
func (s *Store) InboxWake(ctx context.Context, q Querier, consumer, event, handler, reason string, now int64) error {
	_, err := q.ExecContext(ctx, s.q(qInboxWake), now, now, consumer, event, handler, reason)
	return Classify(err)
}

// Batch kinds for the batched maintenance calls.
const (
	RecallOutgoing = iota
	RecallDeadOutbox
	RecallDeadInbox
)

// Recall makes up to limit rows with id > after due now again, as kind
// says, and returns the largest id it touched and how many.
func (s *Store) Recall(ctx context.Context, q Querier, kind int, name string, after int64, limit int, now int64) (last int64, n int, err error) {
	query := map[int]string{RecallOutgoing: qRecallOutgoing, RecallDeadOutbox: qRecallDeadOutbox, RecallDeadInbox: qRecallDeadInbox}[kind]
	ids, err := column[int64](ctx, s, q, query, now, now, name, after, limit)
	if err != nil {
		return 0, 0, err
	}
	for _, id := range ids {
		last = max(last, id)
	}
	if kind != RecallDeadInbox && len(ids) > 0 {
		if err := s.recallDeliveries(ctx, q, kind, ids, now); err != nil {
			return 0, 0, err
		}
	}
	return last, len(ids), nil
}

// Delete removes up to limit rows in state that were last updated before
// before, from the outbox of publisher or the inbox of consumer.
func (s *Store) Delete(ctx context.Context, q Querier, inbox bool, name, state string, before int64, limit int) (int, error) {
	query := map[[2]bool]string{
		{false, false}: qDeleteOutbox, {false, true}: qDeleteOutboxDead,
		{true, false}: qDeleteInbox, {true, true}: qDeleteInboxDead,
	}[[2]bool{inbox, state == Dead}]
	res, err := q.ExecContext(ctx, s.q(query), name, state, before, limit)
	if err != nil {
		return 0, Classify(err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// Count is one line of the state counts.
type Count struct {
	EventName string
	Handler   string // inbox only
	State     string
	N         int
	Oldest    int64 // created_at of the oldest unfinished row, 0 if none
}

// OutboxCounts counts publisher's outbox rows by event name and state.
func (s *Store) OutboxCounts(ctx context.Context, q Querier, publisher string) ([]Count, error) {
	return s.counts(ctx, q, qOutboxCounts, publisher, false)
}

// InboxCounts counts consumer's inbox rows by event name, handler and state.
func (s *Store) InboxCounts(ctx context.Context, q Querier, consumer string) ([]Count, error) {
	return s.counts(ctx, q, qInboxCounts, consumer, true)
}

func (s *Store) counts(ctx context.Context, q Querier, query, name string, inbox bool) ([]Count, error) {
	rows, err := q.QueryContext(ctx, s.q(query), name)
	if err != nil {
		return nil, Classify(err)
	}
	defer rows.Close()
	var out []Count
	for rows.Next() {
		var c Count
		var oldest sql.NullInt64
		dest := []any{&c.EventName, &c.State, &c.N, &oldest}
		if inbox {
			dest = []any{&c.EventName, &c.Handler, &c.State, &c.N, &oldest}
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		c.Oldest = oldest.Int64
		out = append(out, c)
	}
	return out, rows.Err()
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
