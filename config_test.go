package durabus_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
)

func open(ctx context.Context, cfg durabus.Config) (*durabus.Bus[durabus.Event, durabus.Event], error) {
	return durabus.Open[durabus.Event, durabus.Event](ctx, cfg)
}

func TestOpen_InvalidConfig(t *testing.T) {
	t.Parallel()

	t.Run("EmptyConfigListsEveryProblem", func(t *testing.T) {
		t.Parallel()
		bus, err := open(t.Context(), durabus.Config{})
		require.Nil(t, bus)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		for _, field := range []string{"Name", "Path", "DB", "PubSub"} {
			require.Contains(t, err.Error(), field)
		}
	})

	t.Run("NegativeValuesAreListed", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		cfg.MaxRetries = -2
		cfg.PendingDelay = -time.Second
		cfg.HandlerTimeout = -time.Second
		cfg.BusyTimeout = -time.Second
		cfg.PollInterval = -time.Second
		cfg.Concurrency = -1
		cfg.MaxMessageBytes = -1

		bus, err := open(t.Context(), cfg)
		require.Nil(t, bus)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		for _, field := range []string{"MaxRetries", "PendingDelay", "HandlerTimeout", "BusyTimeout", "PollInterval", "Concurrency", "MaxMessageBytes"} {
			require.Contains(t, err.Error(), field)
		}
		require.NoFileExists(t, cfg.Path, "an invalid config creates nothing")
	})

	t.Run("BothPathAndDB", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "other.db"))
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, db.Close()) })
		cfg.DB = db

		_, err = open(t.Context(), cfg)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		require.Contains(t, err.Error(), "Path")
		require.Contains(t, err.Error(), "DB")
	})

	t.Run("BadTablePrefix", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		cfg.TablePrefix = "bus; DROP TABLE users; --"

		_, err := open(t.Context(), cfg)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		require.Contains(t, err.Error(), "TablePrefix")
	})

	t.Run("UnknownSynchronous", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		cfg.Synchronous = durabus.Synchronous(7)

		_, err := open(t.Context(), cfg)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		require.Contains(t, err.Error(), "Synchronous")
	})

	t.Run("NameWithControlCharacter", func(t *testing.T) {
		t.Parallel()
		ps := newPubSub(t)
		cfg := newConfig(t, ps, "svc")
		cfg.Name = "svc\x00"

		_, err := open(t.Context(), cfg)
		require.ErrorIs(t, err, durabus.ErrInvalidConfig)
		require.Contains(t, err.Error(), "Name")
	})
}

func TestOpen_NotADatabase(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	cfg := newConfig(t, ps, "svc")
	junk := make([]byte, 8192)
	_, _ = rand.Read(junk)
	require.NoError(t, os.WriteFile(cfg.Path, junk, 0o600))

	bus, err := open(t.Context(), cfg)
	require.Nil(t, bus)
	require.ErrorIs(t, err, durabus.ErrCorruptDatabase)
}

func TestOpen_LockedDatabase(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	cfg := newConfig(t, ps, "svc")
	cfg.BusyTimeout = 50 * time.Millisecond

	// Another process holds the write lock on the file.
	db, err := sql.Open("sqlite", "file:"+cfg.Path+"?_pragma=journal_mode(WAL)")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	conn, err := db.Conn(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	_, err = conn.ExecContext(t.Context(), "BEGIN IMMEDIATE")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = conn.ExecContext(context.Background(), "ROLLBACK") })

	bus, err := open(t.Context(), cfg)
	require.Nil(t, bus)
	require.ErrorIs(t, err, durabus.ErrDatabaseLocked)
}

func TestOpen_ReopenKeepsRows(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	cfg := newConfig(t, ps, "svc")
	cfg.PendingDelay = 20 * time.Millisecond
	db := inspect(t, cfg.Path)

	first := openBus[durabus.Event, durabus.Event](t, cfg)
	ids := []durabus.EventID{ // nobody listens yet
		publish(t, first, userCreated{ID: "u1"}),
		publish(t, first, userCreated{ID: "u2"}),
	}
	require.NoError(t, first.Close(t.Context()))

	second := openBus[durabus.Event, durabus.Event](t, cfg)
	s, err := second.Stats(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, s.Outbox.Unfinished(), "the rows survived the restart")

	require.Equal(t, []int{1, 2, 3, 4, 5}, schemaVersions(t, db), "each migration applied once")
	checkStateConstraints(t, db)

	// The relay carries on where the first bus stopped.
	handled := newCalls()
	require.NoError(t, durabus.Handle(second, recordUsers(handled)))
	for _, id := range ids {
		waitOutbox(t, db, id, "COMPLETED")
	}
	closeBus(t, second)
	for _, id := range ids {
		require.Equal(t, []int{1}, handled.attemptsOf(string(id)))
	}
}

