package durabus_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for a condition. Conditions are polled, so a
// passing test never waits for it.
const waitTimeout = 15 * time.Second

// ---- events used by the tests ----

type userCreated struct {
	ID    string `json:"id"`
	Email string `json:"email,omitempty"`
}

func (userCreated) EventName() string { return "user.created" }
func (u userCreated) UserID() string  { return u.ID }

func (u userCreated) Validate() error {
	if u.ID == "" {
		return errors.New("id is required")
	}
	if u.Email != "" && !strings.Contains(u.Email, "@") {
		return fmt.Errorf("email %q has no @", u.Email)
	}
	return nil
}

// userEvent is an interface S: the events about one user.
type userEvent interface {
	durabus.Event
	UserID() string
}

type orderPlaced struct {
	OrderID string `json:"orderId"`
}

func (orderPlaced) EventName() string { return "order.placed" }

type invoiceSent struct {
	InvoiceID string `json:"invoiceId"`
}

func (invoiceSent) EventName() string { return "invoice.sent" }

type auditLogged struct {
	Line string `json:"line"`
}

func (auditLogged) EventName() string { return "audit.logged" }

// namedEvent takes its name from a field, to publish names no sane type
// would return.
type namedEvent struct {
	Name string `json:"-"`
	Data string `json:"data"`
}

func (e namedEvent) EventName() string { return e.Name }

// ---- retry policy and clock ----

// fixedDelay is a RetryPolicy that always waits the same (tiny) time.
type fixedDelay time.Duration

func (d fixedDelay) NextRetry(int) time.Duration { return time.Duration(d) }

// testClock is a clock that moves only when told to.
type testClock struct{ ms atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ms.Store(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).UnixMilli())
	return c
}

func (c *testClock) Now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func (c *testClock) MS() int64               { return c.ms.Load() }
func (c *testClock) Advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

// ---- setup ----

type testBundle struct {
	bus  *durabus.Bus[durabus.Event, durabus.Event]
	cfg  durabus.Config
	ps   *mempubsub.PubSub
	path string  // the bus's SQLite file
	db   *sql.DB // a separate connection pool on that file, to inspect rows
}

type configOpt func(*durabus.Config)

// setup opens a bus named "svc" on a fresh file and a fresh in-memory
// PubSub, with fast polling and a 1 ms retry policy. Everything is closed
// when the test ends.
func setup(t *testing.T, opts ...configOpt) *testBundle {
	t.Helper()
	ps := newPubSub(t)
	cfg := newConfig(t, ps, "svc")
	path := cfg.Path
	for _, o := range opts {
		o(&cfg)
	}
	b := &testBundle{cfg: cfg, ps: ps, path: path}
	b.bus = openBus[durabus.Event, durabus.Event](t, cfg)
	b.db = inspect(t, path)
	return b
}

func newPubSub(t *testing.T) *mempubsub.PubSub {
	ps := mempubsub.New()
	t.Cleanup(func() { assert.NoError(t, ps.Close()) })
	return ps
}

// newConfig is a fast config for a bus named name on its own file.
func newConfig(t *testing.T, ps durabus.PubSub, name string) durabus.Config {
	return durabus.Config{
		Name:         name,
		Path:         filepath.Join(t.TempDir(), name+".db"),
		PubSub:       ps,
		PollInterval: 10 * time.Millisecond,
		RetryPolicy:  fixedDelay(time.Millisecond),
	}
}

// openBus opens a bus and closes it when the test ends.
func openBus[P, S durabus.Event](t *testing.T, cfg durabus.Config) *durabus.Bus[P, S] {
	t.Helper()
	bus, err := durabus.Open[P, S](t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeBus(t, bus) })
	return bus
}

type closer interface {
	Close(ctx context.Context) error
}

func closeBus(t *testing.T, bus closer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	assert.NoError(t, bus.Close(ctx))
}

func withClock(c *testClock) configOpt {
	return func(cfg *durabus.Config) { *cfg = durabus.WithClock(*cfg, c.Now) }
}

// withCallerDB makes the bus use a *sql.DB the test opened on the bus's
// file (as PublishTx needs), and stores it in *out.
func withCallerDB(t *testing.T, out **sql.DB) configOpt {
	return func(cfg *durabus.Config) {
		db, err := sql.Open("sqlite", "file:"+cfg.Path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, db.Close()) }) // runs after the bus closed
		cfg.DB, cfg.Path = db, ""
		*out = db
	}
}

