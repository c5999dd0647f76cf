package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// errWriterStopped is returned by Do once the writer has stopped.
var errWriterStopped = errors.New("writer stopped")

// maxBatch bounds how many operations share one transaction.
const maxBatch = 1000

// writer owns the bus's single write connection. Callers hand it functions
// to run in a transaction; a caller returns once the commit that holds its
// work is on disk.
//
// Commits are pipelined with the disk. The writer runs each operation as
// it arrives, inside an open transaction, while the syncer (a second
// goroutine) fsyncs the write-ahead log for the previous commit. When the
// syncer is free, the writer commits everything it ran meanwhile (group
// commit; under load it lingers a moment for the callers of its previous
// commit) and hands the commit over; the syncer fsyncs the log and answers
// that commit's callers. So SQLite's work and the disk's overlap instead of
// adding up, one fsync covers whatever arrived while the last one ran, and
// an idle bus commits an operation at once. The connection itself commits
// at synchronous=NORMAL (the log is written, not synced); the syncer's
// fsync of the log file makes each commit as durable as FULL would before
// anyone hears of it.
type writer struct {
	raw  *sql.Conn
	conn *prepared // raw, through statements prepared once
	// wal is the database's write-ahead log, which the syncer fsyncs; nil
	// when commits need no fsync (synchronous=NORMAL) or sync themselves
	// (FULL on a connection whose log file could not be opened).
	wal     *os.File
	slot    chan struct{} // holds a token while a commit is with the syncer
	held    bool          // the loop put the token in for its next commit
	commits chan *commit  // to the syncer
	synced  chan struct{} // closed when the syncer has answered every commit
	ops     chan *op
	timer   *time.Timer // linger's, stopped between uses
	// lingerFor is maxLinger; onLinger, if set, runs when linger starts to
	// wait. Tests change them before the writer's first op.
	lingerFor time.Duration
	onLinger  func()
	quit      chan struct{}
	done      chan struct{}
	once      sync.Once

	syncs int // fsyncs of wal, for tests; the syncer's alone until done
}

type op struct {
	ctx  context.Context
	fn   func(ctx context.Context, q store.Querier) error
	lazy bool // its effect need not survive a power loss
	// committed, if set, runs once the op's transaction is committed and
	// on disk, before its caller hears of it.
	committed func()
	done      chan error
}

// commit is one committed transaction's ops, on their way to the syncer.
type commit struct {
	ops  []*op
	sync bool // some op's effect must survive a power loss
}

// newWriter starts the writer on c at the given synchronous setting. At
// FULL it opens the database's write-ahead log for the syncer and lets c
// commit at NORMAL; if the log cannot be opened, c stays at FULL, every
// commit syncs itself, and walErr says why.
func newWriter(ctx context.Context, c *sql.Conn, synchronous string) (w *writer, walErr error) {
	w = &writer{
		raw:     c,
		conn:    newPrepared(c),
		slot:    make(chan struct{}, 1),
		commits: make(chan *commit, 1),
		synced:  make(chan struct{}),
		ops:     make(chan *op, maxBatch),
		timer:   time.NewTimer(time.Hour),

		lingerFor: maxLinger,
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	w.timer.Stop()
	if synchronous == "FULL" {
		w.wal, walErr = openWAL(ctx, c)
	}
	go w.syncLoop()
	go w.loop()
	return w, walErr
}

// openWAL opens the write-ahead log of c's database and sets c to commit
// without syncing. fsync applies to a file, whichever descriptor wrote it,
// so syncing this one makes c's commits durable.
func openWAL(ctx context.Context, c *sql.Conn) (*os.File, error) {
	var seq int
	var name, path string
	if err := c.QueryRowContext(ctx, "PRAGMA database_list").Scan(&seq, &name, &path); err != nil {
		return nil, err
	}
	if path == "" {
		return nil, errors.New("no database file")
	}
	// SQLite creates the log with the first write transaction.
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return nil, err
	}
	if _, err := c.ExecContext(ctx, "ROLLBACK"); err != nil {
		return nil, err
	}
	wal, err := os.OpenFile(path+"-wal", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if _, err := c.ExecContext(ctx, "PRAGMA synchronous = NORMAL"); err != nil {
		_ = wal.Close()
		return nil, err
	}
	return wal, nil
}

// Do runs fn in a write transaction and returns once it is committed. fn
// must only touch the database through q and must not keep q.
func (w *writer) Do(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) error {
	return w.do(newOp(ctx, fn))
}

// DoThen is Do with committed called once the commit is on disk, for all
// the ops of one commit in a row and in commit order: what it hands on
// (rows for the relay) travels together and without waiting for the
// callers to wake up.
func (w *writer) DoThen(ctx context.Context, fn func(ctx context.Context, q store.Querier) error, committed func()) error {
	o := newOp(ctx, fn)
	o.committed = committed
	return w.do(o)
}

// DoLazy is Do for work whose effect need not survive a power loss, because
// it is derived again if lost (an applied ack: the event is re-sent and the
// consumer answers again). A commit of lazy work alone is not synced; a
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
		// The loop and the syncer answer every queued op before done.
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

// loop runs transactions until stop: it opens one with the first op that
// arrives, runs every op that arrives after it, and commits once the
// syncer is free (after lingering under load) or the batch is full.
func (w *writer) loop() {
	defer close(w.done)
	defer func() {
		close(w.commits)
		<-w.synced
		if w.wal != nil {
			_ = w.wal.Close()
		}
		w.conn.close()
		_ = w.raw.Close()
	}()
	var t txn
	last := 1 // eager ops in the previous commit: the load
	for {
		var first *op
		select {
		case first = <-w.ops:
		case <-w.quit:
			w.drain(&t)
			return
		}
		if !w.begin(&t, first) {
			continue
		}
	fill:
		for {
			w.runQueued(&t) // before anything else
			if !t.hasRoom() {
				break
			}
			select {
			case o := <-w.ops:
				w.run(&t, o)
			case w.slot <- struct{}{}:
				w.held = true
				w.linger(&t, last)
				break fill
			case <-w.quit:
				w.drain(&t)
				return
			}
		}
		if !t.open { // an op failed; every op was answered
			w.release()
			last = 1
			continue
		}
		last = t.eager
		w.commit(&t)
	}
}

// maxLinger bounds how long a loaded writer, with the syncer free, waits
// for more ops before it commits; it is well under the time of the commit
// and fsync that it saves.
const maxLinger = 500 * time.Microsecond

// linger runs the ops that arrive within maxLinger while t holds fewer
// eager ops than last: under load, the callers of the previous commit come
// back a moment after they were answered, and one commit (one fsync)
// serves them all again. Lazy ops (applied acks) do not count: nobody
// waits on them to come back. An idle writer (last 1) does not wait.
func (w *writer) linger(t *txn, last int) {
	if t.eager >= last {
		return
	}
	if w.onLinger != nil {
		w.onLinger()
	}
	w.timer.Reset(w.lingerFor)
	defer w.timer.Stop()
	for t.hasRoom() && t.eager < last {
		select {
		case o := <-w.ops:
			w.run(t, o)
		case <-w.timer.C:
			return
		}
	}
}

// runQueued runs the ops already queued in t, up to maxBatch.
func (w *writer) runQueued(t *txn) {
	for t.hasRoom() {
		select {
		case o := <-w.ops:
			w.run(t, o)
		default:
			return
		}
	}
}

// drain commits the open transaction and runs every op still queued, for
// stop.
func (w *writer) drain(t *txn) {
	for {
		if t.open {
			w.runQueued(t)
			w.commit(t)
		}
		select {
		case o := <-w.ops:
			w.begin(t, o)
		default:
			return
		}
	}
}

// txn is the open transaction and the ops it ran.
type txn struct {
	open  bool
	ops   []*op
	eager int // ops that are not lazy
}

// add records o as run in t.
func (t *txn) add(o *op) {
	t.ops = append(t.ops, o)
	if !o.lazy {
		t.eager++
	}
}

// hasRoom reports whether t is open and may run more ops.
func (t *txn) hasRoom() bool { return t.open && len(t.ops) < maxBatch }

// reset empties t's ops, keeping their room.
func (t *txn) reset() { t.ops, t.eager = t.ops[:0], 0 }

// begin opens a transaction and runs o in it. It reports whether the
// transaction is open.
func (w *writer) begin(t *txn, o *op) bool {
	if err := o.ctx.Err(); err != nil {
		o.done <- err
		return false
	}
	// A caller's deadline must not abort the others' commit.
	if _, err := w.conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		o.done <- fmt.Errorf("begin: %w", store.Classify(err))
		return false
	}
	t.open = true
	t.reset()
	w.run(t, o)
	return t.open
}