func TestOpen_TablePrefix(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	cfg := newConfig(t, ps, "svc")
	cfg.TablePrefix = "myapp_bus_"
	bus := openBus[durabus.Event, durabus.Event](t, cfg)
	db := inspect(t, cfg.Path)
	require.NoError(t, durabus.Handle(bus, recordUsers(newCalls())))

	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	require.NoError(t, err)
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		tables = append(tables, name)
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	require.Equal(t, []string{"myapp_bus_counters", "myapp_bus_deliveries", "myapp_bus_groups", "myapp_bus_inbox", "myapp_bus_meta", "myapp_bus_outbox", "myapp_bus_schema"}, tables)

	id := publish(t, bus, userCreated{ID: "u1"})
	eventually(t, func() error {
		var state string
		if err := db.QueryRow(`SELECT state FROM myapp_bus_outbox WHERE event_id = ?`, string(id)).Scan(&state); err != nil {
			return err
		}
		if state != "COMPLETED" {
			return fmt.Errorf("row is %s", state)
		}
		return nil
	})
}

func TestOpen_ChannelPrefix(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	ordersCfg, billingCfg := newConfig(t, ps, "orders"), newConfig(t, ps, "billing")
	ordersCfg.ChannelPrefix, billingCfg.ChannelPrefix = "tenant-a:", "tenant-a:"
	orders := openBus[durabus.Event, durabus.Event](t, ordersCfg)
	billing := openBus[durabus.Event, durabus.Event](t, billingCfg)
	require.NoError(t, durabus.Handle(billing, recordUsers(newCalls())))
	got := make(chan []byte, 10)
	unsubscribe, err := ps.Subscribe(t.Context(), "tenant-a:user.created", func(_ context.Context, msg []byte) error {
		got <- msg
		return nil
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = unsubscribe() })

	id := publish(t, orders, userCreated{ID: "u1"})

	require.Contains(t, string(receive(t, got)), string(id), "the event travels on the prefixed channel")
	waitInbox(t, inspect(t, billingCfg.Path), id, "user.created", "COMPLETED")
	waitOutbox(t, inspect(t, ordersCfg.Path), id, "COMPLETED") // the ack channel is prefixed alike
}

func TestBus_Retention_DeletesOldCompletedRows(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	// The janitor runs every Retention/10, at least every second.
	b := setup(t, withClock(clock), func(cfg *durabus.Config) { cfg.Retention = 5 * time.Second })
	require.NoError(t, durabus.Handle(b.bus, recordUsers(newCalls())))
	require.NoError(t, durabus.Handle(b.bus, func(context.Context, durabus.Envelope[orderPlaced]) error {
		return durabus.Unrecoverable(errors.New("no such order"))
	}))
	completed := publish(t, b.bus, userCreated{ID: "u1"})
	dead := publish(t, b.bus, orderPlaced{OrderID: "o1"})
	waitOutbox(t, b.db, completed, "COMPLETED")
	waitInbox(t, b.db, completed, "user.created", "COMPLETED")
	waitOutbox(t, b.db, dead, "DEAD")

	clock.Advance(10 * time.Second)
	eventually(t, func() error {
		if _, err := outboxByID(b.db, completed); err == nil {
			return errors.New("the COMPLETED outbox row is still there")
		}
		if _, err := inboxByID(b.db, completed, "user.created"); err == nil {
			return errors.New("the COMPLETED inbox entry is still there")
		}
		return nil
	})
	_, err := outboxByID(b.db, dead)
	require.NoError(t, err, "DEAD rows are left to PerishDead")
	_, err = inboxByID(b.db, dead, "order.placed")
	require.NoError(t, err)
}
