package durabus_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
)

// closeStarted reports whether Close has begun: calls then return ErrClosed.
// PerishDead is the probe because it changes nothing on a bus without DEAD
// rows.
func closeStarted(bus *durabus.Bus[durabus.Event, durabus.Event]) func() error {
	return func() error {
		if _, err := bus.PerishDead(context.Background(), 0); !errors.Is(err, durabus.ErrClosed) {
			return fmt.Errorf("Close has not started (PerishDead: %v)", err)
		}
		return nil
	}
}

func TestBus_Close_DrainsInFlightHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started, release := make(chan struct{}), make(chan struct{})
	ctxErr := make(chan error, 1)
	require.NoError(t, durabus.Handle(b.bus, func(ctx context.Context, _ durabus.Envelope[userCreated]) error {
		close(started)
		<-release
		ctxErr <- ctx.Err()
		return nil
	}))
	id := publish(t, b.bus, userCreated{ID: "u1"})
	receive(t, started)

	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		closed <- b.bus.Close(ctx)
	}()
	eventually(t, closeStarted(b.bus))
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a handler was running", err)
	default:
	}

	close(release)
	require.NoError(t, receive(t, closed))
	require.NoError(t, <-ctxErr, "the handler's context was not cancelled while Close could wait")
	in, err := inboxByID(b.db, id, "user.created")
	require.NoError(t, err)
	require.Equal(t, "COMPLETED", in.State, "the drained handler's result is written before Close returns")
	out, err := outboxByID(b.db, id)
	require.NoError(t, err)
	require.Equal(t, "COMPLETED", out.State)
}

func TestBus_Close_ContextEndsFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started, cancelled := make(chan struct{}), make(chan struct{})
	require.NoError(t, durabus.Handle(b.bus, func(ctx context.Context, _ durabus.Envelope[userCreated]) error {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return ctx.Err()
	}))
	id := publish(t, b.bus, userCreated{ID: "u1"})
	receive(t, started)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, b.bus.Close(ctx), context.DeadlineExceeded)
	receive(t, cancelled) // the handler saw its context end

	ctx2, cancel2 := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel2()
	require.NoError(t, b.bus.Close(ctx2), "a second Close waits for the shutdown to finish")
	in, err := inboxByID(b.db, id, "user.created")
	require.NoError(t, err)
	require.Equal(t, "PROCESSING", in.State, "a cancelled run is left for the next bus, not failed")
}

func TestBus_Close_IdempotentAndConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
	id := publish(t, b.bus, userCreated{ID: "u1"})
	waitOutbox(t, b.db, id, "COMPLETED")

	const closers = 32
	errs := make(chan error, closers)
	var wg sync.WaitGroup
	for range closers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			errs <- b.bus.Close(ctx)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, b.bus.Close(t.Context()), "Close after Close")
}

func TestBus_Close_CallsAfterCloseFail(t *testing.T) {
	t.Parallel()
	var db *sql.DB
	b := setup(t, withCallerDB(t, &db))
	require.NoError(t, b.bus.Close(t.Context()))
	ctx := t.Context()

	_, err := b.bus.Publish(ctx, userCreated{ID: "u1"})
	require.ErrorIs(t, err, durabus.ErrClosed, "Publish")

	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = b.bus.PublishTx(ctx, tx, userCreated{ID: "u2"})
	require.ErrorIs(t, err, durabus.ErrClosed, "PublishTx")
	require.NoError(t, tx.Commit())

	err = durabus.Handle(b.bus, recordUsers(newCalls()))
	require.ErrorIs(t, err, durabus.ErrClosed, "Handle")

	_, err = b.bus.RecallOutgoing(ctx)
	require.ErrorIs(t, err, durabus.ErrClosed, "RecallOutgoing")
	_, err = b.bus.RecallDead(ctx)
	require.ErrorIs(t, err, durabus.ErrClosed, "RecallDead")
	_, err = b.bus.PerishDead(ctx, 0)
	require.ErrorIs(t, err, durabus.ErrClosed, "PerishDead")

	require.Zero(t, countOutbox(t, b.db), "nothing was written after Close")
}

func TestBus_Close_RacingPublishesAreDurableOrErrClosed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const publishers = 16
	accepted := make(chan durabus.EventID, 100_000)
	var wg sync.WaitGroup
	for g := range publishers {
		wg.Go(func() {
			for i := 0; ; i++ {
				id, err := b.bus.Publish(context.Background(), userCreated{ID: fmt.Sprintf("u-%d-%d", g, i)})
				if err != nil {
					if !errors.Is(err, durabus.ErrClosed) {
						t.Errorf("Publish during Close: %v, want ErrClosed", err)
					}
					return
				}
				accepted <- id
			}
		})
	}
	eventually(t, func() error { // let the publishers get going
		if n := len(accepted); n < 50 {
			return fmt.Errorf("%d events accepted", n)
		}
		return nil
	})
	closeBus(t, b.bus)
	wg.Wait()
	close(accepted)

	stored := map[string]bool{}
	rows, err := outboxRows(b.db, "1 = 1")
	require.NoError(t, err)
	for _, r := range rows {
		stored[r.EventID] = true
	}
	n := 0
	for id := range accepted {
		require.True(t, stored[string(id)], "Publish returned %s but the row is not on disk", id)
		n++
	}
	require.Equal(t, n, len(rows), "no row without an accepted Publish")
}
