package durabus

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/durabus/durabus/internal/engine"
	"github.com/durabus/durabus/internal/store"
)

// Bus publishes events of type P through a SQLite outbox and consumes events
// of type S into a SQLite inbox. Both are usually interfaces: Event itself,
// or one of your own that your event types implement. A Bus is safe for
// concurrent use.
type Bus[P, S Event] struct {
	cfg Config
	eng *engine.Engine
}

// Open opens (creating or migrating) the bus's tables and starts its relay.
// Add handlers with Handle, and Close the bus when the service stops.
func Open[P, S Event](ctx context.Context, cfg Config) (*Bus[P, S], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	db, own := cfg.DB, false
	if db == nil {
		db, err = sql.Open("sqlite", store.DSN(cfg.Path, cfg.BusyTimeout, cfg.Synchronous.String()))
		if err != nil {
			return nil, fmt.Errorf("durabus: open %s: %w", cfg.Path, err)
		}
		own = true
	}
	canPublish, canSubscribe := halves(cfg.PubSub)
	eng, err := engine.Open(ctx, engine.Config{
		Name:            cfg.Name,
		DB:              db,
		OwnDB:           own,
		Store:           store.New(cfg.TablePrefix),
		PubSub:          cfg.PubSub,
		CanPublish:      canPublish,
		CanSubscribe:    canSubscribe,
		MaxRetries:      cfg.MaxRetries,
		PendingDelay:    cfg.PendingDelay,
		Backoff:         cfg.RetryPolicy.NextRetry,
		Concurrency:     cfg.Concurrency,
		Retention:       cfg.Retention,
		Logger:          cfg.Logger,
		MaxMessageBytes: cfg.MaxMessageBytes,
		ChannelPrefix:   cfg.ChannelPrefix,
		PollInterval:    cfg.PollInterval,
		HandlerTimeout:  cfg.HandlerTimeout,
		BusyTimeout:     cfg.BusyTimeout,
		Synchronous:     cfg.Synchronous.String(),
		Classify:        classify,
		OnDead:          onDead(cfg.OnDead),
		Now:             cfg.now,
		HelloInterval:   cfg.HelloInterval,
		GroupTTL:        cfg.GroupTTL,
		ClaimTTL:        cfg.ClaimTTL,
		CatchUpRate:     cfg.CatchUpRate,
	})
	if err != nil {
		if own {
			_ = db.Close()
		}
		where := cfg.Path
		if where == "" {
			where = "the given DB"
		}
		return nil, fmt.Errorf("durabus: open %s: %w", where, err)
	}
	return &Bus[P, S]{cfg: cfg, eng: eng}, nil
}

func onDead(f func(context.Context, DeadLetter)) func(context.Context, engine.Dead) {
	if f == nil {
		return nil
	}
	return func(ctx context.Context, d engine.Dead) {
		f(ctx, DeadLetter{EventID: EventID(d.EventID), EventName: d.EventName, Handler: d.Handler, Attempts: d.Attempts, Err: d.Err, Message: d.Message})
	}
}

// Name is the bus's publisher name and consumer group.
func (b *Bus[P, S]) Name() string { return b.cfg.Name }

// Publish stores e in the outbox and returns its ID once the row is
// committed; the relay then sends it. A nil error means the event survives
// a crash (with SyncFull, a power loss too).
func (b *Bus[P, S]) Publish(ctx context.Context, e P, opts ...PublishOption) (EventID, error) {
	row, id, err := b.outboxRow(e, opts)
	if err != nil {
		return "", err
	}
	if err := b.eng.Publish(ctx, row); err != nil {
		return "", b.publishError(row.EventName, err)
	}
	return id, nil
}

// PublishBatch stores events in the outbox in one transaction and returns
// their IDs, in order, once it is committed: all of them, or with an error
// none. One commit (one fsync) serves the whole batch, so a producer with
// many events at hand pays for one instead of one per event. opts apply to
// every event. An event that fails validation or encoding fails the batch,
// with an error that names its index and wraps the same typed error
// Publish returns.
func (b *Bus[P, S]) PublishBatch(ctx context.Context, events []P, opts ...PublishOption) ([]EventID, error) {
	if len(events) == 0 {
		return nil, nil
	}
	rows := make([]store.OutboxRow, len(events))
	ids := make([]EventID, len(events))
	for i, e := range events {
		var err error
		if rows[i], ids[i], err = b.outboxRow(e, opts); err != nil {
			return nil, fmt.Errorf("%w (event %d of the batch)", err, i)
		}
	}
	if err := b.eng.Publish(ctx, rows...); err != nil {
		return nil, b.publishError(rows[0].EventName, err)
	}
	return ids, nil
}

// PublishTx stores e in the outbox inside tx, a transaction on the bus's
// database: the event exists if and only if tx commits. The relay sends it
// after the commit, within the poll interval.
func (b *Bus[P, S]) PublishTx(ctx context.Context, tx *sql.Tx, e P, opts ...PublishOption) (EventID, error) {
	if tx == nil {
		return "", errors.New("durabus: PublishTx: tx is nil")
	}
	row, id, err := b.outboxRow(e, opts)
	if err != nil {
		return "", err
	}
	if err := b.eng.PublishTx(ctx, tx, row); err != nil {
		return "", b.publishError(row.EventName, err)
	}
	return id, nil
}

func (b *Bus[P, S]) publishError(name string, err error) error {
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	if !b.canPublish() {
		return fmt.Errorf("durabus: publish %q: %w", name, ErrNotSupported)
	}
	return fmt.Errorf("durabus: publish %q: %w", name, err)
}

func (b *Bus[P, S]) canPublish() bool { p, _ := halves(b.cfg.PubSub); return p }

func (b *Bus[P, S]) outboxRow(e P, opts []PublishOption) (store.OutboxRow, EventID, error) {
	if !b.canPublish() {
		return store.OutboxRow{}, "", fmt.Errorf("durabus: publish: %w (the bus's PubSub is subscribe-only)", ErrNotSupported)
	}
	now := b.cfg.now()
	name, id, msg, err := encodeEvent(e, b.cfg.Name, now, opts)
	if err != nil {
		return store.OutboxRow{}, "", err
	}
	if len(msg) > b.cfg.MaxMessageBytes {
		return store.OutboxRow{}, "", fmt.Errorf("%w: %q encodes to %d bytes, MaxMessageBytes is %d", ErrMessageTooLarge, name, len(msg), b.cfg.MaxMessageBytes)
	}
	ms := now.UnixMilli()
	return store.OutboxRow{EventID: string(id), EventName: name, Publisher: b.cfg.Name, Message: msg, DueAt: ms, Now: ms}, id, nil
}

// Close stops intake, waits for running handlers until ctx ends, then
// cancels their contexts, writes what is pending and closes what the bus
// opened (never Config.DB nor the PubSub). It returns ctx.Err() if ctx
// ended first; the bus then finishes closing in the background, and Close
// may be called again to wait for it. Close is idempotent and safe to call
// from any goroutine.
func (b *Bus[P, S]) Close(ctx context.Context) error {
	return b.eng.Close(ctx)
}
