package engine

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durabus/durabus/internal/store"
)

func openWriter(t *testing.T) *writer {
	t.Helper()
	db, err := sql.Open("sqlite", store.DSN(filepath.Join(t.TempDir(), "w.db"), time.Second, "FULL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, walErr := newWriter(context.Background(), c, "FULL")
	if walErr != nil {
		t.Fatalf("open the write-ahead log: %v", walErr)
	}
	t.Cleanup(w.stop)
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		_, err := q.ExecContext(ctx, "CREATE TABLE t (v INTEGER)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

// insertOne inserts a row into t.
func insertOne(ctx context.Context, q store.Querier) error {
	_, err := q.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	return err
}

// rows counts the rows of t.
func rows(t *testing.T, w *writer) int {
	t.Helper()
	var n int
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return q.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n)
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// At FULL the connection commits at NORMAL and the syncer fsyncs the log
// for every commit that holds durable work, and not for lazy work alone.
func TestWriterSyncsTheLogExceptForLazyWork(t *testing.T) {
	w := openWriter(t)
	if w.wal == nil {
		t.Fatal("the writer did not open the write-ahead log at FULL")
	}
	var sync int
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return q.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync)
	}); err != nil {
		t.Fatal(err)
	}
	if sync != 1 {
		t.Fatalf("the connection's synchronous is %d, want 1 (NORMAL): the syncer makes commits durable", sync)
	}

	before := w.syncs
	if err := w.DoLazy(context.Background(), insertOne); err != nil {
		t.Fatal(err)
	}
	if w.syncs != before {
		t.Fatalf("lazy work alone was fsynced (%d fsyncs, want %d)", w.syncs, before)
	}
	if err := w.Do(context.Background(), insertOne); err != nil {
		t.Fatal(err)
	}
	if w.syncs != before+1 {
		t.Fatalf("%d fsyncs after a durable commit, want %d", w.syncs, before+1)
	}
	if n := rows(t, w); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
}

// Ops that wait together share one commit and one fsync.
func TestWriterSharesCommits(t *testing.T) {
	w := openWriter(t)
	before := w.syncs
	commitTogether(t, w, make([]bool, 9)...) // ten eager inserts
	if got := w.syncs - before; got != 1 {
		t.Fatalf("%d fsyncs for ten ops that waited together, want 1", got)
	}
	if n := rows(t, w); n != 10 {
		t.Fatalf("%d rows, want 10", n)
	}
}

// Callers that arrive together share commits, and one caller's failure
// fails only that caller: the others' work is committed.
func TestWriterSharesCommitsAndIsolatesFailures(t *testing.T) {
	w := openWriter(t)
	const callers = 200
	errs := make(chan error, callers)
	before := w.syncs
	for i := range callers {
		go func() {
			if i%50 == 7 {
				errs <- w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
					_, err := q.ExecContext(ctx, "INSERT INTO missing VALUES (1)")
					return err
				})
				return
			}
			errs <- w.Do(context.Background(), insertOne)
		}()
	}
	failed := 0
	for range callers {
		if err := <-errs; err != nil {
			failed++
		}
	}
	if failed != 4 {
		t.Fatalf("%d calls failed, want the 4 that insert into a missing table", failed)
	}
	if n := rows(t, w); n != callers-4 {
		t.Fatalf("%d rows, want %d: a failure undid another caller's work", n, callers-4)
	}
	if got := w.syncs - before; got < 1 || got > callers {
		t.Fatalf("%d fsyncs for %d callers", got, callers)
	}
}

// commitTogether has w commit an eager insert and one more insert per
// entry of lazy (DoLazy where true) in one transaction: the first op holds
// the writer until the others are queued behind it.
func commitTogether(t *testing.T, w *writer, lazy ...bool) {
	t.Helper()
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	errs := make(chan error, 1+len(lazy))
	go func() {
		errs <- w.Do(ctx, func(ctx context.Context, q store.Querier) error {
			close(started)
			<-release
			return insertOne(ctx, q)
		})
	}()
	<-started
	for _, l := range lazy {
		do := w.Do
		if l {
			do = w.DoLazy
		}
		go func() { errs <- do(ctx, insertOne) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(w.ops) < len(lazy) {
		if time.Now().After(deadline) {
			t.Fatalf("%d ops never queued behind the blocked one", len(lazy))
		}
		runtime.Gosched()
	}
	close(release)
	for range 1 + len(lazy) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// An op that fails while the writer lingers, with the syncer's slot taken
// for the next commit, makes every op of that transaction run again alone:
// the one that failed fails again, the others commit.
func TestWriterOpFailingWhileLingering(t *testing.T) {
	w := openWriter(t)
	w.lingerFor = time.Minute
	lingering := make(chan struct{}, 1)
	w.onLinger = func() { lingering <- struct{}{} }
	ctx := context.Background()

	// One commit of three ops, so that the writer lingers for three next.
	commitTogether(t, w, false, false)

	// The next op waits for more; a failing one arrives meanwhile.
	done := make(chan error, 2)
	go func() { done <- w.Do(ctx, insertOne) }()
	select {
	case <-lingering:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not linger after a commit of three")
	}
	go func() {
		done <- w.Do(ctx, func(ctx context.Context, q store.Querier) error {
			_, err := q.ExecContext(ctx, "INSERT INTO missing VALUES (1)")
			return err
		})
	}()
	failed := 0
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				failed++
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an op was never answered: the writer is stuck")
		}
	}
	if failed != 1 {
		t.Fatalf("%d ops failed, want 1", failed)
	}
	if n := rows(t, w); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
}

// Lazy ops (applied acks) in a commit do not make the writer wait for as
// many ops next time: nobody waits on them to come back.
func TestWriterDoesNotLingerForLazyOps(t *testing.T) {
	w := openWriter(t)
	w.lingerFor = time.Minute
	var lingered atomic.Int32
	w.onLinger = func() { lingered.Add(1) }
	ctx := context.Background()

	// One commit of an eager op and two lazy ones.
	commitTogether(t, w, true, true)

	began := time.Now()
	if err := w.Do(ctx, insertOne); err != nil {
		t.Fatal(err)
	}
	if n := lingered.Load(); n != 0 {
		t.Fatalf("the writer lingered %d times after a commit of one eager op (took %v)", n, time.Since(began))
	}
	if n := rows(t, w); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
}

// stop answers every op that was queued before it.
func TestWriterStopAnswersQueuedOps(t *testing.T) {
	w := openWriter(t)
	const callers = 50
	errs := make(chan error, callers)
	for range callers {
		go func() { errs <- w.Do(context.Background(), insertOne) }()
	}
	w.stop()
	for range callers {
		if err := <-errs; err != nil && !errors.Is(err, errWriterStopped) {
			t.Fatalf("a call got %v, want nil or errWriterStopped", err)
		}
	}
}

func TestWriterRunsCommittedHookOnlyAfterCommit(t *testing.T) {
	w := openWriter(t)
	insert := func(ctx context.Context, q store.Querier) error {
		_, err := q.ExecContext(ctx, "INSERT INTO t VALUES (1)")
		return err
	}
	ran := false
	if err := w.DoThen(context.Background(), insert, func() { ran = true }); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("the hook of a committed op did not run before Do returned")
	}

	ran = false
	err := w.DoThen(context.Background(), func(ctx context.Context, q store.Querier) error {
		_, err := q.ExecContext(ctx, "INSERT INTO missing VALUES (1)")
		return err
	}, func() { ran = true })
	if err == nil {
		t.Fatal("an insert into a missing table succeeded")
	}
	if ran {
		t.Fatal("the hook ran for an op whose transaction failed")
	}
}
