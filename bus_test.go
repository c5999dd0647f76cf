package durabus_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

func TestBus_Publish_ReturnsIDAfterCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)

	id, err := b.bus.Publish(t.Context(), userCreated{ID: "u1", Email: "u1@example.com"}, durabus.WithCorrelationID("corr-1"))
	require.NoError(t, err)

	u, err := uuid.Parse(string(id))
	require.NoError(t, err, "the event ID is a UUID")
	require.Equal(t, uuid.Version(7), u.Version(), "the event ID is a UUIDv7")

	// A connection that did not exist when Publish ran sees the row: it was
	// committed before Publish returned.
	other, err := sql.Open("sqlite", "file:"+b.path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer other.Close()
	var state, name, publisher string
	var msg []byte
	err = other.QueryRow(`SELECT state, event_name, publisher, message FROM durabus_outbox WHERE event_id = ?`, string(id)).
		Scan(&state, &name, &publisher, &msg)
	require.NoError(t, err, "the outbox row must be committed when Publish returns")
	require.Contains(t, []string{"PENDING", "PROCESSING", "COMPLETED"}, state)
	require.Equal(t, "user.created", name)
	require.Equal(t, "svc", publisher)

	var env struct {
		EventName     string          `json:"eventName"`
		EventID       string          `json:"eventId"`
		PublishedBy   string          `json:"publishedBy"`
		CorrelationID string          `json:"correlationId"`
		Payload       json.RawMessage `json:"payload"`
	}
	require.NoError(t, json.Unmarshal(msg, &env))
	require.Equal(t, "user.created", env.EventName)
	require.Equal(t, string(id), env.EventID)
	require.Equal(t, "svc", env.PublishedBy)
	require.Equal(t, "corr-1", env.CorrelationID)
	require.JSONEq(t, `{"id":"u1","email":"u1@example.com"}`, string(env.Payload))
}

func TestBus_Publish_EnvelopeReachesHandler(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	b := setup(t, withClock(clock))
	got := make(chan durabus.Envelope[userCreated], 10)
	require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
		got <- env
		return nil
	}))

	headers := map[string]string{"traceparent": "00-abc-def-01"}
	id := publish(t, b.bus, userCreated{ID: "u1", Email: "u1@example.com"},
		durabus.WithCorrelationID("corr-1"), durabus.WithKey("tenant-7"), durabus.WithHeaders(headers))
	headers["traceparent"] = "changed after Publish"

	env := receive(t, got)
	require.Equal(t, durabus.Envelope[userCreated]{
		EventName:     "user.created",
		EventID:       id,
		PublishedBy:   "svc",
		PublishedAt:   clock.Now().UTC(),
		CorrelationID: "corr-1",
		Key:           "tenant-7",
		Headers:       map[string]string{"traceparent": "00-abc-def-01"},
		Attempt:       1,
		Payload:       userCreated{ID: "u1", Email: "u1@example.com"},
	}, env)
}

func TestBus_Publish_ConcurrentPublishersAllComplete(t *testing.T) {
	t.Parallel()
	// 64 concurrent publishers contend for the group-commit writer. (64 × 50
	// takes 15 s under -race on a 2-CPU machine, for no more coverage.)
	const goroutines, perGoroutine = 64, 20
	const total = goroutines * perGoroutine
	b := setup(t, func(cfg *durabus.Config) {
		cfg.Synchronous = durabus.SyncNormal // this test is about concurrency, not fsync latency
		cfg.Concurrency = 64
	})
	handled := newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

	ids := make(chan durabus.EventID, total)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				id, err := b.bus.Publish(t.Context(), userCreated{ID: fmt.Sprintf("u-%d-%d", g, i)})
				if !assert.NoError(t, err) {
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	published := map[durabus.EventID]bool{}
	for id := range ids {
		require.False(t, published[id], "event ID %s returned twice", id)
		published[id] = true
	}
	require.Len(t, published, total)

	eventuallyWithin(t, 2*waitTimeout, func() error { // cheap: no query while handlers run
		if n := handled.total(); n < total {
			return fmt.Errorf("%d of %d events handled", n, total)
		}
		return nil
	})
	eventually(t, func() error {
		var out, in int
		err := b.db.QueryRow(`SELECT (SELECT COUNT(*) FROM durabus_outbox WHERE publisher = 'svc' AND state = 'COMPLETED'),
			(SELECT COUNT(*) FROM durabus_inbox WHERE consumer = 'svc' AND state = 'COMPLETED')`).Scan(&out, &in)
		if err != nil {
			return err
		}
		if out != total || in != total {
			return fmt.Errorf("%d outbox and %d inbox rows COMPLETED, want %d of each", out, in, total)
		}
		return nil
	})
	s, err := b.bus.Stats(t.Context())
	require.NoError(t, err)
	require.Equal(t, durabus.StateCounts{Completed: total}, s.Outbox)
	require.Equal(t, durabus.StateCounts{Completed: total}, s.Inbox)
	require.Equal(t, total, handled.total(), "each event is handled once")
	for id := range published {
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)), "event %s", id)
	}
}

