package durabus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

func TestHandle_Retries(t *testing.T) {
	t.Parallel()

	t.Run("FailsTwiceThenSucceeds", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			if env.Attempt < 3 {
				return fmt.Errorf("attempt %d failed", env.Attempt)
			}
			return nil
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "COMPLETED")
		require.Equal(t, 3, in.Attempts)
		require.Empty(t, in.LastError, "a completed entry keeps no error")
		waitOutbox(t, b.db, id, "COMPLETED")
		require.Equal(t, []int{1, 2, 3}, handled.attemptsOf(string(id)))
	})

	t.Run("AlwaysFailingGoesDeadAfterMaxRetries", func(t *testing.T) {
		t.Parallel()
		dead := make(chan durabus.DeadLetter, 10)
		b := setup(t, func(cfg *durabus.Config) {
			cfg.MaxRetries = 3
			cfg.OnDead = func(_ context.Context, d durabus.DeadLetter) { dead <- d }
		})
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			return fmt.Errorf("attempt %d failed", env.Attempt)
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Equal(t, "attempt 4 failed", in.LastError)
		require.Equal(t, 4, in.Attempts)
		out := waitOutbox(t, b.db, id, "DEAD")
		require.Equal(t, "attempt 4 failed", out.LastError)
		require.Equal(t, "svc", out.DeadBy)

		d := receive(t, dead)
		require.Equal(t, id, d.EventID)
		require.Equal(t, "user.created", d.EventName)
		require.Equal(t, "user.created", d.Handler)
		require.Equal(t, 4, d.Attempts)
		require.EqualError(t, d.Err, "attempt 4 failed")
		var env struct {
			EventID string `json:"eventId"`
		}
		require.NoError(t, json.Unmarshal(d.Message, &env))
		require.Equal(t, string(id), env.EventID)

		closeBus(t, b.bus) // waits for every handler run and OnDead call
		require.Equal(t, []int{1, 2, 3, 4}, handled.attemptsOf(string(id)), "one run and MaxRetries retries")
		require.Empty(t, dead, "OnDead is called once")
	})

	t.Run("UnrecoverableGoesDeadAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) { cfg.MaxRetries = 5 })
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			return durabus.Unrecoverable(errors.New("customer does not exist"))
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Contains(t, in.LastError, "customer does not exist")
		require.Equal(t, 1, in.Attempts)
		waitOutbox(t, b.db, id, "DEAD")
		closeBus(t, b.bus)
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	})

	t.Run("NoRetriesGoesDeadAfterOneFailure", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) { cfg.MaxRetries = -1 })
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			return errors.New("nope")
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Equal(t, "nope", in.LastError)
		closeBus(t, b.bus)
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	})

	t.Run("RetryAfterSchedulesTheNextRun", func(t *testing.T) {
		t.Parallel()
		clock := newTestClock()
		b := setup(t, withClock(clock))
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			if env.Attempt == 1 {
				return durabus.RetryAfter(errors.New("rate limited"), 90*time.Second)
			}
			return nil
		}))

		failedAt := clock.MS()
		id := publish(t, b.bus, userCreated{ID: "u1"})

		var in inboxRow
		eventually(t, func() error {
			var err error
			if in, err = inboxByID(b.db, id, "user.created"); err != nil {
				return err
			}
			if in.LastError == "" {
				return fmt.Errorf("first run not recorded yet: %+v", in)
			}
			return nil
		})
		require.Equal(t, "PROCESSING", in.State)
		require.Equal(t, "rate limited", in.LastError)
		require.Equal(t, failedAt+(90*time.Second).Milliseconds(), in.DueAt, "due at now + the RetryAfter delay, not the policy's 1 ms")
		require.Equal(t, 1, handled.count(string(id)), "not due before the clock moves")

		clock.Advance(90 * time.Second)
		in = waitInbox(t, b.db, id, "user.created", "COMPLETED")
		require.Equal(t, 2, in.Attempts)
		require.Equal(t, []int{1, 2}, handled.attemptsOf(string(id)))
	})

	t.Run("HandlerTimeoutCancelsTheRun", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(cfg *durabus.Config) {
			cfg.MaxRetries = -1
			cfg.HandlerTimeout = 20 * time.Millisecond
		})
		require.NoError(t, durabus.Handle(b.bus, func(ctx context.Context, _ durabus.Envelope[userCreated]) error {
			<-ctx.Done() // a stuck call that honours its context
			return ctx.Err()
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Contains(t, in.LastError, context.DeadlineExceeded.Error())
	})

	t.Run("PanicIsAnErrorWithStack", func(t *testing.T) {
		t.Parallel()
		dead := make(chan durabus.DeadLetter, 10)
		b := setup(t, func(cfg *durabus.Config) {
			cfg.MaxRetries = 1
			cfg.OnDead = func(_ context.Context, d durabus.DeadLetter) { dead <- d }
		})
		handled := newCalls()
		require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
			handled.add(string(env.EventID), env.Attempt)
			panic("kaboom")
		}))

		id := publish(t, b.bus, userCreated{ID: "u1"})

		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Contains(t, in.LastError, "panic: kaboom")
		require.Contains(t, in.LastError, "goroutine", "the stack is kept")
		require.Contains(t, in.LastError, "handler_test.go", "the stack names the panicking file")
		d := receive(t, dead)
		var pe *durabus.PanicError
		require.ErrorAs(t, d.Err, &pe)
		require.Equal(t, "kaboom", pe.Value)
		closeBus(t, b.bus)
		require.Equal(t, []int{1, 2}, handled.attemptsOf(string(id)), "a panic is retried like an error")
	})
}

