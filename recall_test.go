package durabus_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
)

func TestBus_RecallOutgoing_ResendsUnfinishedRows(t *testing.T) {
	t.Parallel()
	// With an hour of PendingDelay only the recall can deliver a lost event.
	b := setup(t, func(cfg *durabus.Config) { cfg.PendingDelay = time.Hour })
	handled := newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

	done := publish(t, b.bus, userCreated{ID: "delivered"})
	waitOutbox(t, b.db, done, "COMPLETED")
	// The bus's hello went out before the next messages, so that the three
	// dropped ones are the events.
	eventually(t, func() error {
		s, err := b.bus.Stats(t.Context())
		if err != nil || len(s.Groups) == 0 {
			return fmt.Errorf("group not heard of yet (%v)", err)
		}
		return nil
	})

	b.ps.DropNext(3)
	lost := []durabus.EventID{
		publish(t, b.bus, userCreated{ID: "lost-1"}),
		publish(t, b.bus, userCreated{ID: "lost-2"}),
		publish(t, b.bus, userCreated{ID: "lost-3"}),
	}
	for _, id := range lost {
		eventually(t, func() error {
			r, err := outboxByID(b.db, id)
			if err != nil {
				return err
			}
			if r.Sends != 1 {
				return fmt.Errorf("sent %d times", r.Sends)
			}
			return nil
		})
		r, err := outboxByID(b.db, id)
		require.NoError(t, err)
		require.Equal(t, "PENDING", r.State, "the only send was dropped")
	}

	n, err := b.bus.RecallOutgoing(t.Context())
	require.NoError(t, err)
	require.Equal(t, 3, n, "the unfinished rows, not the completed one")

	for _, id := range lost {
		waitOutbox(t, b.db, id, "COMPLETED")
	}
	closeBus(t, b.bus)
	for _, id := range append(lost, done) {
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	}
}

func TestBus_RecallDead(t *testing.T) {
	t.Parallel()

	t.Run("UndeliveredOutboxRowsAreSentAgain", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) {
			cfg.MaxRetries = -1
			cfg.PendingDelay = 5 * time.Millisecond
		})
		id := publish(t, b.bus, userCreated{ID: "u1"}) // no handler yet
		waitOutbox(t, b.db, id, "DEAD")

		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))
		n, err := b.bus.RecallDead(t.Context())
		require.NoError(t, err)
		require.Equal(t, 1, n)

		waitOutbox(t, b.db, id, "COMPLETED")
		closeBus(t, b.bus)
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	})

	t.Run("DeadInboxEntriesRunAgainWithFreshBudget", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) { cfg.MaxRetries = 1 })
		var broken atomic.Bool
		broken.Store(true)
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			if broken.Load() {
				return errors.New("database migration pending")
			}
			return nil
		}))
		id := publish(t, b.bus, userCreated{ID: "u1"})
		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Equal(t, 2, in.Attempts)
		waitOutbox(t, b.db, id, "DEAD")

		broken.Store(false) // the fix is deployed
		n, err := b.bus.RecallDead(t.Context())
		require.NoError(t, err)
		require.Equal(t, 1, n, "the inbox entry; the outbox row was dead-lettered by a handler, not undelivered")

		in = waitInbox(t, b.db, id, "user.created", "COMPLETED")
		require.Equal(t, 1, in.Attempts, "a fresh retry budget")
		waitOutbox(t, b.db, id, "COMPLETED")
		closeBus(t, b.bus)
		require.Equal(t, []int{1, 2, 1}, handled.attemptsOf(string(id)))
	})

	t.Run("MalformedMessagesStayDead", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
		require.NoError(t, b.ps.Publish(t.Context(), "user.created", []byte("not an envelope")))
		require.NoError(t, b.ps.Publish(t.Context(), "user.created", envelope("order.placed", uuid.NewString(), "x", `{}`)))
		eventually(t, func() error {
			rows, err := inboxRows(b.db, "state = 'DEAD'")
			if err != nil {
				return err
			}
			if len(rows) != 2 {
				return fmt.Errorf("%d DEAD rows, want 2", len(rows))
			}
			return nil
		})

		n, err := b.bus.RecallDead(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
		rows, err := inboxRows(b.db, "1 = 1")
		require.NoError(t, err)
		require.Len(t, rows, 2)
		for _, r := range rows {
			require.Equal(t, "DEAD", r.State)
		}
	})
}

