package engine

import (
	"context"
	"database/sql"
	"path/filepath"
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
	w := newWriter(c, "FULL")
	t.Cleanup(w.stop)
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		_, err := q.ExecContext(ctx, "CREATE TABLE t (v INTEGER)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

// synchronous reads the write connection's setting (2 is FULL).
func synchronous(t *testing.T, w *writer) int {
	t.Helper()
	var v int
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return q.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&v)
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestWriterLazyWorkCommitsAndLeavesFullSync(t *testing.T) {
	w := openWriter(t)
	var during int
	if err := w.DoLazy(context.Background(), func(ctx context.Context, q store.Querier) error {
		if err := q.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&during); err != nil {
			return err
		}
		_, err := q.ExecContext(ctx, "INSERT INTO t VALUES (1)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if during != 1 {
		t.Fatalf("synchronous is %d during lazy-only work, want 1 (NORMAL)", during)
	}
	if got := synchronous(t, w); got != 2 {
		t.Fatalf("synchronous is %d after lazy work, want 2 (FULL)", got)
	}
	var n int
	if err := w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return q.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n)
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d rows after the lazy insert, want 1", n)
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