// inspect opens a second connection pool on a bus's file.
func inspect(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, db.Close()) })
	return db
}

// ---- waiting ----

// eventually polls cond every 5 ms until it returns nil, and fails the test
// with cond's last error after waitTimeout.
func eventually(t *testing.T, cond func() error) {
	t.Helper()
	eventuallyWithin(t, waitTimeout, cond)
}

func eventuallyWithin(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition still false after %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// receive returns the next value from ch, failing after waitTimeout.
func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("nothing received after %v", waitTimeout)
		panic("unreachable")
	}
}

// ---- rows ----

type outboxRow struct {
	EventID, EventName, Publisher, State string
	Sends                                int
	DueAt, CreatedAt, UpdatedAt          int64
	LastError, DeadBy                    string
	Message                              []byte
}

const outboxCols = `event_id, event_name, publisher, state, sends, due_at, created_at, updated_at,
COALESCE(last_error, ''), COALESCE(dead_by, ''), message`

func outboxRows(db *sql.DB, where string, args ...any) ([]outboxRow, error) {
	rows, err := db.Query(`SELECT `+outboxCols+` FROM durabus_outbox WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.EventID, &r.EventName, &r.Publisher, &r.State, &r.Sends, &r.DueAt, &r.CreatedAt,
			&r.UpdatedAt, &r.LastError, &r.DeadBy, &r.Message); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func outboxByID(db *sql.DB, id durabus.EventID) (outboxRow, error) {
	rows, err := outboxRows(db, "event_id = ?", string(id))
	if err != nil {
		return outboxRow{}, err
	}
	if len(rows) != 1 {
		return outboxRow{}, fmt.Errorf("%d outbox rows for event %s", len(rows), id)
	}
	return rows[0], nil
}

// waitOutbox waits until the outbox row of id is in state and returns it.
func waitOutbox(t *testing.T, db *sql.DB, id durabus.EventID, state string) outboxRow {
	t.Helper()
	var r outboxRow
	eventually(t, func() error {
		var err error
		if r, err = outboxByID(db, id); err != nil {
			return err
		}
		if r.State != state {
			return fmt.Errorf("outbox row of %s is %s (sends %d, last_error %q), want %s", id, r.State, r.Sends, r.LastError, state)
		}
		return nil
	})
	return r
}

func countOutbox(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(`SELECT COUNT(*) FROM durabus_outbox`).Scan(&n))
	return n
}

type inboxRow struct {
	ID                                               int64
	Consumer, EventID, Handler, EventName, Publisher string
	State                                            string
	Attempts                                         int
	DueAt, CreatedAt, UpdatedAt                      int64
	LastError                                        string
	Message                                          []byte
}

const inboxCols = `id, consumer, event_id, handler, event_name, publisher, state, attempts, due_at, created_at,
updated_at, COALESCE(last_error, ''), message`

func inboxRows(db *sql.DB, where string, args ...any) ([]inboxRow, error) {
	rows, err := db.Query(`SELECT `+inboxCols+` FROM durabus_inbox WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []inboxRow
	for rows.Next() {
		var r inboxRow
		if err := rows.Scan(&r.ID, &r.Consumer, &r.EventID, &r.Handler, &r.EventName, &r.Publisher, &r.State,
			&r.Attempts, &r.DueAt, &r.CreatedAt, &r.UpdatedAt, &r.LastError, &r.Message); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func inboxByID(db *sql.DB, id durabus.EventID, handler string) (inboxRow, error) {
	rows, err := inboxRows(db, "event_id = ? AND handler = ?", string(id), handler)
	if err != nil {
		return inboxRow{}, err
	}
	if len(rows) != 1 {
		return inboxRow{}, fmt.Errorf("%d inbox rows for event %s, handler %q", len(rows), id, handler)
	}
	return rows[0], nil
}

// waitInbox waits until the inbox row of (id, handler) is in state and
// returns it.
func waitInbox(t *testing.T, db *sql.DB, id durabus.EventID, handler, state string) inboxRow {
	t.Helper()
	var r inboxRow
	eventually(t, func() error {
		var err error
		if r, err = inboxByID(db, id, handler); err != nil {
			return err
		}
		if r.State != state {
			return fmt.Errorf("inbox row of %s/%s is %s (attempts %d, last_error %q), want %s", id, handler, r.State, r.Attempts, r.LastError, state)
		}
		return nil
	})
	return r
}

// ---- handlers ----

// calls records handler runs by key (an event ID or a payload ID).
type calls struct {
	mu       sync.Mutex
	attempts map[string][]int
}

func newCalls() *calls { return &calls{attempts: map[string][]int{}} }

func (c *calls) add(key string, attempt int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts[key] = append(c.attempts[key], attempt)
}

func (c *calls) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.attempts[key])
}

func (c *calls) attemptsOf(key string) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.attempts[key]...)
}

