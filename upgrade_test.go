package durabus_test

import (
	"os"
	"path/filepath"
	"testing"

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
	ps := newPubSub(t)
	config := func(name string) durabus.Config {
		cfg := groupConfig(t, ps, name)
		cfg.Path = filepath.Join(dir, name+".db")
		return cfg
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
