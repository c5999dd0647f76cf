package durabus

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// Defaults for the zero values of Config.
const (
	DefaultMaxRetries      = 10
	DefaultPendingDelay    = 10 * time.Second
	DefaultConcurrency     = 16
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultMaxMessageBytes = 1 << 20
	DefaultTablePrefix     = "durabus_"
	DefaultPollInterval    = time.Second
	DefaultHandlerTimeout  = time.Minute
	DefaultBusyTimeout     = 5 * time.Second
	DefaultHelloInterval   = 5 * time.Second
	DefaultGroupTTL        = 7 * 24 * time.Hour
	DefaultCatchUpRate     = 2000
)

// Synchronous is SQLite's synchronous setting for the bus's connections.
type Synchronous int

const (
	// SyncFull makes every commit durable across power loss (the default).
	SyncFull Synchronous = iota
	// SyncNormal survives a crash of the process but may lose the last
	// commits on power loss or an operating-system crash. It is faster.
	SyncNormal
)

func (s Synchronous) String() string {
	switch s {
	case SyncFull:
		return "FULL"
	case SyncNormal:
		return "NORMAL"
	}
	return fmt.Sprintf("Synchronous(%d)", int(s))
}

// Config configures a bus. The zero value of every field but Name, one of
// Path or DB, and PubSub means its default.
type Config struct {
	// Name is the bus's publisher name and consumer group. Recall and perish
	// touch only this name's rows. Required.
	Name string

	// Path is the SQLite file the bus opens (and closes). Set Path or DB.
	Path string
	// DB is the caller's SQLite database (modernc.org/sqlite), needed by
	// PublishTx. The bus never closes it. Set Path or DB.
	DB *sql.DB

	// PubSub carries events and acks. Required; see PublishOnly and
	// SubscribeOnly for one-way buses.
	PubSub PubSub

	// MaxRetries is how many times a failed handler is retried, and how many
	// times an unacknowledged event is re-sent, before it is DEAD.
	// Defaults to 10; -1 means no retries.
	MaxRetries int
	// PendingDelay is how long the relay waits for a receipt before it
	// re-sends an event. Defaults to 10 s.
	PendingDelay time.Duration
	// RetryPolicy spaces retries. Defaults to ExponentialBackoff{} (1 s
	// doubling to 60 s, ±20% jitter).
	RetryPolicy RetryPolicy
	// Concurrency is how many handlers run at once. Defaults to 16.
	Concurrency int
	// HandlerTimeout bounds one handler run; its context is cancelled then.
	// Defaults to 1 min.
	HandlerTimeout time.Duration
	// Retention is how long COMPLETED rows are kept. Defaults to 7 days; a
	// negative value keeps them forever.
	Retention time.Duration
	// MaxMessageBytes bounds an encoded event, on publish and on receipt.
	// Defaults to 1 MiB.
	MaxMessageBytes int
	// Synchronous is SQLite's durability setting. Defaults to SyncFull.
	// With DB, it applies to the bus's connection only.
	Synchronous Synchronous
	// BusyTimeout is how long a statement waits for a lock held by another
	// connection. Defaults to 5 s.
	BusyTimeout time.Duration
	// TablePrefix prefixes the bus's table names. Defaults to "durabus_".
	TablePrefix string
	// ChannelPrefix prefixes every channel name. Defaults to none, so that
	// an event's channel is its name, as in persistent-bus.
	ChannelPrefix string
	// PollInterval is how often the relay and the workers look for due rows
	// when nothing woke them. Defaults to 1 s.
	PollInterval time.Duration
	// Logger receives the bus's logs. Defaults to discarding them.
	Logger *slog.Logger
	// OnDead is called after an inbox entry became DEAD. Optional.
	OnDead func(ctx context.Context, d DeadLetter)

	// HelloInterval is how often a consumer announces its group and events.
	// A group silent for three intervals is offline: its re-sends wait
	// until it is back. Defaults to 5 s.
	HelloInterval time.Duration
	// GroupTTL is how long a silent group is remembered. Then it is
	// forgotten and its unfinished deliveries are dropped (counted in Stats).
	// Defaults to 7 days.
	GroupTTL time.Duration
	// ClaimTTL is how long a replica's claim on an event holds, when the
	// PubSub is a Claimer. A re-send that arrives later may be handled by
	// another replica too; a longer TTL costs Redis memory (one key per
	// event). Defaults to 3 × PendingDelay, at least 1 min.
	ClaimTTL time.Duration
	// CatchUpRate bounds re-sends to one group, per second, so that a group
	// coming back online catches up without starving new events.
	// Defaults to 2000.
	CatchUpRate int

	now func() time.Time // for tests
}

