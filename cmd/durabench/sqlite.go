package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, as durabus uses

	"github.com/durabus/durabus/internal/store"
)

// The durabus tables the workloads count rows in (default TablePrefix).
const (
	outboxTable = "durabus_outbox"
	inboxTable  = "durabus_inbox"
)

// openSQLite opens the file at path with one connection in WAL mode with
// synchronous=FULL, as durabus opens its own files by default.
func openSQLite(ctx context.Context, path string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", store.DSN(path, 5*time.Second, "FULL"))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: journal_mode is %q, not WAL", path, mode)
	}
	return db, nil
}

// openReader opens a durabus file for counting rows, on one query-only
// connection. In WAL mode its short reads never block the bus's writer.
func openReader(path string) (*sql.DB, error) {
	v := url.Values{}
	v.Add("_pragma", "busy_timeout(5000)")
	v.Add("_pragma", "query_only(true)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+v.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s for reading: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// stateCounts counts durabus rows by state.
type stateCounts map[string]int

// String lists the counts, for progress lines and errors.
func (c stateCounts) String() string {
	var b strings.Builder
	for i, s := range []string{"PENDING", "PROCESSING", "COMPLETED", "DEAD"} {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", s, c[s])
	}
	return b.String()
}

// firstUnfinished returns the first outbox row of publisher, from id from
// on, that is not COMPLETED, and its state; id 0 if there is none. It walks
// the table along its rowid (NOT INDEXED keeps the planner from an index
// that would visit every row of publisher), so it needs no index.
func firstUnfinished(ctx context.Context, db *sql.DB, publisher string, from int64) (id int64, state string, err error) {
	err = db.QueryRowContext(ctx, "SELECT id, state FROM "+outboxTable+
		" NOT INDEXED WHERE id >= ? AND publisher = ? AND state <> 'COMPLETED' ORDER BY id LIMIT 1", from, publisher).Scan(&id, &state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, "", nil
	case err != nil:
		return 0, "", fmt.Errorf("find the first unfinished outbox row: %w", err)
	}
	return id, state, nil
}

// allStates counts every row of a durabus table (outboxTable or inboxTable)
// by state.
func allStates(ctx context.Context, db *sql.DB, table string) (stateCounts, error) {
	return countStates(ctx, db, "SELECT state, count(*) FROM "+table+" GROUP BY state")
}

func countStates(ctx context.Context, db *sql.DB, query string, args ...any) (stateCounts, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("count rows by state: %w", err)
	}
	defer func() { _ = rows.Close() }()
	c := stateCounts{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, fmt.Errorf("count rows by state: %w", err)
		}
		c[state] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count rows by state: %w", err)
	}
	return c, nil
}

// verifyCompleted opens the closed bus files and checks that their outbox
// (at outPath) and inbox (at inPath) each hold n COMPLETED rows and nothing
// else. It returns the counts it found.
func verifyCompleted(ctx context.Context, outPath, inPath string, n int) (out, in stateCounts, err error) {
	count := func(path, table string) (stateCounts, error) {
		db, err := openReader(path)
		if err != nil {
			return nil, err
		}
		defer func() { _ = db.Close() }()
		c, err := allStates(ctx, db, table)
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w", table, path, err)
		}
		return c, nil
	}
	if out, err = count(outPath, outboxTable); err != nil {
		return nil, nil, err
	}
	if in, err = count(inPath, inboxTable); err != nil {
		return nil, nil, err
	}
	if out["COMPLETED"] != n || len(out) != 1 || in["COMPLETED"] != n || len(in) != 1 {
		return out, in, fmt.Errorf("expected %d COMPLETED rows in each, found outbox %v, inbox %v", n, out, in)
	}
	return out, in, nil
}
