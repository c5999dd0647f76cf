package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// errWriterStopped is returned by Do once the writer has stopped.
var errWriterStopped = errors.New("writer stopped")

// maxBatch bounds how many operations share one transaction.
const maxBatch = 1000

// writer owns the bus's single write connection. Callers hand it functions
// to run in a transaction; it runs all that are waiting in one transaction
// (group commit). A caller returns after the commit that holds its work.
type writer struct {
	raw      *sql.Conn
	conn     *prepared // raw, through statements prepared once
	syncFull bool      // commits wait for an fsync, except lazy-only ones
	ops      chan *op
	quit     chan struct{}
	done     chan struct{}
	once     sync.Once
}

type op struct {
	ctx  context.Context
	fn   func(ctx context.Context, q store.Querier) error
	lazy bool // its effect need not survive a power loss
	// committed, if set, runs on the writer's goroutine once the op's
	// transaction is committed, before its caller hears of it.
	committed func()
	done      chan error
}

func newWriter(c *sql.Conn, synchronous string) *writer {
	w := &writer{
		raw:      c,
		conn:     newPrepared(c),
		syncFull: synchronous == "FULL",
		ops:      make(chan *op, maxBatch),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go w.loop()
	return w
}

// Do runs fn in a write transaction and returns once it is committed. fn
// must only touch the database through q and must not keep q.
func (w *writer) Do(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) error {
	return w.do(newOp(ctx, fn))
}

// DoThen is Do with committed called on the writer's goroutine right
// after the commit, for all the ops of one commit in a row: what it hands
// on (rows for the relay) travels together and without waiting for the
// callers to wake up.
func (w *writer) DoThen(ctx context.Context, fn func(ctx context.Context, q store.Querier) error, committed func()) error {
	o := newOp(ctx, fn)
	o.committed = committed
	return w.do(o)
}

// DoLazy is Do for work whose effect need not survive a power loss, because
// it is derived again if lost (an applied ack: the event is re-sent and the
// consumer answers again). A commit of lazy work alone skips the fsync; a
// later commit's fsync covers it, as the log is written in order.
func (w *writer) DoLazy(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) error {
	o := newOp(ctx, fn)
	o.lazy = true
	return w.do(o)
}

// ops are reused: one per call of a busy bus's Do adds up. An op goes back
// to the pool only once its caller has its answer, when the writer no
// longer holds it.
var opPool = sync.Pool{New: func() any { return &op{done: make(chan error, 1)} }}

func newOp(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) *op {
	o := opPool.Get().(*op)
	o.ctx, o.fn = ctx, fn
	return o
}

// recycle returns o, answered or never queued, to the pool.
func (o *op) recycle() {
	*o = op{done: o.done}
	opPool.Put(o)
}

func (w *writer) do(o *op) error {
	ctx := o.ctx
	select {
	case w.ops <- o:
	case <-w.done:
		o.recycle()
		return errWriterStopped
	case <-ctx.Done():
		o.recycle()
		return ctx.Err()
	}
	select {
	case err := <-o.done:
		o.recycle()
		return err
	case <-w.done:
		// The loop drains the queue before it closes done.
		select {
		case err := <-o.done:
			o.recycle()
			return err
		default:
			return errWriterStopped // o may still sit in the queue: not reused
		}
	}
}

// stop runs what is queued, then stops the loop and closes the connection.
func (w *writer) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

func (w *writer) loop() {
	defer close(w.done)
	defer func() {
		w.conn.close()
		_ = w.raw.Close()
	}()
	batch := make([]*op, 0, maxBatch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	last := 1 // size of the previous batch: the load
	for {
		batch = batch[:0]
		select {
		case o := <-w.ops:
			batch = append(batch, o)
		case <-w.quit:
			for {
				select {
				case o := <-w.ops:
					w.run([]*op{o})
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case o := <-w.ops:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		// Under load, the callers of the previous batch come back a moment
		// after its commit: wait a little for them, so that one commit (one
		// fsync) serves them all again. An idle writer does not wait.
		if len(batch) < last {
			linger.Reset(maxLinger)
		wait:
			for len(batch) < last {
				select {
				case o := <-w.ops:
					batch = append(batch, o)
				case <-linger.C:
					break wait
				}
			}
			linger.Stop()
		}
		last = len(batch)
		w.run(batch)
	}
}

// maxLinger bounds how long a loaded writer waits to fill a batch; it is
// well under the time of the commit that it saves.
const maxLinger = 500 * time.Microsecond

// run executes a batch in one transaction and answers every caller. When
// an operation fails, the transaction is rolled back and each operation runs
// again in a transaction of its own, so one failure never undoes another
// caller's work. Operations must therefore be safe to run again: they reset
// whatever they report.
func (w *writer) run(batch []*op) {
	live := batch[:0:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.done <- err
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	err := w.tx(live)
	if !errors.Is(err, errRetryAlone) {
		answer(live, err)
		return
	}
	for _, o := range live {
		answer([]*op{o}, w.tx([]*op{o}))
	}
}

// answer tells the callers of ops how their transaction ended, after the
// hooks of a committed one ran.
func answer(ops []*op, err error) {
	if err == nil {
		for _, o := range ops {
			if o.committed != nil {
				o.committed()
			}
		}
	}
	for _, o := range ops {
		o.done <- err
	}
}

var errRetryAlone = errors.New("an operation failed")

// tx runs ops in one transaction and commits when all succeed; otherwise it
// rolls back and returns the error (errRetryAlone when ops share the
// transaction).
func (w *writer) tx(ops []*op) error {
	ctx := context.Background() // a caller's deadline must not abort the others' commit
	if w.syncFull && allLazy(ops) {
		if _, err := w.conn.ExecContext(ctx, "PRAGMA synchronous = NORMAL"); err != nil {
			return fmt.Errorf("set synchronous: %w", store.Classify(err))
		}
		defer func() { _, _ = w.conn.ExecContext(ctx, "PRAGMA synchronous = FULL") }()
	}
	if _, err := w.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", store.Classify(err))
	}
	for _, o := range ops {
		if err := o.fn(ctx, w.conn); err != nil {
			_, _ = w.conn.ExecContext(ctx, "ROLLBACK")
			if len(ops) == 1 {
				return err
			}
			return errRetryAlone
		}
	}
	if _, err := w.conn.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = w.conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("commit: %w", store.Classify(err))
	}
	return nil
}

func allLazy(ops []*op) bool {
	for _, o := range ops {
		if !o.lazy {
			return false
		}
	}
	return true
}