func TestHandle_TwoHandlersOfOneEvent(t *testing.T) {
	t.Parallel()
	b := setup(t, func(cfg *durabus.Config) {
		cfg.MaxRetries = 2
		cfg.PendingDelay = 10 * time.Millisecond // re-sends must not re-run the handler that completed
	})
	okCalls, failCalls := newCalls(), newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(okCalls)))

	err := durabus.Handle(b.bus, func(context.Context, durabus.Envelope[userCreated]) error { return nil })
	require.Error(t, err, "a second handler of one event needs its own name")

	require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
		failCalls.add(string(env.EventID), env.Attempt)
		return errors.New("smtp down")
	}, durabus.WithHandlerName("welcome-mail")))

	id := publish(t, b.bus, userCreated{ID: "u1"})

	// DEAD only once no handler is still working on it.
	out := waitOutbox(t, b.db, id, "DEAD")
	require.Equal(t, "svc", out.DeadBy)
	require.Equal(t, "smtp down", out.LastError)
	waitInbox(t, b.db, id, "user.created", "COMPLETED")
	waitInbox(t, b.db, id, "welcome-mail", "DEAD")

	closeBus(t, b.bus)
	require.Equal(t, []int{1}, okCalls.attemptsOf(string(id)), "one handler's failure never re-runs another")
	require.Equal(t, []int{1, 2, 3}, failCalls.attemptsOf(string(id)))
}

func TestHandle_DuplicateDeliveryIsAbsorbed(t *testing.T) {
	t.Parallel()
	// One message at a time, so the duplicate is stored before the marker.
	ps := mempubsub.New(mempubsub.WithMaxInFlight(1))
	t.Cleanup(func() { require.NoError(t, ps.Close()) })
	b := setup(t, func(cfg *durabus.Config) { cfg.PubSub = ps })
	handled := newCalls()
	require.NoError(t, durabus.Handle(b.bus, recordUsers(handled)))

	id := publish(t, b.bus, userCreated{ID: "u1"})
	out := waitOutbox(t, b.db, id, "COMPLETED")

	require.NoError(t, ps.Publish(t.Context(), "user.created", out.Message)) // a re-sent copy
	marker := publish(t, b.bus, userCreated{ID: "marker"})
	waitOutbox(t, b.db, marker, "COMPLETED")

	closeBus(t, b.bus)
	require.Equal(t, []int{1}, handled.attemptsOf(string(id)), "the copy is absorbed by the inbox")
	rows, err := inboxRows(b.db, "event_id = ?", string(id))
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, "COMPLETED", rows[0].State)
}