func (c *calls) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, a := range c.attempts {
		n += len(a)
	}
	return n
}

func (c *calls) keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.attempts))
	for k := range c.attempts {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// recordUsers returns a handler of userCreated that records each run by
// event ID and returns nil.
func recordUsers(c *calls) func(context.Context, durabus.Envelope[userCreated]) error {
	return func(_ context.Context, env durabus.Envelope[userCreated]) error {
		c.add(string(env.EventID), env.Attempt)
		return nil
	}
}

func publish(t *testing.T, bus *durabus.Bus[durabus.Event, durabus.Event], e durabus.Event, opts ...durabus.PublishOption) durabus.EventID {
	t.Helper()
	id, err := bus.Publish(t.Context(), e, opts...)
	require.NoError(t, err)
	return id
}

// envelope builds a wire envelope by hand, as another publisher (or an
// attacker) could send it.
func envelope(name, id, publisher, payload string) []byte {
	return fmt.Appendf(nil, `{"eventName":%q,"eventId":%q,"publishedBy":%q,"publishedAt":"2026-11-22T10:00:00.000Z","payload":%s}`,
		name, id, publisher, payload)
}

// schemaVersions returns the schema versions applied to db, in order.
func schemaVersions(t *testing.T, db *sql.DB) []int {
	t.Helper()
	rows, err := db.Query(`SELECT version FROM durabus_schema ORDER BY version`)
	require.NoError(t, err)
	defer rows.Close()
	var versions []int
	for rows.Next() {
		var v int
		require.NoError(t, rows.Scan(&v))
		versions = append(versions, v)
	}
	require.NoError(t, rows.Err())
	return versions
}

// checkStateConstraints checks the state constraints of schema 5 on db:
// written with = rather than IN, so that no insert builds a temporary
// b-tree, and still rejecting a state that is not one.
func checkStateConstraints(t *testing.T, db *sql.DB) {
	t.Helper()
	inserts := map[string]string{
		"durabus_outbox": `INSERT INTO durabus_outbox (event_id, event_name, publisher, state, message, due_at, created_at, updated_at)
VALUES ('check', 'e', 'p', ?, x'00', 0, 0, 0)`,
		"durabus_inbox": `INSERT INTO durabus_inbox (consumer, event_id, handler, event_name, publisher, state, message, due_at, created_at, updated_at)
VALUES ('c', 'check', 'h', 'e', 'p', ?, x'00', 0, 0, 0)`,
		"durabus_deliveries": `INSERT INTO durabus_deliveries (outbox_id, group_name, state, due_at, updated_at) VALUES (0, 'check', ?, 0, 0)`,
	}
	for table, insert := range inserts {
		var text string
		require.NoError(t, db.QueryRow(`SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?`, table).Scan(&text))
		require.Contains(t, text, "CHECK (state = ", table)
		require.NotContains(t, text, "state IN (", table)

		rows, err := db.Query("EXPLAIN "+insert, "COMPLETED")
		require.NoError(t, err)
		for rows.Next() {
			cols := make([]any, 8)
			ptrs := make([]any, len(cols))
			for i := range cols {
				ptrs[i] = &cols[i]
			}
			require.NoError(t, rows.Scan(ptrs...))
			require.NotEqual(t, "OpenEphemeral", fmt.Sprint(cols[1]), "an insert into %s builds a temporary b-tree", table)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())

		tx, err := db.Begin()
		require.NoError(t, err)
		_, err = tx.Exec(insert, "BOGUS")
		require.ErrorContains(t, err, "CHECK constraint failed", table)
		_, err = tx.Exec(insert, "COMPLETED")
		require.NoError(t, err, table)
		require.NoError(t, tx.Rollback())
	}
}
