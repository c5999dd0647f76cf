package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The baselines durabus is compared with: Redis pub/sub without any
// durability (raw), the outbox and inbox loop most teams write first
// (naive), and the rate at which SQLite alone takes the same rows (insert
// ceiling). They move the same 300-byte envelopes as durabus.

// batchSize is how many events the baselines put in one transaction or one
// pipeline.
const batchSize = 1000

// idleTimeout is how long a baseline's subscriber may go without a message
// before it gives up: Redis pub/sub loses messages silently (for example
// when it disconnects a subscriber that fell behind), so a missing message
// never arrives.
const idleTimeout = 15 * time.Second

// The baselines' tables, as the naive loop would declare them.
const (
	naiveOutboxDDL = `CREATE TABLE outbox (
	id         INTEGER PRIMARY KEY,
	event_id   TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	payload    BLOB    NOT NULL,
	created_at INTEGER NOT NULL)`
	naiveInboxDDL = `CREATE TABLE inbox (
	id         INTEGER PRIMARY KEY,
	event_id   TEXT    NOT NULL UNIQUE,
	payload    BLOB    NOT NULL,
	state      TEXT    NOT NULL,
	created_at INTEGER NOT NULL)`
	naiveOutboxInsert = `INSERT INTO outbox (event_id, name, payload, created_at) VALUES (?, ?, ?, ?)`
	naiveInboxInsert  = `INSERT INTO inbox (event_id, payload, state, created_at) VALUES (?, ?, 'received', ?)
	ON CONFLICT (event_id) DO NOTHING`
	naiveInboxDone = `UPDATE inbox SET state = 'done' WHERE event_id = ?`
)

// runRaw measures Redis pub/sub alone: a publisher sends pipelines of
// batchSize PUBLISH commands to one subscriber, which counts them. The rate
// is the events over the time until the subscriber has them all.
func runRaw(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultRawN)
	elapsed, cpu, err := pipe(ctx, w, n, nil, func(context.Context, []*redis.Message) error { return nil })
	if err != nil {
		return err
	}
	r.Raw = &throughput{N: n, Elapsed: elapsed, CPU: cpu, Note: fmt.Sprintf("%d events; pipelines of %d PUBLISH, 1 subscriber, nothing stored", n, batchSize)}
	return nil
}

// pipe publishes events 0..n-1 in pipelines of batchSize through one Redis
// client to a subscriber on another, handing each batch to store (if not
// nil) before it is published and what arrives to consume. It returns the
// time until consume returned for the last event, and the CPU used.
func pipe(ctx context.Context, w *workEnv, n int,
	store func(ctx context.Context, ids []string, batch [][]byte) error,
	consume func(context.Context, []*redis.Message) error) (time.Duration, *cpuUse, error) {
	pubClient, err := newRedisClient(w.redisURL)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = pubClient.Close() }()
	subClient, err := newRedisClient(w.redisURL)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = subClient.Close() }()
	channel := w.prefix + "events"
	msgs, closeSub, err := subscribe(ctx, subClient, channel, n)
	if err != nil {
		return 0, nil, err
	}
	defer closeSub()

	var elapsed time.Duration
	var cpu *cpuUse
	g, gctx := newGroup(ctx)
	watch := w.startWatch(ctx)
	g.Go(func() error { return publishBatches(gctx, pubClient, channel, n, store) })
	g.Go(func() error {
		err := receive(gctx, msgs, n, consume)
		elapsed, cpu = watch.stop(ctx)
		return err
	})
	err = g.Wait()
	return elapsed, cpu, err
}