func TestHandle_EventTypeCheck(t *testing.T) {
	t.Parallel()

	t.Run("ConcreteS", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		bus := openBus[durabus.Event, userCreated](t, newConfig(t, ps, "svc"))

		err := durabus.Handle(bus, func(context.Context, durabus.Envelope[orderPlaced]) error { return nil })
		require.ErrorIs(t, err, durabus.ErrEventType)
		require.NoError(t, durabus.Handle(bus, func(context.Context, durabus.Envelope[userCreated]) error { return nil }))
	})

	t.Run("InterfaceS", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		bus := openBus[durabus.Event, userEvent](t, newConfig(t, ps, "svc"))

		require.NoError(t, durabus.Handle(bus, func(context.Context, durabus.Envelope[userCreated]) error { return nil }),
			"userCreated implements userEvent")
		err := durabus.Handle(bus, func(context.Context, durabus.Envelope[orderPlaced]) error { return nil })
		require.ErrorIs(t, err, durabus.ErrEventType, "orderPlaced does not implement userEvent")
	})
}

func TestHandle_BadInputBecomesDeadRow(t *testing.T) {
	t.Parallel()
	const maxBytes = 2048
	good := envelope("user.created", uuid.NewString(), "mallory", `{"id":"x","email":"x@example.com"}`)
	tooLarge := envelope("user.created", uuid.NewString(), "mallory",
		`{"id":"bad-large","email":"`+strings.Repeat("a", 100<<10)+`@example.com"}`)

	tests := []struct {
		name string
		msg  []byte
		// handler is the handler of the DEAD row: empty for a message that
		// is not an envelope of the channel's event.
		handler string
		reason  string
	}{
		{"Garbage", []byte("\xff\x00 definitely not JSON"), "", "malformed envelope"},
		{"TruncatedJSON", good[:len(good)/2], "", "malformed envelope"},
		{"PayloadOfWrongShape", envelope("user.created", uuid.NewString(), "mallory", `{"id":123}`), "user.created", "decode payload"},
		{"PayloadFailsValidate", envelope("user.created", uuid.NewString(), "mallory", `{"id":"bad-1","email":"no-at-sign"}`), "user.created", "invalid payload"},
		{"OtherEventOnTheChannel", envelope("order.placed", uuid.NewString(), "mallory", `{"orderId":"o1"}`), "", `"order.placed"`},
		{"LargerThanMaxMessageBytes", tooLarge, "", "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(cfg *durabus.Config) { cfg.MaxMessageBytes = maxBytes })
			handled := newCalls()
			require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
				handled.add(env.Payload.ID, env.Attempt)
				return nil
			}))

			before := publish(t, b.bus, userCreated{ID: "before"})
			require.NoError(t, b.ps.Publish(t.Context(), "user.created", tt.msg))
			after := publish(t, b.bus, userCreated{ID: "after"})

			var bad inboxRow
			eventually(t, func() error {
				rows, err := inboxRows(b.db, "state = 'DEAD'")
				if err != nil {
					return err
				}
				if len(rows) != 1 {
					return fmt.Errorf("%d DEAD rows, want 1", len(rows))
				}
				bad = rows[0]
				return nil
			})
			require.Equal(t, tt.handler, bad.Handler)
			require.Equal(t, "user.created", bad.EventName, "the row is filed under the channel's event")
			require.Contains(t, bad.LastError, tt.reason)
			if len(tt.msg) > maxBytes {
				require.Len(t, bad.Message, 64<<10, "the row keeps the first 64 KiB")
				require.True(t, bytes.HasPrefix(tt.msg, bad.Message), "the row keeps the start of the message")
			} else {
				require.Equal(t, tt.msg, bad.Message, "the row keeps the raw bytes")
			}

			waitOutbox(t, b.db, before, "COMPLETED")
			waitOutbox(t, b.db, after, "COMPLETED")
			closeBus(t, b.bus)
			require.Equal(t, []string{"after", "before"}, handled.keys(), "the handler never sees the bad message")
		})
	}
}

