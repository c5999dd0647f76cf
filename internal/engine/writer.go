package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/durabus/durabus/internal/store"
)

// errWriterStopped is returned by Do once the writer has stopped.
var errWriterStopped = errors.New("writer stopped")

// maxBatch bounds how many operations share one transaction.
const maxBatch = 1000

// writer owns the bus's single write connection. Callers hand it functions
// to run in a transaction; it runs all that are waiting in one transaction
// (group commit), each inside a savepoint so one failing operation does not
// undo the others. A caller returns after the commit that holds its work.
type writer struct {
	conn *conn
	ops  chan *op
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

type op struct {
	ctx  context.Context
	fn   func(ctx context.Context, q store.Querier) error
	done chan error
}

func newWriter(c *sql.Conn) *writer {
	w := &writer{
		conn: &conn{Conn: c, stmts: map[string]*sql.Stmt{}},
		ops:  make(chan *op, maxBatch),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	go w.loop()
	return w
}

// Do runs fn in a write transaction and returns once it is committed. fn
// must only touch the database through q and must not keep q.
func (w *writer) Do(ctx context.Context, fn func(ctx context.Context, q store.Querier) error) error {
	o := &op{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case w.ops <- o:
	case <-w.done:
		return errWriterStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-o.done:
		return err
	case <-w.done:
		// The loop drains the queue before it closes done.
		select {
		case err := <-o.done:
			return err
		default:
			return errWriterStopped
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
	defer w.conn.close()
	batch := make([]*op, 0, maxBatch)
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
		w.run(batch)
	}
}

// run executes a batch in one transaction and answers every caller.
func (w *writer) run(batch []*op) {
	ctx := context.Background() // a caller's deadline must not abort the others' commit
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
	if _, err := w.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		failAll(live, fmt.Errorf("begin: %w", store.Classify(err)))
		return
	}
	errs := make([]error, len(live))
	for i, o := range live {
		errs[i] = w.conn.savepoint(ctx, o.fn, len(live) > 1)
	}
	if len(live) == 1 && errs[0] != nil {
		_, _ = w.conn.ExecContext(ctx, "ROLLBACK")
		live[0].done <- errs[0]
		return
	}
	if _, err := w.conn.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = w.conn.ExecContext(ctx, "ROLLBACK")
		failAll(live, fmt.Errorf("commit: %w", store.Classify(err)))
		return
	}
	for i, o := range live {
		o.done <- errs[i]
	}
}

func failAll(ops []*op, err error) {
	for _, o := range ops {
		o.done <- err
	}
}

// conn is the write connection with a cache of prepared statements.
type conn struct {
	*sql.Conn
	stmts map[string]*sql.Stmt
}

func (c *conn) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if s, ok := c.stmts[query]; ok {
		return s, nil
	}
	s, err := c.Conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.stmts[query] = s
	return s, nil
}

func (c *conn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if len(args) == 0 {
		return c.Conn.ExecContext(ctx, query)
	}
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

func (c *conn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

func (c *conn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return c.Conn.QueryRowContext(ctx, query, args...) // reports the same error through Scan
	}
	return s.QueryRowContext(ctx, args...)
}

// savepoint runs fn, inside a savepoint when others share the transaction,
// and undoes only fn's work when it fails.
func (c *conn) savepoint(ctx context.Context, fn func(context.Context, store.Querier) error, shared bool) error {
	if !shared {
		return fn(ctx, c) // the caller rolls back the whole transaction on error
	}
	if _, err := c.Conn.ExecContext(ctx, "SAVEPOINT op"); err != nil {
		return store.Classify(err)
	}
	if err := fn(ctx, c); err != nil {
		_, _ = c.Conn.ExecContext(ctx, "ROLLBACK TO op")
		_, _ = c.Conn.ExecContext(ctx, "RELEASE op")
		return err
	}
	_, err := c.Conn.ExecContext(ctx, "RELEASE op")
	return store.Classify(err)
}

func (c *conn) close() {
	for _, s := range c.stmts {
		_ = s.Close()
	}
	_ = c.Conn.Close()
}