// runNaive measures the naive outbox and inbox loop. The publisher inserts
// a batch of events into its outbox in one transaction, commits, then
// publishes the batch in one pipeline. The consumer takes whatever arrived
// (up to batchSize), and in one transaction on its own file inserts each
// into its inbox and marks each done. The rate is the events over the time
// until the consumer committed them all.
func runNaive(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultNaiveN)
	outDB, err := createDB(ctx, w.path("naive-outbox.db"), naiveOutboxDDL)
	if err != nil {
		return err
	}
	defer func() { _ = outDB.Close() }()
	inDB, err := createDB(ctx, w.path("naive-inbox.db"), naiveInboxDDL)
	if err != nil {
		return err
	}
	defer func() { _ = inDB.Close() }()
	outInsert, err := outDB.PrepareContext(ctx, naiveOutboxInsert)
	if err != nil {
		return fmt.Errorf("prepare outbox insert: %w", err)
	}
	defer func() { _ = outInsert.Close() }()
	inInsert, err := inDB.PrepareContext(ctx, naiveInboxInsert)
	if err != nil {
		return fmt.Errorf("prepare inbox insert: %w", err)
	}
	defer func() { _ = inInsert.Close() }()
	inDone, err := inDB.PrepareContext(ctx, naiveInboxDone)
	if err != nil {
		return fmt.Errorf("prepare inbox update: %w", err)
	}
	defer func() { _ = inDone.Close() }()

	// store is the publisher's outbox write: one transaction per batch.
	store := func(ctx context.Context, ids []string, batch [][]byte) error {
		return inTx(ctx, outDB, func(tx *sql.Tx) error {
			st := tx.StmtContext(ctx, outInsert)
			now := time.Now().UnixMilli()
			for i, msg := range batch {
				if _, err := st.ExecContext(ctx, ids[i], benchEvent{}.EventName(), msg, now); err != nil {
					return fmt.Errorf("insert into outbox: %w", err)
				}
			}
			return nil
		})
	}
	// consume is the consumer's inbox write: insert each, then mark each
	// done, in one transaction.
	consume := func(ctx context.Context, batch []*redis.Message) error {
		ids := make([]string, len(batch))
		for i, m := range batch {
			var err error
			if ids[i], err = eventID([]byte(m.Payload)); err != nil {
				return err
			}
		}
		return inTx(ctx, inDB, func(tx *sql.Tx) error {
			ins, done := tx.StmtContext(ctx, inInsert), tx.StmtContext(ctx, inDone)
			now := time.Now().UnixMilli()
			for i, m := range batch {
				if _, err := ins.ExecContext(ctx, ids[i], []byte(m.Payload), now); err != nil {
					return fmt.Errorf("insert into inbox: %w", err)
				}
			}
			for _, id := range ids {
				if _, err := done.ExecContext(ctx, id); err != nil {
					return fmt.Errorf("mark inbox row done: %w", err)
				}
			}
			return nil
		})
	}

	elapsed, cpu, err := pipe(ctx, w, n, store, consume)
	if err != nil {
		return err
	}

	var stored, done int
	if err := outDB.QueryRowContext(ctx, "SELECT count(*) FROM outbox").Scan(&stored); err != nil {
		return fmt.Errorf("count outbox rows: %w", err)
	}
	if err := inDB.QueryRowContext(ctx, "SELECT count(*) FROM inbox WHERE state = 'done'").Scan(&done); err != nil {
		return fmt.Errorf("count inbox rows: %w", err)
	}
	if stored != n || done != n {
		return fmt.Errorf("expected %d rows in each table, found outbox %d, inbox done %d", n, stored, done)
	}
	r.Naive = &throughput{N: n, Elapsed: elapsed, CPU: cpu, Note: fmt.Sprintf("%d events; outbox tx + pipeline per %d, inbox insert+update tx per batch; verified", n, batchSize)}
	return nil
}