func TestBus_Publish_RejectsInvalidEvents(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		event   durabus.Event
		wantErr error
	}{
		{"NilEvent", nil, durabus.ErrInvalidEventName},
		{"EmptyName", namedEvent{Name: ""}, durabus.ErrInvalidEventName},
		{"NameLongerThan255Bytes", namedEvent{Name: strings.Repeat("e", 256)}, durabus.ErrInvalidEventName},
		{"NameWithControlCharacter", namedEvent{Name: "user\ncreated"}, durabus.ErrInvalidEventName},
		{"NameNotUTF8", namedEvent{Name: "user.\xffcreated"}, durabus.ErrInvalidEventName},
		{"PayloadFailsValidate", userCreated{ID: "u1", Email: "no-at-sign"}, durabus.ErrInvalidPayload},
		{"PayloadTooLarge", namedEvent{Name: "blob.stored", Data: strings.Repeat("x", 4096)}, durabus.ErrMessageTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(cfg *durabus.Config) { cfg.MaxMessageBytes = 2048 })

			id, err := b.bus.Publish(t.Context(), tt.event)
			require.ErrorIs(t, err, tt.wantErr)
			require.Empty(t, id)
			require.Zero(t, countOutbox(t, b.db), "nothing is written for a rejected event")
		})
	}

	t.Run("ValidationErrorDetails", func(t *testing.T) {
		t.Parallel()
		b := setup(t)

		_, err := b.bus.Publish(t.Context(), userCreated{ID: ""})
		var ve *durabus.ValidationError
		require.ErrorAs(t, err, &ve)
		require.Equal(t, "user.created", ve.EventName)
		require.EqualError(t, ve.Err, "id is required")
		require.ErrorIs(t, err, durabus.ErrInvalidPayload)
		require.Zero(t, countOutbox(t, b.db))
	})

	t.Run("NameExactly255BytesIsAccepted", func(t *testing.T) {
		t.Parallel()
		b := setup(t)

		id := publish(t, b.bus, namedEvent{Name: strings.Repeat("e", 255)})
		_, err := outboxByID(b.db, id)
		require.NoError(t, err)
	})
}