func TestHandle_OnDeadForMalformedMessage(t *testing.T) {
	t.Parallel()
	// Config.OnDead: "called after an inbox entry became DEAD". A message
	// that is not a valid event becomes a DEAD entry too, and an operator
	// alerting on OnDead must hear about it.
	dead := make(chan durabus.DeadLetter, 10)
	b := setup(t, func(cfg *durabus.Config) {
		cfg.OnDead = func(_ context.Context, d durabus.DeadLetter) { dead <- d }
	})
	require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
	garbage := []byte("not an envelope")
	require.NoError(t, b.ps.Publish(t.Context(), "user.created", garbage))

	eventually(t, func() error {
		rows, err := inboxRows(b.db, "state = 'DEAD'")
		if err != nil {
			return err
		}
		if len(rows) != 1 {
			return fmt.Errorf("%d DEAD rows, want 1", len(rows))
		}
		return nil
	})
	closeBus(t, b.bus) // every OnDead call has returned
	require.Len(t, dead, 1, "OnDead must be called for the DEAD entry")
	d := <-dead
	require.Equal(t, "user.created", d.EventName)
	require.Empty(t, d.Handler)
	require.Equal(t, garbage, d.Message)
	require.Error(t, d.Err)
}

func TestInbox_CrashRecovery(t *testing.T) {
	t.Parallel()

	t.Run("ExpiredLeaseRunsAgain", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		first, err := durabus.Open[durabus.Event, durabus.Event](t.Context(), cfg) // creates the schema
		require.NoError(t, err)
		require.NoError(t, first.Close(t.Context()))

		// What a consumer killed inside the handler leaves behind: a
		// PROCESSING row, one attempt spent, its lease expired.
		db := inspect(t, cfg.Path)
		id := durabus.EventID(uuid.Must(uuid.NewV7()).String())
		now := time.Now().UnixMilli()
		_, err = db.Exec(`INSERT INTO durabus_inbox (consumer, event_id, handler, event_name, publisher, state, message,
			attempts, due_at, created_at, updated_at) VALUES ('svc', ?, 'user.created', 'user.created', 'orders', 'PROCESSING', ?, 1, ?, ?, ?)`,
			string(id), envelope("user.created", string(id), "orders", `{"id":"u1"}`), now-time.Minute.Milliseconds(), now-2*time.Minute.Milliseconds(), now-2*time.Minute.Milliseconds())
		require.NoError(t, err)

		bus := openBus[durabus.Event, durabus.Event](t, cfg)
		handled := newCalls()
		require.NoError(t, durabus.Handle(bus, recordUsers(handled)))

		in := waitInbox(t, db, id, "user.created", "COMPLETED")
		require.Equal(t, 2, in.Attempts, "the crashed run counts as an attempt")
		closeBus(t, bus)
		require.Equal(t, []int{2}, handled.attemptsOf(string(id)))
	})

	t.Run("RunAbandonedAtCloseRunsAfterRestart", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		gated := newGatedPubSub(t, ps) // holds Close's shutdown until the test looked
		cfg := newConfig(t, gated, "svc")
		db := inspect(t, cfg.Path)

		first := openBus[durabus.Event, durabus.Event](t, cfg)
		var firstRuns atomic.Int32
		started := make(chan struct{})
		require.NoError(t, durabus.Handle(first, func(ctx context.Context, _ durabus.Envelope[userCreated]) error {
			if firstRuns.Add(1) == 1 {
				close(started)
			}
			<-ctx.Done() // stuck until Close gives up on it
			return ctx.Err()
		}))
		id := publish(t, first, userCreated{ID: "u1"})
		receive(t, started)
		// A run that outlives a short budget is stored as a leased entry.
		lease := waitInbox(t, db, id, "user.created", "PROCESSING")

		expired, cancel := context.WithCancel(t.Context())
		cancel()
		require.ErrorIs(t, first.Close(expired), context.Canceled)
		// Close gave up: the handler's context is cancelled and its lease
		// released, while the rest of the shutdown is still held.
		eventually(t, func() error {
			in, err := inboxByID(db, id, "user.created")
			if err != nil {
				return err
			}
			if firstRuns.Load() == 1 && in.DueAt >= lease.DueAt {
				return fmt.Errorf("lease not released yet: due_at %d", in.DueAt)
			}
			return nil
		})
		gated.Open()
		require.NoError(t, first.Close(t.Context()), "a second Close waits for the rest of the shutdown")
		require.Equal(t, int32(1), firstRuns.Load(), "a closing bus must not start the run it gave up on again")
		in, err := inboxByID(db, id, "user.created")
		require.NoError(t, err)
		require.Equal(t, "PROCESSING", in.State, "an abandoned run is neither a success nor a failure")
		require.Equal(t, 1, in.Attempts)

		cfg.PubSub = ps
		second := openBus[durabus.Event, durabus.Event](t, cfg)
		handled := newCalls()
		require.NoError(t, durabus.Handle(second, recordUsers(handled)))

		in = waitInbox(t, db, id, "user.created", "COMPLETED")
		require.Equal(t, 2, in.Attempts, "the abandoned run counts as an attempt")
		waitOutbox(t, db, id, "COMPLETED")
		closeBus(t, second)
		require.Equal(t, []int{2}, handled.attemptsOf(string(id)))
	})

	t.Run("HandlerAddedAfterAnotherRecoversPromptly", func(t *testing.T) {
		t.Parallel()
		// A restarted service registers its handlers one after the other.
		// The rows of the second one must not wait behind the first
		// registration: a minute is too long for a poll interval of 10 ms.
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		first, err := durabus.Open[durabus.Event, durabus.Event](t.Context(), cfg)
		require.NoError(t, err)
		require.NoError(t, first.Close(t.Context()))

		db := inspect(t, cfg.Path)
		id := durabus.EventID(uuid.Must(uuid.NewV7()).String())
		now := time.Now().UnixMilli()
		for _, handler := range []string{"user.created", "welcome-mail"} {
			_, err = db.Exec(`INSERT INTO durabus_inbox (consumer, event_id, handler, event_name, publisher, state, message,
				attempts, due_at, created_at, updated_at) VALUES ('svc', ?, ?, 'user.created', 'orders', 'PROCESSING', ?, 1, ?, ?, ?)`,
				string(id), handler, envelope("user.created", string(id), "orders", `{"id":"u1"}`), now-1000, now-2000, now-2000)
			require.NoError(t, err)
		}

		bus := openBus[durabus.Event, durabus.Event](t, cfg)
		first1, second1 := newCalls(), newCalls()
		require.NoError(t, durabus.Handle(bus, recordUsers(first1)))
		waitInbox(t, db, id, "user.created", "COMPLETED")
		require.NoError(t, durabus.Handle(bus, recordUsers(second1), durabus.WithHandlerName("welcome-mail")))

		eventuallyWithin(t, 5*time.Second, func() error {
			in, err := inboxByID(db, id, "welcome-mail")
			if err != nil {
				return err
			}
			if in.State != "COMPLETED" {
				return fmt.Errorf("welcome-mail row is %s, due in %v, last_error %q", in.State,
					time.Duration(in.DueAt-time.Now().UnixMilli())*time.Millisecond, in.LastError)
			}
			return nil
		})
		require.Equal(t, 1, second1.total())
	})
}

// gatedPubSub holds every unsubscribe until Open is called, which stretches
// a bus's shutdown so that a test can look at it half-way.
type gatedPubSub struct {
	*mempubsub.PubSub
	gate chan struct{}
	once sync.Once
}

func newGatedPubSub(t *testing.T, ps *mempubsub.PubSub) *gatedPubSub {
	g := &gatedPubSub{PubSub: ps, gate: make(chan struct{})}
	t.Cleanup(g.Open) // runs before the bus's Close, registered later
	return g
}

func (g *gatedPubSub) Open() { g.once.Do(func() { close(g.gate) }) }

func (g *gatedPubSub) Subscribe(ctx context.Context, channel string, fn func(context.Context, []byte) error) (func() error, error) {
	unsubscribe, err := g.PubSub.Subscribe(ctx, channel, fn)
	if err != nil {
		return nil, err
	}
	return func() error {
		<-g.gate
		return unsubscribe()
	}, nil
}
