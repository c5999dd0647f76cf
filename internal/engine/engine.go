// Package engine is the machinery behind durabus.Bus: the group-commit
// writer, the outbox relay, the inbox and its workers, the ack protocol and
// the janitor. It moves bytes and rows; the root package turns them into
// typed events.
package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// PubSub is the transport, as the root package declares it.
type PubSub interface {
	Publish(ctx context.Context, channel string, msg []byte) error
	Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (func() error, error)
}

// BatchPublisher is the optional pipelined publish of a PubSub.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error
}

// Claimer is the optional PubSub capability replicas of one group use so
// that one of them stores each event.
type Claimer interface {
	Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error)
}

// Handler runs one kind of event. Run decodes msg itself when env, its
// decoded envelope, is nil.
type Handler struct {
	EventName string
	Name      string
	Run       func(ctx context.Context, msg []byte, env *wire.Envelope, attempt int) error
}

// Dead describes an inbox row that just became DEAD.
type Dead struct {
	EventID, EventName, Handler string
	Attempts                    int
	Err                         error
	Message                     []byte
}

// Config is the engine's resolved configuration; the root package fills
// every field.
type Config struct {
	Name            string
	DB              *sql.DB
	OwnDB           bool
	Store           *store.Store
	PubSub          PubSub
	CanPublish      bool
	CanSubscribe    bool
	MaxRetries      int
	PendingDelay    time.Duration
	Backoff         func(attempt int) time.Duration
	Concurrency     int
	Retention       time.Duration // <= 0 keeps COMPLETED rows
	Logger          *slog.Logger
	MaxMessageBytes int
	ChannelPrefix   string
	PollInterval    time.Duration
	HandlerTimeout  time.Duration
	BusyTimeout     time.Duration
	Synchronous     string
	// Classify tells what a handler error asks for: no retry, or a retry
	// after a given delay (0 = the backoff's).
	Classify func(err error) (unrecoverable bool, after time.Duration)
	OnDead   func(ctx context.Context, d Dead)
	Now      func() time.Time
	// Consumer groups.
	HelloInterval time.Duration
	GroupTTL      time.Duration
	ClaimTTL      time.Duration
	CatchUpRate   int // re-sends per second and group
}

// never is the due time of rows the relay no longer re-sends by itself.
const never = store.Never

const (
	relayBatch = 1024
	deadKeep   = 64 << 10 // raw bytes kept for a message that could not be stored as an event
)

// Engine is a running bus.
type Engine struct {
	cfg    Config
	st     *store.Store
	w      *writer
	log    *slog.Logger
	acks   *ackSender
	closed chan struct{} // closed when Close starts: intake stops

	relayWake chan struct{}
	acksUp    chan struct{} // closed once the ack channel is subscribed
	checks    chan *check   // received events to check, see intake.go
	handoff   *handoff
	flow      *flow
	workWake  chan struct{}
	helloWake chan struct{}
	groups    groups
	claimer   Claimer
	instance  string       // this database file's id, under which it claims events
	openedAt  int64        // ms
	consuming sync.Once    // the group's channels and hello loop start with the first handler
	nudgedAt  atomic.Int64 // when PublishTx last asked the relay to look, in ms

	mu       sync.Mutex
	handlers map[string][]Handler // by event name
	unsubs   []func() error

	bg       context.Context // lives until the engine's loops must stop
	stopBG   context.CancelFunc
	bgWG     sync.WaitGroup
	runCtx   context.Context // handler contexts; cancelled when Close gives up
	stopRuns context.CancelFunc
	workers  *workers
	direct   *directRuns
	rd       *prepared // frequent reads, on the pool

	closeOnce sync.Once
	finished  chan struct{}
	closeErr  error
}