func TestBus_PublishBatch(t *testing.T) {
	t.Parallel()

	t.Run("AllDeliveredInOneCommit", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		got := make(chan durabus.Envelope[userCreated], 100)
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			got <- env
			return nil
		}))
		events := make([]durabus.Event, 50)
		for i := range events {
			events[i] = userCreated{ID: fmt.Sprintf("u%d", i)}
		}

		ids, err := b.bus.PublishBatch(t.Context(), events, durabus.WithCorrelationID("import-7"))
		require.NoError(t, err)
		require.Len(t, ids, len(events))

		// Every row is committed when PublishBatch returns, in order.
		rows, err := outboxRows(b.db, "1 = 1")
		require.NoError(t, err)
		require.Len(t, rows, len(events))
		for i, r := range rows {
			require.Equal(t, string(ids[i]), r.EventID, "row %d", i)
		}
		want := map[durabus.EventID]string{}
		for i, id := range ids {
			want[id] = fmt.Sprintf("u%d", i)
		}
		require.Len(t, want, len(ids), "the IDs are distinct")
		for range events {
			env := receive(t, got)
			require.Equal(t, want[env.EventID], env.Payload.ID, "event %s", env.EventID)
			require.Equal(t, "import-7", env.CorrelationID, "the options apply to every event")
			delete(want, env.EventID)
		}
		require.Empty(t, want)
		for _, id := range ids {
			waitOutbox(t, b.db, id, "COMPLETED")
		}
	})

	t.Run("LargerThanTheHandoff", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// More rows than the relay takes in memory: they wait in the table,
		// due at once, and the relay's scan finds and sends them.
		events := make([]durabus.Event, 9000)
		for i := range events {
			events[i] = userCreated{ID: fmt.Sprintf("u%d", i)}
		}

		ids, err := b.bus.PublishBatch(t.Context(), events)
		require.NoError(t, err)
		require.Len(t, ids, len(events))
		eventually(t, func() error {
			if n := b.ps.Published(); n < int64(len(events)) {
				return fmt.Errorf("%d of %d events sent", n, len(events))
			}
			return nil
		})
		var unsent int
		require.NoError(t, b.db.QueryRow(`SELECT COUNT(*) FROM durabus_outbox WHERE sends = 0`).Scan(&unsent))
		require.Zero(t, unsent, "every row was sent from the table")
	})

	t.Run("OneBadEventRejectsTheBatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t)

		ids, err := b.bus.PublishBatch(t.Context(), []durabus.Event{userCreated{ID: "u1"}, userCreated{ID: ""}, userCreated{ID: "u3"}})
		var ve *durabus.ValidationError
		require.ErrorAs(t, err, &ve)
		require.ErrorIs(t, err, durabus.ErrInvalidPayload)
		require.ErrorContains(t, err, "event 1")
		require.Nil(t, ids)
		require.Zero(t, countOutbox(t, b.db), "nothing is written for a rejected batch")
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := setup(t)

		ids, err := b.bus.PublishBatch(t.Context(), nil)
		require.NoError(t, err)
		require.Empty(t, ids)
		require.Zero(t, countOutbox(t, b.db))
	})

	t.Run("ClosedBus", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		closeBus(t, b.bus)

		_, err := b.bus.PublishBatch(t.Context(), []durabus.Event{userCreated{ID: "u1"}})
		require.ErrorIs(t, err, durabus.ErrClosed)
	})
}

func TestBus_PublishTx(t *testing.T) {
	t.Parallel()

	t.Run("CommittedTxIsDelivered", func(t *testing.T) {
		t.Parallel()
		var db *sql.DB
		b := setup(t, withCallerDB(t, &db))
		got := make(chan durabus.Envelope[userCreated], 10)
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			got <- env
			return nil
		}))
		_, err := db.Exec(`CREATE TABLE accounts (id TEXT PRIMARY KEY)`)
		require.NoError(t, err)

		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		_, err = tx.Exec(`INSERT INTO accounts (id) VALUES ('u1')`)
		require.NoError(t, err)
		id, err := b.bus.PublishTx(t.Context(), tx, userCreated{ID: "u1"})
		require.NoError(t, err)
		require.NoError(t, tx.Commit())

		env := receive(t, got)
		require.Equal(t, id, env.EventID)
		require.Equal(t, "u1", env.Payload.ID)
		waitOutbox(t, b.db, id, "COMPLETED")
		waitInbox(t, b.db, id, "user.created", "COMPLETED")
	})

	t.Run("RolledBackTxIsNeverDelivered", func(t *testing.T) {
		t.Parallel()
		var db *sql.DB
		b := setup(t, withCallerDB(t, &db))
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(env.Payload.ID, env.Attempt)
			return nil
		}))

		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		rolledBack, err := b.bus.PublishTx(t.Context(), tx, userCreated{ID: "rolled-back"})
		require.NoError(t, err)
		require.NoError(t, tx.Rollback())

		rows, err := outboxRows(b.db, "event_id = ?", string(rolledBack))
		require.NoError(t, err)
		require.Empty(t, rows, "a rolled-back transaction leaves no outbox row")

		// The relay has looked at the outbox since the rollback once a later
		// event went through.
		marker := publish(t, b.bus, userCreated{ID: "marker"})
		waitOutbox(t, b.db, marker, "COMPLETED")
		require.Equal(t, []string{"marker"}, handled.keys())
	})

	t.Run("CallerDBStaysOpen", func(t *testing.T) {
		t.Parallel()
		var db *sql.DB
		b := setup(t, withCallerDB(t, &db))
		publish(t, b.bus, userCreated{ID: "u1"})

		require.NoError(t, b.bus.Close(t.Context()))
		require.NoError(t, db.PingContext(t.Context()), "the bus must not close the caller's DB")
		var n int
		require.NoError(t, db.QueryRow(`SELECT COUNT(*) FROM durabus_outbox`).Scan(&n))
		require.Equal(t, 1, n)
	})

	t.Run("NilTx", func(t *testing.T) {
		t.Parallel()
		var db *sql.DB
		b := setup(t, withCallerDB(t, &db))

		_, err := b.bus.PublishTx(t.Context(), nil, userCreated{ID: "u1"})
		require.Error(t, err)
		require.Zero(t, countOutbox(t, b.db))
	})
}