// DeadLetter describes an inbox entry that became DEAD.
type DeadLetter struct {
	EventID   EventID
	EventName string
	Handler   string
	Attempts  int
	Err       error
	// Message is the raw envelope.
	Message []byte
}

// withDefaults returns cfg with defaults filled in, or every problem found.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := wire.CheckName("Name", cfg.Name); err != nil {
		bad("%v: set Config.Name to the service's name", err)
	}
	switch {
	case cfg.Path == "" && cfg.DB == nil:
		bad("neither Path nor DB is set: give the SQLite file's path or an open *sql.DB")
	case cfg.Path != "" && cfg.DB != nil:
		bad("both Path and DB are set: give one")
	}
	if cfg.PubSub == nil {
		bad("PubSub is nil: pass a PubSub such as redispubsub.New(client)")
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = DefaultMaxRetries
	case cfg.MaxRetries == -1:
		cfg.MaxRetries = 0
	case cfg.MaxRetries < -1:
		bad("MaxRetries is %d: use -1 for no retries or a positive count", cfg.MaxRetries)
	}
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"PendingDelay", &cfg.PendingDelay, DefaultPendingDelay},
		{"HandlerTimeout", &cfg.HandlerTimeout, DefaultHandlerTimeout},
		{"BusyTimeout", &cfg.BusyTimeout, DefaultBusyTimeout},
		{"PollInterval", &cfg.PollInterval, DefaultPollInterval},
		{"HelloInterval", &cfg.HelloInterval, DefaultHelloInterval},
		{"GroupTTL", &cfg.GroupTTL, DefaultGroupTTL},
	}
	for _, f := range durations {
		switch {
		case *f.d == 0:
			*f.d = f.def
		case *f.d < 0:
			bad("%s is negative (%v)", f.name, *f.d)
		}
	}
	switch {
	case cfg.ClaimTTL == 0:
		cfg.ClaimTTL = max(3*cfg.PendingDelay, time.Minute)
	case cfg.ClaimTTL < 0:
		bad("ClaimTTL is negative (%v)", cfg.ClaimTTL)
	}
	switch {
	case cfg.CatchUpRate == 0:
		cfg.CatchUpRate = DefaultCatchUpRate
	case cfg.CatchUpRate < 0:
		bad("CatchUpRate is negative (%d)", cfg.CatchUpRate)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.RetryPolicy == nil {
		cfg.RetryPolicy = ExponentialBackoff{}
	}
	switch {
	case cfg.Concurrency == 0:
		cfg.Concurrency = DefaultConcurrency
	case cfg.Concurrency < 0:
		bad("Concurrency is negative (%d)", cfg.Concurrency)
	}
	switch {
	case cfg.MaxMessageBytes == 0:
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	case cfg.MaxMessageBytes < 0:
		bad("MaxMessageBytes is negative (%d)", cfg.MaxMessageBytes)
	}
	if cfg.Synchronous != SyncFull && cfg.Synchronous != SyncNormal {
		bad("Synchronous is %v: use SyncFull or SyncNormal", cfg.Synchronous)
	}
	if cfg.TablePrefix == "" {
		cfg.TablePrefix = DefaultTablePrefix
	}
	if !store.ValidPrefix(cfg.TablePrefix) {
		bad("TablePrefix %q is not a valid SQL identifier prefix (letters, digits, underscores)", cfg.TablePrefix)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if len(errs) > 0 {
		return cfg, fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return cfg, nil
}

// PublishOption sets optional envelope fields of one event.
type PublishOption func(*publishOptions)

type publishOptions struct {
	correlationID string
	key           string
	headers       map[string]string
}

// WithCorrelationID sets the envelope's correlationId.
func WithCorrelationID(id string) PublishOption {
	return func(o *publishOptions) { o.correlationID = id }
}

// WithKey sets the envelope's key, for consumers that group by it.
func WithKey(key string) PublishOption { return func(o *publishOptions) { o.key = key } }

// WithHeaders sets envelope headers, such as trace context. The map is copied.
func WithHeaders(h map[string]string) PublishOption {
	return func(o *publishOptions) {
		o.headers = make(map[string]string, len(h))
		for k, v := range h {
			o.headers[k] = v
		}
	}
}

// HandlerOption configures a handler added with Handle.
type HandlerOption func(*handlerOptions)

type handlerOptions struct{ name string }

// WithHandlerName names a handler. Its inbox rows are keyed by it, so keep
// it stable across releases. Defaults to the event name; a second handler
// of the same event needs a name of its own.
func WithHandlerName(name string) HandlerOption { return func(o *handlerOptions) { o.name = name } }