// Open prepares the database and starts the relay, the ack listener and the
// janitor. Handlers are added later with AddHandler.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	c, err := cfg.DB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("open write connection: %w", store.Classify(err))
	}
	if _, err := store.Prepare(ctx, c, cfg.Store.Prefix, cfg.BusyTimeout, cfg.Synchronous); err != nil {
		_ = c.Close()
		return nil, err
	}
	e := &Engine{
		cfg:       cfg,
		st:        cfg.Store,
		log:       cfg.Logger,
		closed:    make(chan struct{}),
		relayWake: make(chan struct{}, 1),
		acksUp:    make(chan struct{}),
		checks:    make(chan *check),
		handoff:   newHandoff(),
		flow:      newFlow(cfg.PendingDelay),
		workWake:  make(chan struct{}, 1),
		helloWake: make(chan struct{}, 1),
		handlers:  map[string][]Handler{},
		finished:  make(chan struct{}),
	}
	var walErr error
	e.w, walErr = newWriter(ctx, c, cfg.Synchronous)
	if walErr != nil {
		e.log.Warn("durabus: the write-ahead log cannot be opened for syncing; every commit syncs itself instead (slower, as durable)", "err", walErr)
	}
	if err := e.loadGroups(ctx); err != nil {
		e.w.stop()
		return nil, err
	}
	e.claimer, _ = cfg.PubSub.(Claimer)
	e.openedAt = e.nowMS()
	if err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		var err error
		e.instance, err = e.st.Meta(ctx, q, "instance_id", uuid.NewString())
		return err
	}); err != nil {
		e.w.stop()
		return nil, fmt.Errorf("read the database's id: %w", err)
	}
	e.bg, e.stopBG = context.WithCancel(context.Background())
	e.runCtx, e.stopRuns = context.WithCancel(context.Background())
	e.acks = newAckSender(e)
	e.workers = newWorkers(e)
	e.direct = newDirectRuns(e)
	e.rd = newPrepared(cfg.DB)
	if cfg.CanSubscribe && cfg.CanPublish {
		e.subscribeThen(ctx, e.ackChannel(cfg.Name), e.receiveAcks, func() { close(e.acksUp) })
		e.subscribe(ctx, e.helloChannel(), e.receiveHello)
	}
	e.goBG(e.acks.loop)
	if cfg.CanPublish {
		e.goBG(e.relayLoop)
	}
	e.goBG(e.janitorLoop)
	return e, nil
}

// goBG runs f in a goroutine the engine owns, unless Close has started.
func (e *Engine) goBG(f func(ctx context.Context)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.isClosed() {
		return
	}
	e.bgWG.Add(1)
	go func() {
		defer e.bgWG.Done()
		f(e.bg)
	}()
}

// subscribeTimeout bounds the first subscription attempt made inside Open
// or AddHandler; later attempts run in the background.
const subscribeTimeout = 5 * time.Second

// subscribe subscribes fn to channel. When the broker cannot be reached it
// keeps trying in the background, with backoff, until it succeeds or the
// engine closes: a bus opens and publishes while Redis is down, and messages
// missed meanwhile are re-sent by their publishers.
func (e *Engine) subscribe(ctx context.Context, channel string, fn func(context.Context, []byte) error) {
	e.subscribeThen(ctx, channel, fn, func() {})
}