// run runs o in the open transaction. When o fails, the transaction is
// rolled back and each of its ops runs again in a transaction of its own,
// so one failure never undoes another caller's work: ops must therefore be
// safe to run again (they reset whatever they report).
func (w *writer) run(t *txn, o *op) {
	if err := o.ctx.Err(); err != nil {
		o.done <- err
		return
	}
	err := o.fn(context.Background(), w.conn)
	if err == nil {
		t.add(o)
		return
	}
	_, _ = w.conn.ExecContext(context.Background(), "ROLLBACK")
	t.open = false
	if len(t.ops) == 0 {
		o.done <- err
		return
	}
	for _, again := range append(t.ops, o) {
		w.alone(again)
	}
	t.reset()
}

// alone runs o in a transaction of its own, for run.
func (w *writer) alone(o *op) {
	var t txn
	if w.begin(&t, o) {
		w.commit(&t)
	}
}

// acquire waits until the syncer is free for a commit, unless the writer
// holds the slot already.
func (w *writer) acquire() {
	if !w.held {
		w.slot <- struct{}{}
		w.held = true
	}
}

// release gives back the slot, if the writer holds it, when it has nothing
// to commit.
func (w *writer) release() {
	if w.held {
		<-w.slot
		w.held = false
	}
}

// commit commits the open transaction, once the syncer is free, and hands
// its ops over; the syncer frees the slot.
func (w *writer) commit(t *txn) {
	w.acquire()
	c := &commit{ops: make([]*op, len(t.ops)), sync: t.eager > 0}
	copy(c.ops, t.ops)
	t.open = false
	t.reset()
	if _, err := w.conn.ExecContext(context.Background(), "COMMIT"); err != nil {
		_, _ = w.conn.ExecContext(context.Background(), "ROLLBACK")
		w.release()
		err = fmt.Errorf("commit: %w", store.Classify(err))
		for _, o := range c.ops {
			o.done <- err
		}
		return
	}
	w.held = false // the syncer frees the slot
	w.commits <- c
}

// syncLoop makes each commit durable, then runs its hooks and answers its
// callers, in commit order, until the writer closes commits.
func (w *writer) syncLoop() {
	defer close(w.synced)
	for c := range w.commits {
		var err error
		if c.sync && w.wal != nil {
			w.syncs++
			if serr := w.wal.Sync(); serr != nil {
				err = fmt.Errorf("sync the write-ahead log: %w", serr)
			}
		}
		<-w.slot // the next commit may start while this one's callers wake
		if err == nil {
			for _, o := range c.ops {
				if o.committed != nil {
					o.committed()
				}
			}
		}
		for _, o := range c.ops {
			o.done <- err
		}
	}
}