func TestBus_Handle_CompletesInboxAndOutbox(t *testing.T) {
	t.Parallel()

	t.Run("SameBus", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "COMPLETED")
		require.Equal(t, "svc", in.Consumer)
		require.Equal(t, "svc", in.Publisher)
		require.Equal(t, 1, in.Attempts)
		waitOutbox(t, b.db, id, "COMPLETED")
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	})

	t.Run("AcrossBusesAcksComeBack", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		ordersCfg, billingCfg := newConfig(t, ps, "orders"), newConfig(t, ps, "billing")
		orders := openBus[durabus.Event, durabus.Event](t, ordersCfg)
		billing := openBus[durabus.Event, durabus.Event](t, billingCfg)
		ordersDB, billingDB := inspect(t, ordersCfg.Path), inspect(t, billingCfg.Path)
		handled := newCalls()
		require.NoError(t, durabus.Handle(billing, recordUsers(handled)))

		id := publish(t, orders, userCreated{ID: "u1"})

		in := waitInbox(t, billingDB, id, "user.created", "COMPLETED")
		require.Equal(t, "billing", in.Consumer)
		require.Equal(t, "orders", in.Publisher)
		// The publisher's row can only complete through billing's ack: the
		// two buses share nothing but the PubSub.
		out := waitOutbox(t, ordersDB, id, "COMPLETED")
		require.Equal(t, "orders", out.Publisher)
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))

		rows, err := inboxRows(ordersDB, "1 = 1")
		require.NoError(t, err)
		require.Empty(t, rows, "the publisher has no handler, so no inbox rows")
		var n int
		require.NoError(t, billingDB.QueryRow(`SELECT COUNT(*) FROM durabus_outbox`).Scan(&n))
		require.Zero(t, n, "the consumer published nothing")
	})
}

func TestBus_Relay_ResendsLostMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, func(cfg *durabus.Config) { cfg.PendingDelay = 20 * time.Millisecond })
	handled := newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

	b.ps.DropNext(1) // the broker loses the first send
	id := publish(t, b.bus, userCreated{ID: "u1"})

	waitOutbox(t, b.db, id, "COMPLETED")
	require.GreaterOrEqual(t, b.ps.Published(), int64(2), "the event was sent again")
	require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
}

// countingPubSub counts publish attempts per channel, failed ones included.
type countingPubSub struct {
	*mempubsub.PubSub
	mu       sync.Mutex
	attempts map[string]int
}

func newCountingPubSub(ps *mempubsub.PubSub) *countingPubSub {
	return &countingPubSub{PubSub: ps, attempts: map[string]int{}}
}

func (c *countingPubSub) Publish(ctx context.Context, channel string, msg []byte) error {
	c.mu.Lock()
	c.attempts[channel]++
	c.mu.Unlock()
	return c.PubSub.Publish(ctx, channel, msg)
}

func (c *countingPubSub) PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error {
	c.mu.Lock()
	for _, ch := range channels {
		c.attempts[ch]++
	}
	c.mu.Unlock()
	return c.PubSub.PublishBatch(ctx, channels, msgs)
}

func (c *countingPubSub) Attempts(channel string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts[channel]
}

func TestBus_Relay_BrokerOutageKeepsSendBudget(t *testing.T) {
	t.Parallel()
	var counting *countingPubSub
	b := setup(t, func(cfg *durabus.Config) {
		counting = newCountingPubSub(cfg.PubSub.(*mempubsub.PubSub))
		cfg.PubSub = counting
		cfg.MaxRetries = 2
		cfg.PendingDelay = 20 * time.Millisecond
	})
	handled := newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

	b.ps.SetPublishError(errors.New("broker down"))
	id := publish(t, b.bus, userCreated{ID: "u1"})

	// Twice as many failed attempts as the send budget (MaxRetries+1 = 3)...
	eventually(t, func() error {
		if n := counting.Attempts("user.created"); n < 6 {
			return fmt.Errorf("%d publish attempts so far", n)
		}
		return nil
	})
	// ...and the row is still PENDING with its budget untouched.
	eventually(t, func() error {
		r, err := outboxByID(b.db, id)
		if err != nil {
			return err
		}
		if r.State != "PENDING" || r.Sends != 0 {
			return fmt.Errorf("row is %s with %d sends (last_error %q), want PENDING with 0 sends", r.State, r.Sends, r.LastError)
		}
		return nil
	})
	require.Zero(t, handled.total())

	b.ps.SetPublishError(nil)
	waitOutbox(t, b.db, id, "COMPLETED")
	require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
}

