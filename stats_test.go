package durabus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
)

func TestBus_Stats_Empty(t *testing.T) {
	t.Parallel()
	b := setup(t)

	s, err := b.bus.Stats(t.Context())
	require.NoError(t, err)
	require.Equal(t, durabus.Stats{}, s)
}

func TestBus_Stats_CountsByStateEventAndHandler(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	b := setup(t, withClock(clock))

	// user.created completes, order.placed is dead-lettered, invoice.sent
	// is still running and audit.logged has no handler: it stays PENDING.
	require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
	require.NoError(t, durabus.Handle(b.bus, func(context.Context, durabus.Envelope[orderPlaced]) error {
		return durabus.Unrecoverable(errors.New("no such order"))
	}))
	started, release := make(chan struct{}), make(chan struct{})
	require.NoError(t, durabus.Handle(b.bus, func(ctx context.Context, _ durabus.Envelope[invoiceSent]) error {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}))
	t.Cleanup(func() { close(release) }) // before the bus closes

	u1 := publish(t, b.bus, userCreated{ID: "u1"})
	u2 := publish(t, b.bus, userCreated{ID: "u2"})
	order := publish(t, b.bus, orderPlaced{OrderID: "o1"})
	invoice := publish(t, b.bus, invoiceSent{InvoiceID: "i1"})
	audit := publish(t, b.bus, auditLogged{Line: "hello"})
	waitOutbox(t, b.db, u1, "COMPLETED")
	waitOutbox(t, b.db, u2, "COMPLETED")
	waitOutbox(t, b.db, order, "DEAD")
	receive(t, started)
	waitOutbox(t, b.db, invoice, "PROCESSING")
	waitOutbox(t, b.db, audit, "PENDING")

	clock.Advance(5 * time.Second) // everything was created at the same instant
	s, err := b.bus.Stats(t.Context())
	require.NoError(t, err)

	require.Equal(t, durabus.StateCounts{Pending: 1, Processing: 1, Completed: 2, Dead: 1}, s.Outbox)
	require.Equal(t, 2, s.Outbox.Unfinished())
	require.Equal(t, durabus.StateCounts{Processing: 1, Completed: 2, Dead: 1}, s.Inbox)
	require.ElementsMatch(t, []durabus.EventStats{
		{EventName: "user.created", StateCounts: durabus.StateCounts{Completed: 2}},
		{EventName: "order.placed", StateCounts: durabus.StateCounts{Dead: 1}},
		{EventName: "invoice.sent", StateCounts: durabus.StateCounts{Processing: 1}},
		{EventName: "audit.logged", StateCounts: durabus.StateCounts{Pending: 1}},
	}, s.Events)
	require.ElementsMatch(t, []durabus.HandlerStats{
		{EventName: "user.created", Handler: "user.created", StateCounts: durabus.StateCounts{Completed: 2}},
		{EventName: "order.placed", Handler: "order.placed", StateCounts: durabus.StateCounts{Dead: 1}},
		{EventName: "invoice.sent", Handler: "invoice.sent", StateCounts: durabus.StateCounts{Processing: 1}},
	}, s.Handlers)
	require.Equal(t, 5*time.Second, s.OldestOutbox)
	require.Equal(t, 5*time.Second, s.OldestInbox)
}

func TestBus_Stats_BadMessagesHaveNoHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
	require.NoError(t, b.ps.Publish(t.Context(), "user.created", []byte("garbage")))

	eventually(t, func() error {
		rows, err := inboxRows(b.db, "state = 'DEAD'")
		if err != nil {
			return err
		}
		if len(rows) != 1 {
			return errors.New("the bad message is not stored yet")
		}
		return nil
	})
	s, err := b.bus.Stats(t.Context())
	require.NoError(t, err)
	require.Equal(t, durabus.StateCounts{Dead: 1}, s.Inbox)
	require.Equal(t, []durabus.HandlerStats{
		{EventName: "user.created", Handler: "", StateCounts: durabus.StateCounts{Dead: 1}},
	}, s.Handlers)
	require.Zero(t, s.OldestInbox, "nothing is unfinished")
}