func TestBus_PerishDead(t *testing.T) {
	t.Parallel()

	t.Run("ZeroDeletesEveryDeadRow", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		require.NoError(t, durabus.Handle(b.bus, func(context.Context, durabus.Envelope[orderPlaced]) error {
			return durabus.Unrecoverable(errors.New("no such order"))
		}))
		completed := newCalls()
		require.NoError(t, durabus.Handle(b.bus, recordUsers(completed)))
		dead1 := publish(t, b.bus, orderPlaced{OrderID: "o1"})
		dead2 := publish(t, b.bus, orderPlaced{OrderID: "o2"})
		ok := publish(t, b.bus, userCreated{ID: "u1"})
		require.NoError(t, b.ps.Publish(t.Context(), "user.created", []byte("garbage")))
		waitOutbox(t, b.db, dead1, "DEAD")
		waitOutbox(t, b.db, dead2, "DEAD")
		waitOutbox(t, b.db, ok, "COMPLETED")
		eventually(t, func() error {
			rows, err := inboxRows(b.db, "state = 'DEAD'")
			if err != nil {
				return err
			}
			if len(rows) != 3 {
				return fmt.Errorf("%d DEAD inbox rows, want 3", len(rows))
			}
			return nil
		})

		n, err := b.bus.PerishDead(t.Context(), 0)
		require.NoError(t, err)
		require.Equal(t, 5, n, "2 outbox rows and 3 inbox rows")

		out, err := outboxRows(b.db, "1 = 1")
		require.NoError(t, err)
		require.Len(t, out, 1)
		require.Equal(t, "COMPLETED", out[0].State)
		in, err := inboxRows(b.db, "1 = 1")
		require.NoError(t, err)
		require.Len(t, in, 1)
		require.Equal(t, "COMPLETED", in[0].State)
	})

	t.Run("OlderThanKeepsRecentRows", func(t *testing.T) {
		t.Parallel()
		clock := newTestClock()
		b := setup(t, withClock(clock))
		require.NoError(t, durabus.Handle(b.bus, func(context.Context, durabus.Envelope[orderPlaced]) error {
			return durabus.Unrecoverable(errors.New("no such order"))
		}))
		old := publish(t, b.bus, orderPlaced{OrderID: "old"})
		waitOutbox(t, b.db, old, "DEAD")
		waitInbox(t, b.db, old, "order.placed", "DEAD")

		clock.Advance(2 * time.Hour)
		recent := publish(t, b.bus, orderPlaced{OrderID: "recent"})
		waitOutbox(t, b.db, recent, "DEAD")
		waitInbox(t, b.db, recent, "order.placed", "DEAD")

		n, err := b.bus.PerishDead(t.Context(), time.Hour)
		require.NoError(t, err)
		require.Equal(t, 2, n, "the old event's outbox row and inbox entry")
		_, err = outboxByID(b.db, old)
		require.Error(t, err, "the old outbox row is gone")
		_, err = inboxByID(b.db, old, "order.placed")
		require.Error(t, err, "the old inbox entry is gone")
		_, err = outboxByID(b.db, recent)
		require.NoError(t, err, "the recent outbox row stays")
		_, err = inboxByID(b.db, recent, "order.placed")
		require.NoError(t, err, "the recent inbox entry stays")

		_, err = b.bus.PerishDead(t.Context(), -time.Second)
		require.Error(t, err, "a negative age is a mistake")
	})
}

// TestBus_Maintenance_ScopedToBusName runs recall and perish on a file that
// holds the same rows for two bus names and checks that only the bus's own
// rows change.
func TestBus_Maintenance_ScopedToBusName(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		call func(ctx context.Context, bus *durabus.Bus[durabus.Event, durabus.Event]) (int, error)
		want int
	}{
		{"RecallOutgoing", func(ctx context.Context, bus *durabus.Bus[durabus.Event, durabus.Event]) (int, error) {
			return bus.RecallOutgoing(ctx)
		}, 1},
		{"RecallDead", func(ctx context.Context, bus *durabus.Bus[durabus.Event, durabus.Event]) (int, error) {
			return bus.RecallDead(ctx)
		}, 2},
		{"PerishDead", func(ctx context.Context, bus *durabus.Bus[durabus.Event, durabus.Event]) (int, error) {
			return bus.PerishDead(ctx, 0)
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ps := newPubSub(t)
			cfg := newConfig(t, ps, "svc")
			cfg.PendingDelay = time.Hour
			schema, err := durabus.Open[durabus.Event, durabus.Event](t.Context(), cfg)
			require.NoError(t, err)
			require.NoError(t, schema.Close(t.Context()))

			db := inspect(t, cfg.Path)
			for _, name := range []string{"svc", "other"} {
				insertRows(t, db, name)
			}
			before := snapshot(t, db, "other")

			bus := openBus[durabus.Event, durabus.Event](t, cfg)
			n, err := tt.call(t.Context(), bus)
			require.NoError(t, err)
			require.Equal(t, tt.want, n, "the bus's own rows")
			closeBus(t, bus)

			require.Equal(t, before, snapshot(t, db, "other"), "another bus's rows are untouched")
		})
	}
}

// insertRows gives bus name one unfinished outbox row, one undelivered DEAD
// outbox row and one DEAD inbox entry.
func insertRows(t *testing.T, db *sql.DB, name string) {
	t.Helper()
	now := time.Now().UnixMilli()
	for _, state := range []string{"PENDING", "DEAD"} {
		id := uuid.Must(uuid.NewV7()).String()
		_, err := db.Exec(`INSERT INTO durabus_outbox (event_id, event_name, publisher, state, message, sends, due_at,
			last_error, created_at, updated_at) VALUES (?, 'user.created', ?, ?, ?, 1, ?, 'undelivered: test', ?, ?)`,
			id, name, state, envelope("user.created", id, name, `{"id":"u1"}`), now+time.Hour.Milliseconds(), now-1000, now-1000)
		require.NoError(t, err)
	}
	id := uuid.Must(uuid.NewV7()).String()
	_, err := db.Exec(`INSERT INTO durabus_inbox (consumer, event_id, handler, event_name, publisher, state, message,
		attempts, due_at, last_error, created_at, updated_at) VALUES (?, ?, 'user.created', 'user.created', 'elsewhere', 'DEAD', ?, 3, ?, 'boom', ?, ?)`,
		name, id, envelope("user.created", id, "elsewhere", `{"id":"u1"}`), now-1000, now-1000, now-1000)
	require.NoError(t, err)
}

// snapshot returns every row of bus name, outbox and inbox.
func snapshot(t *testing.T, db *sql.DB, name string) [2]any {
	t.Helper()
	out, err := outboxRows(db, "publisher = ?", name)
	require.NoError(t, err)
	in, err := inboxRows(db, "consumer = ?", name)
	require.NoError(t, err)
	require.Len(t, out, 2)
	require.Len(t, in, 1)
	return [2]any{out, in}
}
