package durabus_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
)

// testdata/schema-v3 holds the files of a publisher and its consumer group
// as durabus wrote them at schema version 3: one event COMPLETED, and three
// published while the group was away, PENDING with a delivery row each.
// Opened by this version, they are migrated and the three are delivered,
// once each, while the completed one is not run again.
func TestOpen_UpgradesSchemaV3(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, name := range []string{"v3-publisher", "v3-consumer"} {
		b, err := os.ReadFile(filepath.Join("testdata", "schema-v3", name+".db"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".db"), b, 0o600))
	}
	clock := fixtureClock(t, filepath.Join(dir, "v3-publisher.db"), filepath.Join(dir, "v3-consumer.db"))
	ps := newPubSub(t)
	config := func(name string) durabus.Config {
		cfg := groupConfig(t, ps, name)
		cfg.Path = filepath.Join(dir, name+".db")
		return durabus.WithClock(cfg, clock)
	}
	pub := openNode(t, config("v3-publisher"))
	con := openNode(t, config("v3-consumer"))
	handled := newCalls()
	require.NoError(t, durabus.Handle(con.bus, recordUsers(handled)))

	rows, err := outboxRows(pub.db, "1 = 1")
	require.NoError(t, err)
	require.Len(t, rows, 4)
	var ids []durabus.EventID
	for _, r := range rows {
		ids = append(ids, durabus.EventID(r.EventID))
	}
	waitAllOutbox(t, pub.db, ids, "COMPLETED")
	require.Len(t, handled.keys(), 3, "the three PENDING events, not the COMPLETED one")
	for _, k := range handled.keys() {
		require.Equal(t, []int{1}, handled.attemptsOf(k), "event %s", k)
	}
	require.Equal(t, []int{1, 2, 3, 4, 5}, schemaVersions(t, pub.db), "migrated from version 3")
	checkStateConstraints(t, pub.db)
	checkStateConstraints(t, con.db)
}

// fixtureClock is a clock that runs at the wall clock's pace from an hour
// after the newest time written in the files at paths: the files are
// reopened as if an hour after they were written, when every due time in
// them has passed. Retention and GroupTTL count from the files' own
// timestamps, so on the real clock the fixtures would age with the
// calendar: past GroupTTL their group is forgotten, past Retention their
// COMPLETED row is deleted.
func fixtureClock(t *testing.T, paths ...string) func() time.Time {
	t.Helper()
	var newest int64
	for _, path := range paths {
		db := inspect(t, path)
		for _, q := range []string{
			"SELECT coalesce(max(updated_at), 0) FROM durabus_outbox",
			"SELECT coalesce(max(updated_at), 0) FROM durabus_inbox",
			"SELECT coalesce(max(last_seen), 0) FROM durabus_groups",
		} {
			var ms int64
			require.NoError(t, db.QueryRow(q).Scan(&ms), "%s: %s", path, q)
			newest = max(newest, ms)
		}
	}
	require.Positive(t, newest, "the fixtures hold no timestamp")
	base, start := time.UnixMilli(newest).Add(time.Hour), time.Now()
	return func() time.Time { return base.Add(time.Since(start)) }
}