// subscribeThen is subscribe, calling up once the subscription is made.
func (e *Engine) subscribeThen(ctx context.Context, channel string, fn func(context.Context, []byte) error, up func()) {
	try := func(ctx context.Context) error {
		unsub, err := e.cfg.PubSub.Subscribe(ctx, channel, fn)
		if err != nil {
			return err
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.isClosed() { // shutdown already took the list
			return unsub()
		}
		e.unsubs = append(e.unsubs, unsub)
		up()
		return nil
	}
	first, cancel := context.WithTimeout(ctx, subscribeTimeout)
	err := try(first)
	cancel()
	if err == nil {
		return
	}
	e.log.Warn("durabus: subscribe failed; retrying in the background", "channel", channel, "err", err)
	e.goBG(func(ctx context.Context) {
		for failures := 1; ; failures++ {
			e.sleep(ctx, nil, min(e.cfg.Backoff(failures), time.Second), false)
			if ctx.Err() != nil {
				return
			}
			err := try(ctx)
			if err == nil {
				e.log.Info("durabus: subscribed", "channel", channel, "after_failures", failures)
				wake(e.workWake)
				return
			}
			e.log.Debug("durabus: subscribe failed", "channel", channel, "err", err, "failures", failures)
		}
	})
}

// nowMS is the engine's clock in Unix milliseconds.
func (e *Engine) nowMS() int64 { return e.cfg.Now().UnixMilli() }

func (e *Engine) ackChannel(publisher string) string {
	return e.cfg.ChannelPrefix + "durabus:ack:" + publisher
}

func (e *Engine) eventChannel(name string) string { return e.cfg.ChannelPrefix + name }

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// ErrClosed is returned by calls made after Close started.
var ErrClosed = errors.New("durabus: bus is closed")

// Closed reports whether Close has started.
func (e *Engine) Closed() bool { return e.isClosed() }

func (e *Engine) isClosed() bool {
	select {
	case <-e.closed:
		return true
	default:
		return false
	}
}

// Write runs fn in the group-commit writer.
func (e *Engine) Write(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) error {
	return e.writeThen(ctx, fn, nil)
}

// writeThen is Write with a hook that runs once the commit is on disk (see
// writer.DoThen).
func (e *Engine) writeThen(ctx context.Context, fn func(ctx context.Context, q store.Querier) error, committed func()) error {
	if e.isClosed() {
		return ErrClosed
	}
	err := e.w.DoThen(ctx, fn, committed)
	if errors.Is(err, errWriterStopped) {
		return ErrClosed
	}
	return err
}

// Publish stores rows in the outbox and hands them to the relay once
// committed (see handoff.go).
func (e *Engine) Publish(ctx context.Context, rows ...store.OutboxRow) error {
	if !e.cfg.CanPublish {
		return errors.New("the PubSub cannot publish")
	}
	e.expect(rows)
	handed := e.handoff.reserve(len(rows))
	if handed {
		for i := range rows {
			rows[i].Sends, rows[i].DueAt = 1, e.firstResend(rows[i])
		}
	}
	// The rows reach the relay from the writer's syncer, once the commit is
	// on disk, so that the rows of one commit arrive together.
	committed := func() {
		if !handed {
			wake(e.relayWake)
			return
		}
		e.handoff.push(rows)
	}
	err := e.writeThen(ctx, func(ctx context.Context, q store.Querier) error {
		return e.st.InsertOutbox(ctx, q, rows...)
	}, committed)
	if err != nil && handed {
		e.handoff.release(len(rows))
	}
	return err
}

// firstResend is when a row sent right after its commit is due again. For
// a row that tracks groups that is when it gets delivery rows, unless its
// groups completed it before.
func (e *Engine) firstResend(r store.OutboxRow) int64 {
	if len(r.Groups) > 0 {
		return r.GroupsDueAt
	}
	return e.nextSend(store.Pending, 1, r.Now)
}

// PublishTx stores rows in the caller's transaction. The relay finds them
// at its next poll after the caller commits; Nudge shortens the wait.
func (e *Engine) PublishTx(ctx context.Context, tx *sql.Tx, rows ...store.OutboxRow) error {
	if !e.cfg.CanPublish {
		return errors.New("the PubSub cannot publish")
	}
	if e.isClosed() {
		return ErrClosed
	}
	e.expect(rows)
	if err := e.st.InsertOutbox(ctx, tx, rows...); err != nil {
		return err
	}
	e.nudgeRelay()
	return nil
}

// expect names the groups each row's event must reach.
func (e *Engine) expect(rows []store.OutboxRow) {
	for i := range rows {
		rows[i].Groups = e.expectedGroups(rows[i].EventName, rows[i].Now)
		rows[i].GroupsDueAt = rows[i].Now + e.cfg.PendingDelay.Milliseconds()
	}
}

// DB is the database the engine works on.
func (e *Engine) DB() *sql.DB { return e.cfg.DB }

// Store is the engine's query set.
func (e *Engine) Store() *store.Store { return e.st }

// Close stops intake, drains handlers until ctx ends, then cancels them,
// flushes and closes what the engine owns. It may be called again.
func (e *Engine) Close(ctx context.Context) error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		close(e.closed)
		e.mu.Unlock()
		go e.shutdown()
	})
	select {
	case <-e.finished:
		return e.closeErr
	case <-ctx.Done():
		e.stopRuns() // handlers see their context cancelled; shutdown goes on
		return ctx.Err()
	}
}

// shutdown stops everything in order: intake, workers, senders, writer.
func (e *Engine) shutdown() {
	defer close(e.finished)
	var errs []error
	e.mu.Lock()
	unsubs := e.unsubs
	e.unsubs = nil
	e.mu.Unlock()
	for _, u := range unsubs {
		if err := u(); err != nil {
			// The PubSub stopped delivering; it only could not tell the broker.
			e.log.Warn("durabus: unsubscribe", "err", err)
		}
	}
	e.workers.stop() // waits for in-flight handlers and their results
	e.stopBG()       // relay, ack sender (after a last flush), janitor
	e.bgWG.Wait()
	e.stopRuns()
	e.w.stop()
	e.rd.close()
	if e.cfg.OwnDB {
		if err := e.cfg.DB.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close database: %w", err))
		}
	}
	e.closeErr = errors.Join(errs...)
}
