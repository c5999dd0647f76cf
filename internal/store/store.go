// Package store holds durabus's SQLite schema, its migrations and every
// query the bus runs. It moves plain rows; it knows nothing of Go payload
// types.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Row states, as stored in the state columns.
const (
	Pending    = "PENDING"
	Processing = "PROCESSING"
	Completed  = "COMPLETED"
	Dead       = "DEAD"
)

// Errors the store classifies; the root package wraps them in its own.
var (
	ErrNotDatabase = errors.New("durabus: the database file is not SQLite or is corrupt")
	ErrLocked      = errors.New("durabus: the database is locked by another connection")
	ErrTooNew      = errors.New("durabus: the database schema is newer than this version of durabus")
)

// Querier is what every query runs on: *sql.DB, *sql.Conn, *sql.Tx and the
// writer's transaction all satisfy it.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

//go:embed migrations/*.sql
var migrationFiles embed.FS

var prefixPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidPrefix reports whether p can prefix table names.
func ValidPrefix(p string) bool { return prefixPattern.MatchString(p) }

// DSN builds the modernc.org/sqlite data source name for a file, with the
// pragmas every connection of the pool gets.
func DSN(path string, busy time.Duration, synchronous string) string {
	v := url.Values{}
	v.Add("_pragma", "busy_timeout("+strconv.FormatInt(busy.Milliseconds(), 10)+")")
	v.Add("_pragma", "journal_mode(WAL)")
	v.Add("_pragma", "synchronous("+synchronous+")")
	v.Add("_txlock", "immediate")
	return "file:" + path + "?" + v.Encode()
}

// Classify maps SQLite errors to the store's sentinels, keeping the cause.
func Classify(err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %w", ErrNotDatabase, err)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %w", ErrLocked, err)
	}
	return err
}

// Prepare sets the per-connection pragmas on conn, checks that the file is
// in WAL mode and migrates the schema to the newest version.
func Prepare(ctx context.Context, conn *sql.Conn, prefix string, busy time.Duration, synchronous string) (version int, err error) {
	for _, p := range []string{
		"PRAGMA busy_timeout = " + strconv.FormatInt(busy.Milliseconds(), 10),
		"PRAGMA synchronous = " + synchronous,
	} {
		if _, err := conn.ExecContext(ctx, p); err != nil {
			return 0, Classify(err)
		}
	}
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return 0, Classify(err)
	}
	if !strings.EqualFold(mode, "wal") {
		return 0, fmt.Errorf("journal_mode is %q after asking for WAL (in-memory or read-only database?)", mode)
	}
	return migrate(ctx, conn, prefix)
}

// SchemaVersion is the schema version this code migrates to.
func SchemaVersion() int { return len(migrations()) }

type migration struct {
	version int
	sql     string
}

func migrations() []migration {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		panic(err) // the pattern is a constant
	}
	sort.Strings(names)
	out := make([]migration, 0, len(names))
	for i, n := range names {
		b, err := migrationFiles.ReadFile(n)
		if err != nil {
			panic(err) // embedded
		}
		out = append(out, migration{version: i + 1, sql: string(b)})
	}
	return out
}

func migrate(ctx context.Context, conn *sql.Conn, prefix string) (int, error) {
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return 0, Classify(err)
	}
	version, err := migrateTx(ctx, conn, prefix)
	if err != nil {
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return 0, err
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return 0, Classify(err)
	}
	return version, nil
}

// editSchemaMarker starts a migration that edits sqlite_schema in place.
const editSchemaMarker = "-- durabus:edit-schema"

func execMigration(ctx context.Context, conn *sql.Conn, query string) error {
	_, err := conn.ExecContext(ctx, query)
	return err
}

// editSchema runs a migration that changes what the file format does not
// hold (constraints) by editing sqlite_schema, as SQLite documents: with
// writable_schema on, then with the schema version bumped so that every
// connection reloads the schema, and the result parsed again before the
// transaction commits.
func editSchema(ctx context.Context, conn *sql.Conn, query string) error {
	var version int64
	if err := conn.QueryRowContext(ctx, "PRAGMA schema_version").Scan(&version); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, "PRAGMA writable_schema = ON"); err != nil {
		return err
	}
	_, err := conn.ExecContext(ctx, query)
	if err == nil {
		_, err = conn.ExecContext(ctx, "PRAGMA schema_version = "+strconv.FormatInt(version+1, 10))
	}
	if _, offErr := conn.ExecContext(ctx, "PRAGMA writable_schema = OFF"); err == nil {
		err = offErr
	}
	if err != nil {
		return err
	}
	// A schema that no longer parses fails here, and the transaction rolls
	// back with the edit.
	var n int
	return conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'").Scan(&n)
}

func migrateTx(ctx context.Context, conn *sql.Conn, prefix string) (int, error) {
	table := prefix + "schema"
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+table+" (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)"); err != nil {
		return 0, Classify(err)
	}
	var current int
	if err := conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+table).Scan(&current); err != nil {
		return 0, Classify(err)
	}
	all := migrations()
	if current > len(all) {
		return 0, fmt.Errorf("%w: file has version %d, this code knows %d", ErrTooNew, current, len(all))
	}
	for _, m := range all[current:] {
		run := execMigration
		if strings.HasPrefix(m.sql, editSchemaMarker) {
			run = editSchema
		}
		if err := run(ctx, conn, strings.ReplaceAll(m.sql, "{p}", prefix)); err != nil {
			return 0, fmt.Errorf("migrate to version %d: %w", m.version, Classify(err))
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO "+table+" (version, applied_at) VALUES (?, ?)", m.version, time.Now().UnixMilli()); err != nil {
			return 0, Classify(err)
		}
	}
	return len(all), nil
}