// runInsert measures SQLite alone: the events go into a table like the
// naive outbox, batchSize rows per transaction, with a prepared statement.
func runInsert(ctx context.Context, w *workEnv, r *results) error {
	n := w.cfg.n(defaultInsertN)
	db, err := createDB(ctx, w.path("insert.db"), naiveOutboxDDL)
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	insert, err := db.PrepareContext(ctx, naiveOutboxInsert)
	if err != nil {
		return fmt.Errorf("prepare insert: %w", err)
	}
	defer func() { _ = insert.Close() }()

	watch := w.startWatch(ctx)
	for sent := 0; sent < n; sent += batchSize {
		err := inTx(ctx, db, func(tx *sql.Tx) error {
			st := tx.StmtContext(ctx, insert)
			now := time.Now().UnixMilli()
			for seq := sent; seq < min(sent+batchSize, n); seq++ {
				id, msg, err := encodeEvent(seq)
				if err != nil {
					return err
				}
				if _, err := st.ExecContext(ctx, id, benchEvent{}.EventName(), msg, now); err != nil {
					return fmt.Errorf("insert: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	elapsed, cpu := watch.stop(ctx)

	var stored int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM outbox").Scan(&stored); err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	if stored != n {
		return fmt.Errorf("expected %d rows, found %d", n, stored)
	}
	r.Insert = &throughput{N: n, Elapsed: elapsed, CPU: cpu, Note: fmt.Sprintf("%d events; %d per transaction, nothing sent", n, batchSize)}
	return nil
}

// subscribe subscribes to channel and returns once Redis confirmed it, with
// a Go channel big enough to hold all n messages: go-redis drops a message
// it cannot hand over within a minute, and this way it never has to.
func subscribe(ctx context.Context, c *redis.Client, channel string, n int) (<-chan *redis.Message, func(), error) {
	sub := c.Subscribe(ctx, channel)
	if _, err := sub.Receive(ctx); err != nil {
		_ = sub.Close()
		return nil, nil, fmt.Errorf("subscribe to %s: %w", channel, err)
	}
	return sub.Channel(redis.WithChannelSize(n)), func() { _ = sub.Close() }, nil
}

// publishBatches encodes events 0..n-1 in batches of batchSize, hands each
// batch to store (if not nil) and then publishes it in one pipeline.
func publishBatches(ctx context.Context, c *redis.Client, channel string, n int,
	store func(ctx context.Context, ids []string, batch [][]byte) error) error {
	ids := make([]string, 0, batchSize)
	batch := make([][]byte, 0, batchSize)
	for sent := 0; sent < n; sent += len(batch) {
		ids, batch = ids[:0], batch[:0]
		for seq := sent; seq < min(sent+batchSize, n); seq++ {
			id, msg, err := encodeEvent(seq)
			if err != nil {
				return err
			}
			ids, batch = append(ids, id), append(batch, msg)
		}
		if store != nil {
			if err := store(ctx, ids, batch); err != nil {
				return err
			}
		}
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, msg := range batch {
				p.Publish(ctx, channel, msg)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("publish events %d..%d: %w", sent, sent+len(batch)-1, err)
		}
	}
	return nil
}

// receive takes n messages from msgs, handing them to handle in batches of
// whatever has arrived, up to batchSize. It fails when no message came for
// idleTimeout.
func receive(ctx context.Context, msgs <-chan *redis.Message, n int, handle func(context.Context, []*redis.Message) error) error {
	got := 0
	batch := make([]*redis.Message, 0, batchSize)
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	last, lastAt := 0, time.Now()
	for got < n {
		batch = batch[:0]
		select {
		case m, ok := <-msgs:
			if !ok {
				return fmt.Errorf("subscription closed after %d of %d messages", got, n)
			}
			batch = append(batch, m)
		case <-idle.C:
			if got != last {
				last, lastAt = got, time.Now()
			} else if time.Since(lastAt) > idleTimeout {
				return fmt.Errorf("received %d of %d messages, then nothing for %v: Redis pub/sub lost the rest", got, n, idleTimeout)
			}
			continue
		case <-ctx.Done():
			return fmt.Errorf("received %d of %d messages: %w", got, n, ctx.Err())
		}
	more:
		for len(batch) < batchSize {
			select {
			case m, ok := <-msgs:
				if !ok {
					break more
				}
				batch = append(batch, m)
			default:
				break more
			}
		}
		if err := handle(ctx, batch); err != nil {
			return err
		}
		got += len(batch)
	}
	return nil
}

// createDB creates a fresh SQLite file at path with one table.
func createDB(ctx context.Context, path, ddl string) (*sql.DB, error) {
	db, err := openSQLite(ctx, path)
	if err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, ddl); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("create table in %s: %w", path, err)
	}
	return db, nil
}

// inTx runs fn in a transaction on db and commits it.
func inTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