func TestBus_Relay_UnacknowledgedEventGoesDead(t *testing.T) {
	t.Parallel()
	b := setup(t, func(cfg *durabus.Config) {
		cfg.MaxRetries = 2
		cfg.PendingDelay = 5 * time.Millisecond
	})
	// No handler anywhere: nobody acknowledges the event.
	id := publish(t, b.bus, userCreated{ID: "u1"})

	r := waitOutbox(t, b.db, id, "DEAD")
	require.True(t, strings.HasPrefix(r.LastError, "undelivered"), "last_error %q", r.LastError)
	require.Equal(t, 3, r.Sends, "one send and MaxRetries re-sends")
	require.Equal(t, int64(3), b.ps.Published())
	require.Empty(t, r.DeadBy, "no group dead-lettered it")
}

func TestBus_OneWayPubSub(t *testing.T) {
	t.Parallel()

	t.Run("PublishOnlyCannotHandle", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) { cfg.PubSub = durabus.PublishOnly(cfg.PubSub) })

		err := durabus.Handle(b.bus, recordUsers(newCalls()))
		require.ErrorIs(t, err, durabus.ErrNotSupported)
	})

	t.Run("SubscribeOnlyCannotPublish", func(t *testing.T) {
		t.Parallel()
		var db *sql.DB
		b := setup(t, withCallerDB(t, &db), func(cfg *durabus.Config) { cfg.PubSub = durabus.SubscribeOnly(cfg.PubSub) })

		_, err := b.bus.Publish(t.Context(), userCreated{ID: "u1"})
		require.ErrorIs(t, err, durabus.ErrNotSupported)

		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck // nothing to undo
		_, err = b.bus.PublishTx(t.Context(), tx, userCreated{ID: "u2"})
		require.ErrorIs(t, err, durabus.ErrNotSupported)
		require.NoError(t, tx.Commit())
		require.Zero(t, countOutbox(t, b.db))
	})

	t.Run("PublishOnlyRowCompletesOnceBrokerAccepted", func(t *testing.T) {
		t.Parallel()
		var counting *countingPubSub
		b := setup(t, func(cfg *durabus.Config) {
			counting = newCountingPubSub(cfg.PubSub.(*mempubsub.PubSub))
			cfg.PubSub = durabus.PublishOnly(counting)
		})
		got := make(chan []byte, 10)
		unsubscribe, err := b.ps.Subscribe(t.Context(), "user.created", func(_ context.Context, msg []byte) error {
			got <- msg
			return nil
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = unsubscribe() })

		b.ps.SetPublishError(errors.New("broker down"))
		id := publish(t, b.bus, userCreated{ID: "u1"})
		eventually(t, func() error {
			if n := counting.Attempts("user.created"); n < 2 {
				return fmt.Errorf("%d publish attempts so far", n)
			}
			return nil
		})
		r, err := outboxByID(b.db, id)
		require.NoError(t, err)
		require.Equal(t, "PENDING", r.State, "the broker did not accept it yet")

		b.ps.SetPublishError(nil)
		msg := receive(t, got)
		require.Contains(t, string(msg), string(id))
		waitOutbox(t, b.db, id, "COMPLETED")
	})

	t.Run("SubscribeOnlyBusHandlesEvents", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		pubCfg, subCfg := newConfig(t, durabus.PublishOnly(ps), "orders"), newConfig(t, durabus.SubscribeOnly(ps), "billing")
		pub := openBus[durabus.Event, durabus.Event](t, pubCfg)
		sub := openBus[durabus.Event, durabus.Event](t, subCfg)
		handled := newCalls()
		require.NoError(t, durabus.Handle(sub, recordUsers(handled)))

		id := publish(t, pub, userCreated{ID: "u1"})

		waitInbox(t, inspect(t, subCfg.Path), id, "user.created", "COMPLETED")
		waitOutbox(t, inspect(t, pubCfg.Path), id, "COMPLETED")
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	})
}
