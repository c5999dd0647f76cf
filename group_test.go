package durabus_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

// Consumer groups (DESIGN.md section 2, promise P3): every bus of a test
// shares one mempubsub (one "Redis"); each bus has its own SQLite file.

const (
	groupHello   = 50 * time.Millisecond
	groupPending = 100 * time.Millisecond
)

// groupConfig is a fast config for a bus named name on its own file.
func groupConfig(t *testing.T, ps durabus.PubSub, name string) durabus.Config {
	cfg := newConfig(t, ps, name)
	cfg.HelloInterval = groupHello
	cfg.PendingDelay = groupPending
	cfg.PollInterval = 20 * time.Millisecond
	cfg.RetryPolicy = durabus.ExponentialBackoff{Base: 10 * time.Millisecond, Cap: 100 * time.Millisecond}
	cfg.Synchronous = durabus.SyncNormal // these tests do not cut the power
	return cfg
}

// node is an open bus with a separate connection pool on its file.
type node struct {
	bus *durabus.Bus[durabus.Event, durabus.Event]
	cfg durabus.Config
	db  *sql.DB
}

func openNode(t *testing.T, cfg durabus.Config) *node {
	t.Helper()
	return &node{bus: openBus[durabus.Event, durabus.Event](t, cfg), cfg: cfg, db: inspect(t, cfg.Path)}
}

// reopen opens a new bus on n's file (after n.bus was closed).
func (n *node) reopen(t *testing.T) *node {
	t.Helper()
	return &node{bus: openBus[durabus.Event, durabus.Event](t, n.cfg), cfg: n.cfg, db: n.db}
}

func groupsOf(t *testing.T, bus *durabus.Bus[durabus.Event, durabus.Event]) (durabus.Stats, map[string]durabus.GroupStats) {
	t.Helper()
	s, err := bus.Stats(t.Context())
	require.NoError(t, err)
	m := map[string]durabus.GroupStats{}
	for _, g := range s.Groups {
		m[g.Name] = g
	}
	return s, m
}

// waitOnline waits until bus heard a recent hello from every group.
// replayGroups starts group-a, handling user.created and order.placed, and
// group-b, handling user.created only, and waits until p heard both.
func replayGroups(t *testing.T, ps durabus.PubSub, p *node) (aRuns, bRuns *runs) {
	t.Helper()
	a := openNode(t, groupConfig(t, ps, "group-a"))
	b := openNode(t, groupConfig(t, ps, "group-b"))
	aRuns, bRuns = newRuns(), newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	require.NoError(t, durabus.Handle(a.bus, recordRuns[orderPlaced](aRuns)))
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](bRuns)))
	waitOnline(t, p.bus, "group-a", "group-b")
	eventually(t, func() error {
		_, g := groupsOf(t, p.bus)
		if len(g["group-a"].Events) != 2 {
			return fmt.Errorf("group-a announced %v", g["group-a"].Events)
		}
		return nil
	})
	return aRuns, bRuns
}

func waitOnline(t *testing.T, bus *durabus.Bus[durabus.Event, durabus.Event], groups ...string) {
	t.Helper()
	eventually(t, func() error {
		s, err := bus.Stats(t.Context())
		if err != nil {
			return err
		}
		for _, name := range groups {
			found := false
			for _, g := range s.Groups {
				if g.Name == name {
					found = g.Online
				}
			}
			if !found {
				return fmt.Errorf("group %q not online (groups: %+v)", name, s.Groups)
			}
		}
		return nil
	})
}

// waitOffline waits until bus considers group offline.
func waitOffline(t *testing.T, bus *durabus.Bus[durabus.Event, durabus.Event], group string) {
	t.Helper()
	eventually(t, func() error {
		s, err := bus.Stats(t.Context())
		if err != nil {
			return err
		}
		for _, g := range s.Groups {
			if g.Name == group && g.Online {
				return fmt.Errorf("group %q still online (last seen %v)", group, g.LastSeen)
			}
		}
		return nil
	})
}

type deliveryRow struct {
	EventID, Group, State string
	Sends                 int
	Replay, Undelivered   bool
	LastError             string
}

// deliveries returns the delivery rows of a publisher's file, by event ID
// then group.
// An event that has no delivery rows yet keeps its expected groups on the
// outbox row; they count as deliveries in the row's state.
func deliveries(db *sql.DB, where string, args ...any) ([]deliveryRow, error) {
	rows, err := db.Query(`SELECT o.event_id, d.group_name, d.state, d.sends, d.replay, d.undelivered, d.last_error
FROM (SELECT outbox_id, group_name, state, sends, replay, undelivered, COALESCE(last_error, '') AS last_error FROM durabus_deliveries
UNION ALL
SELECT e.id, j.value, CASE e.state WHEN 'COMPLETED' THEN 'COMPLETED' WHEN 'DEAD' THEN 'DEAD' ELSE 'PENDING' END, 0, 0, 0, ''
FROM durabus_outbox e, json_each(e.expected) j WHERE e.expected IS NOT NULL) d
JOIN durabus_outbox o ON o.id = d.outbox_id WHERE `+where+` ORDER BY o.id, d.group_name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []deliveryRow
	for rows.Next() {
		var d deliveryRow
		if err := rows.Scan(&d.EventID, &d.Group, &d.State, &d.Sends, &d.Replay, &d.Undelivered, &d.LastError); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// groupDeliveries returns group's delivery rows, failing the test on error.
func groupDeliveries(t *testing.T, db *sql.DB, group string) []deliveryRow {
	t.Helper()
	ds, err := deliveries(db, "d.group_name = ?", group)
	require.NoError(t, err)
	return ds
}

// waitDeliveries waits until group has exactly n delivery rows, all in state.
func waitDeliveries(t *testing.T, db *sql.DB, group string, n int, state string) {
	t.Helper()
	eventually(t, func() error {
		ds, err := deliveries(db, "d.group_name = ?", group)
		if err != nil {
			return err
		}
		if len(ds) != n {
			return fmt.Errorf("group %q has %d deliveries, want %d", group, len(ds), n)
		}
		for _, d := range ds {
			if d.State != state {
				return fmt.Errorf("delivery of %s to %q is %s (sends %d, %q), want %s", d.EventID, group, d.State, d.Sends, d.LastError, state)
			}
		}
		return nil
	})
}

// waitAllOutbox waits until every outbox row of ids is in state.
func waitAllOutbox(t *testing.T, db *sql.DB, ids []durabus.EventID, state string) {
	t.Helper()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[string(id)] = true
	}
	eventually(t, func() error {
		rows, err := outboxRows(db, "1 = 1")
		if err != nil {
			return err
		}
		found := 0
		for _, r := range rows {
			if !want[r.EventID] {
				continue
			}
			found++
			if r.State != state {
				return fmt.Errorf("outbox row of %s is %s (last_error %q), want %s", r.EventID, r.State, r.LastError, state)
			}
		}
		if found != len(want) {
			return fmt.Errorf("%d of %d outbox rows found", found, len(want))
		}
		return nil
	})
}

// publishUsers publishes n userCreated events, concurrently (the writer
// commits them in groups), and returns their IDs.
func publishUsers(t *testing.T, bus *durabus.Bus[durabus.Event, durabus.Event], prefix string, n int) []durabus.EventID {
	t.Helper()
	ids := make([]durabus.EventID, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			ids[i], errs[i] = bus.Publish(t.Context(), userCreated{ID: fmt.Sprintf("%s-%d", prefix, i)})
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	return ids
}

// runs records handler runs by event ID, with their replay flag.
type runs struct {
	mu     sync.Mutex
	replay map[string][]bool
}

func newRuns() *runs { return &runs{replay: map[string][]bool{}} }

func (r *runs) add(id durabus.EventID, replay bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replay[string(id)] = append(r.replay[string(id)], replay)
}

func (r *runs) of(id durabus.EventID) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.replay[string(id)]...)
}

func (r *runs) count(id durabus.EventID) int { return len(r.of(id)) }

func (r *runs) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, v := range r.replay {
		n += len(v)
	}
	return n
}

func recordRuns[E durabus.Event](r *runs) func(context.Context, durabus.Envelope[E]) error {
	return func(_ context.Context, env durabus.Envelope[E]) error {
		r.add(env.EventID, env.Replay)
		return nil
	}
}

// waitRuns waits until r recorded total runs.
func waitRuns(t *testing.T, r *runs, total int) {
	t.Helper()
	eventually(t, func() error {
		if n := r.total(); n != total {
			return fmt.Errorf("%d handler runs, want %d", n, total)
		}
		return nil
	})
}

// ghostGroup is a fake consumer group: it says hello on durabus:hello like a
// bus would, and listens on its group channel, but never stores nor acks.
type ghostGroup struct {
	mu      sync.Mutex
	resends map[string]int // by event ID, messages seen on the group channel
}

func (g *ghostGroup) resendsOf(id durabus.EventID) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.resends[string(id)]
}

func startGhost(t *testing.T, ps *mempubsub.PubSub, group string, events ...string) *ghostGroup {
	t.Helper()
	g := &ghostGroup{resends: map[string]int{}}
	unsub, err := ps.Subscribe(t.Context(), "durabus:group:"+group, func(_ context.Context, msg []byte) error {
		var env struct {
			EventID string `json:"eventId"`
		}
		if err := json.Unmarshal(msg, &env); err == nil {
			g.mu.Lock()
			g.resends[env.EventID]++
			g.mu.Unlock()
		}
		return nil
	})
	require.NoError(t, err)
	quoted := make([]string, len(events))
	for i, e := range events {
		quoted[i] = fmt.Sprintf("%q", e)
	}
	hello := fmt.Appendf(nil, `{"v":1,"type":"hello","group":%q,"events":[%s]}`, group, strings.Join(quoted, ","))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(groupHello)
		defer tick.Stop()
		for {
			_ = ps.Publish(ctx, "durabus:hello", hello)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { // before the PubSub closes: registered after it
		cancel()
		<-done
		assert.NoError(t, unsub())
	})
	return g
}

// claimPubSub is a mempubsub with an in-memory Claimer, as SET NX PX does it.
type claimPubSub struct {
	*mempubsub.PubSub
	mu     sync.Mutex
	claims map[string]claimHeld
	calls  atomic.Int64
}

type claimHeld struct {
	owner  string
	expiry time.Time
}

func (c *claimPubSub) Claim(_ context.Context, key, owner string, ttl time.Duration) (bool, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if h, ok := c.claims[key]; ok && now.Before(h.expiry) {
		return h.owner == owner, nil
	}
	c.claims[key] = claimHeld{owner: owner, expiry: now.Add(ttl)}
	return true, nil
}

var _ durabus.Claimer = (*claimPubSub)(nil)

func newClaimPubSub(t *testing.T) *claimPubSub {
	return &claimPubSub{PubSub: newPubSub(t), claims: map[string]claimHeld{}}
}

// lossyAcks is a replica's view of a claimPubSub that loses the acks it
// sends while drop is set.
type lossyAcks struct {
	*claimPubSub
	drop *atomic.Bool
}

func (l lossyAcks) Publish(ctx context.Context, channel string, msg []byte) error {
	if l.drop.Load() && strings.HasPrefix(channel, "durabus:ack:") {
		return nil
	}
	return l.claimPubSub.Publish(ctx, channel, msg)
}

func (l lossyAcks) PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error {
	for i := range msgs {
		if err := l.Publish(ctx, channels[i], msgs[i]); err != nil {
			return err
		}
	}
	return nil
}

// offsetClock is the real clock plus an offset that tests move forward.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// consistently checks cond every 5 ms for d and fails at its first error:
// an invariant that must hold for a while, d computed from the config.
func consistently(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			return
		}
		<-tick.C
	}
}

// ---- tests ----

func TestGroups_EveryGroupGetsEveryEvent(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	p := openNode(t, groupConfig(t, ps, "publisher"))
	a := openNode(t, groupConfig(t, ps, "group-a"))
	bCfg := groupConfig(t, ps, "group-b")
	bCfg.Concurrency = 32
	b := openNode(t, bCfg)

	aRuns, bRuns := newRuns(), newRuns()
	release := make(chan struct{})
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	require.NoError(t, durabus.Handle(b.bus, func(ctx context.Context, env durabus.Envelope[userCreated]) error {
		bRuns.add(env.EventID, env.Replay)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	waitOnline(t, p.bus, "group-a", "group-b")

	const n = 20
	ids := publishUsers(t, p.bus, "u", n)

	// A finished every event; B stored each and runs it, blocked.
	waitDeliveries(t, p.db, "group-a", n, "COMPLETED")
	waitDeliveries(t, p.db, "group-b", n, "RECEIVED")
	waitRuns(t, bRuns, n)
	waitRuns(t, aRuns, n)
	// Not COMPLETED while a group is still at work: the aggregate waits for B.
	for _, id := range ids {
		r, err := outboxByID(p.db, id)
		require.NoError(t, err)
		require.Equal(t, "PROCESSING", r.State, "event %s: group-a completed, group-b still runs it", id)
	}
	s, groups := groupsOf(t, p.bus)
	require.Equal(t, durabus.StateCounts{Processing: n}, s.Outbox)
	require.Equal(t, durabus.StateCounts{Completed: n}, groups["group-a"].Deliveries)
	require.Equal(t, durabus.StateCounts{Processing: n}, groups["group-b"].Deliveries)
	require.Equal(t, []string{"user.created"}, groups["group-a"].Events)

	close(release)
	waitAllOutbox(t, p.db, ids, "COMPLETED")
	waitDeliveries(t, p.db, "group-b", n, "COMPLETED")
	closeBus(t, a.bus)
	closeBus(t, b.bus)
	for _, id := range ids {
		require.Equal(t, []bool{false}, aRuns.of(id), "group-a ran %s once", id)
		require.Equal(t, []bool{false}, bRuns.of(id), "group-b ran %s once", id)
	}
	require.Equal(t, n, aRuns.total())
	require.Equal(t, n, bRuns.total())
}

func TestGroups_OfflineGroupCatchesUp(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.MaxRetries = 2
	pCfg.PendingDelay = 200 * time.Millisecond
	p := openNode(t, pCfg)
	a := openNode(t, groupConfig(t, ps, "group-a"))
	b := openNode(t, groupConfig(t, ps, "group-b"))
	aRuns, bRuns := newRuns(), newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](bRuns)))
	// The ghost never acks: once its delivery of an event published after
	// B's went DEAD, the relay had the time to spend B's budget MaxRetries
	// times over, had it re-sent to an offline group.
	ghost := startGhost(t, ps, "ghost", "order.placed")
	waitOnline(t, p.bus, "group-a", "group-b", "ghost")

	closeBus(t, b.bus)
	waitOffline(t, p.bus, "group-b")

	const n = 100
	ids := publishUsers(t, p.bus, "u", n)
	signal := publish(t, p.bus, orderPlaced{OrderID: "o1"})

	waitOutbox(t, p.db, signal, "DEAD")
	require.GreaterOrEqual(t, ghost.resendsOf(signal), pCfg.MaxRetries, "the ghost got at least MaxRetries re-sends")
	waitDeliveries(t, p.db, "group-a", n, "COMPLETED")
	waitRuns(t, aRuns, n)

	// B is offline: its deliveries wait, with no send spent and not DEAD.
	bDel := groupDeliveries(t, p.db, "group-b")
	require.Len(t, bDel, n)
	for _, d := range bDel {
		require.Equal(t, "PENDING", d.State, "delivery of %s to the offline group", d.EventID)
		require.Zero(t, d.Sends, "no re-send of %s to an offline group", d.EventID)
	}
	s, groups := groupsOf(t, p.bus)
	require.False(t, groups["group-b"].Online)
	require.Equal(t, durabus.StateCounts{Pending: n}, groups["group-b"].Deliveries)
	require.True(t, groups["group-a"].Online)
	require.Equal(t, n, s.Outbox.Processing, "waiting for group-b, not DEAD")
	require.Zero(t, bRuns.total())

	// B comes back on its file and catches up on its channel.
	b = b.reopen(t)
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](bRuns)))
	waitAllOutbox(t, p.db, ids, "COMPLETED")
	waitDeliveries(t, p.db, "group-b", n, "COMPLETED")
	closeBus(t, b.bus)
	closeBus(t, a.bus)
	require.Equal(t, n, bRuns.total())
	for _, id := range ids {
		require.Equal(t, []bool{false}, bRuns.of(id), "group-b ran %s once, as a normal delivery", id)
		require.Equal(t, 1, aRuns.count(id))
	}
	_, groups = groupsOf(t, p.bus)
	require.Equal(t, durabus.StateCounts{Completed: n}, groups["group-b"].Deliveries)
}

func TestGroups_NewGroupStartsFromNow(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	p := openNode(t, groupConfig(t, ps, "publisher"))
	a := openNode(t, groupConfig(t, ps, "group-a"))
	aRuns, cRuns := newRuns(), newRuns()
	release := make(chan struct{})
	// A holds the old events, so that P is still working on them when C
	// appears.
	require.NoError(t, durabus.Handle(a.bus, func(ctx context.Context, env durabus.Envelope[userCreated]) error {
		aRuns.add(env.EventID, env.Replay)
		if strings.HasPrefix(env.Payload.ID, "old") {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}))
	waitOnline(t, p.bus, "group-a")

	const n = 5
	old := publishUsers(t, p.bus, "old", n)
	waitDeliveries(t, p.db, "group-a", n, "RECEIVED")

	c := openNode(t, groupConfig(t, ps, "group-c"))
	require.NoError(t, durabus.Handle(c.bus, recordRuns[userCreated](cRuns)))
	waitOnline(t, p.bus, "group-c")
	require.Empty(t, groupDeliveries(t, p.db, "group-c"), "events published before group-c said hello are not expected from it")

	fresh := publishUsers(t, p.bus, "new", n)
	waitAllOutbox(t, p.db, fresh, "COMPLETED")
	waitDeliveries(t, p.db, "group-c", n, "COMPLETED")
	close(release)
	waitAllOutbox(t, p.db, old, "COMPLETED")
	closeBus(t, c.bus)
	closeBus(t, a.bus)

	for _, id := range old {
		require.Zero(t, cRuns.count(id), "group-c got the old event %s", id)
		ds, err := deliveries(p.db, "o.event_id = ?", string(id))
		require.NoError(t, err)
		require.Len(t, ds, 1)
		require.Equal(t, "group-a", ds[0].Group)
	}
	for _, id := range fresh {
		require.Equal(t, 1, cRuns.count(id), "group-c ran %s once", id)
	}
	require.Equal(t, n, cRuns.total())
	require.Equal(t, 2*n, aRuns.total())
}

func TestGroups_ForgottenAfterGroupTTL(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.GroupTTL = 300 * time.Millisecond
	p := openNode(t, pCfg)
	a := openNode(t, groupConfig(t, ps, "group-a"))
	b := openNode(t, groupConfig(t, ps, "group-b"))
	aRuns, bRuns := newRuns(), newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	// B keeps what it receives for later: its deliveries stay RECEIVED.
	require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
		bRuns.add(env.EventID, env.Replay)
		return durabus.RetryAfter(errors.New("not now"), time.Hour)
	}))
	waitOnline(t, p.bus, "group-a", "group-b")

	const n = 5
	received := publishUsers(t, p.bus, "r", n)
	waitDeliveries(t, p.db, "group-b", n, "RECEIVED")
	closeBus(t, b.bus)
	// Published while B is closed but not forgotten yet (they get a delivery
	// for B then, see tracked) or after (they do not).
	pending := publishUsers(t, p.bus, "p", n)
	ids := append(received, pending...)
	waitDeliveries(t, p.db, "group-a", 2*n, "COMPLETED")

	var expectDropped int64
	require.NoError(t, p.db.QueryRow(`SELECT COUNT(*) FROM durabus_outbox WHERE tracked = 2`).Scan(&expectDropped))
	require.GreaterOrEqual(t, expectDropped, int64(n))

	eventually(t, func() error {
		s, err := p.bus.Stats(t.Context())
		if err != nil {
			return err
		}
		for _, g := range s.Groups {
			if g.Name == "group-b" {
				return fmt.Errorf("group-b still known (last seen %v)", g.LastSeen)
			}
		}
		return nil
	})
	waitAllOutbox(t, p.db, ids, "COMPLETED")
	s, groups := groupsOf(t, p.bus)
	require.Equal(t, expectDropped, s.DroppedDeliveries)
	require.Contains(t, groups, "group-a", "group-a says hello: it is remembered")
	require.Empty(t, groupDeliveries(t, p.db, "group-b"))
	var known int
	require.NoError(t, p.db.QueryRow(`SELECT COUNT(*) FROM durabus_groups WHERE group_name = 'group-b'`).Scan(&known))
	require.Zero(t, known, "the forgotten group is deleted from the groups table")
	require.Equal(t, durabus.StateCounts{Completed: 2 * n}, s.Outbox)
	closeBus(t, a.bus)
	require.Equal(t, 2*n, aRuns.total())
	require.Equal(t, n, bRuns.total())
}

// An event whose only expected group was forgotten must not stay
// PENDING/PROCESSING forever (out of reach of the relay, of RecallOutgoing
// and of the retention).
func TestGroups_ForgettingTheOnlyGroupDoesNotStrandEvents(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.GroupTTL = 300 * time.Millisecond
	pCfg.MaxRetries = 1
	p := openNode(t, pCfg)
	b := openNode(t, groupConfig(t, ps, "group-b"))
	require.NoError(t, durabus.Handle(b.bus, func(context.Context, durabus.Envelope[userCreated]) error {
		return durabus.RetryAfter(errors.New("not now"), time.Hour)
	}))
	waitOnline(t, p.bus, "group-b")
	id := publish(t, p.bus, userCreated{ID: "u1"})
	waitDeliveries(t, p.db, "group-b", 1, "RECEIVED")
	closeBus(t, b.bus)
	eventually(t, func() error {
		s, err := p.bus.Stats(t.Context())
		if err != nil {
			return err
		}
		if s.DroppedDeliveries != 1 || len(s.Groups) != 0 {
			return fmt.Errorf("dropped %d, groups %+v", s.DroppedDeliveries, s.Groups)
		}
		return nil
	})
	// With no group left to wait for, the row must not wait for nothing
	// forever: it is DEAD "undelivered", in the same transaction.
	r, err := outboxByID(p.db, id)
	require.NoError(t, err)
	require.Equal(t, "DEAD", r.State, "outbox row with no group left (sends %d, due_at %d)", r.Sends, r.DueAt)
	require.Contains(t, r.LastError, "forgotten")
	require.Empty(t, r.DeadBy, "undelivered, not dead-lettered by a group: RecallDead applies")
}

// README: a DEAD "undelivered" row can be sent again with RecallDead. That
// includes a row DEAD because every group expected to handle it was
// forgotten: once the group is back, RecallDead must deliver it.
func TestGroups_RecallDeadAfterGroupForgotten(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.GroupTTL = 300 * time.Millisecond
	p := openNode(t, pCfg)
	b := openNode(t, groupConfig(t, ps, "group-b"))
	bRuns := newRuns()
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](bRuns)))
	waitOnline(t, p.bus, "group-b")
	closeBus(t, b.bus)
	id := publish(t, p.bus, userCreated{ID: "u1"}) // while group-b is remembered
	require.Len(t, groupDeliveries(t, p.db, "group-b"), 1, "published within GroupTTL of group-b's last hello")
	out := waitOutbox(t, p.db, id, "DEAD")
	require.Contains(t, out.LastError, "forgotten")

	b = b.reopen(t)
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](bRuns)))
	waitOnline(t, p.bus, "group-b")
	n, err := p.bus.RecallDead(t.Context())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	// A few PendingDelays are plenty for one event to a group that is online.
	eventuallyWithin(t, 2*time.Second, func() error {
		r, err := outboxByID(p.db, id)
		if err != nil {
			return err
		}
		if r.State != "COMPLETED" || bRuns.count(id) != 1 {
			return fmt.Errorf("after RecallDead the row is %s (%q, sends %d) and group-b ran it %d times", r.State, r.LastError, r.Sends, bRuns.count(id))
		}
		return nil
	})
}

func TestGroups_DeadInOneGroupDoesNotResendToOthers(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	p := openNode(t, groupConfig(t, ps, "publisher"))
	a := openNode(t, groupConfig(t, ps, "group-a"))
	bCfg := groupConfig(t, ps, "group-b")
	bCfg.MaxRetries = 1
	b := openNode(t, bCfg)
	aRuns, bRuns := newRuns(), newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	require.NoError(t, durabus.Handle(b.bus, func(_ context.Context, env durabus.Envelope[userCreated]) error {
		bRuns.add(env.EventID, env.Replay)
		return errors.New("group-b is broken")
	}))
	waitOnline(t, p.bus, "group-a", "group-b")

	const n = 5
	ids := publishUsers(t, p.bus, "u", n)
	for _, id := range ids {
		out := waitOutbox(t, p.db, id, "DEAD")
		require.Equal(t, "group-b", out.DeadBy)
		require.Contains(t, out.LastError, "group-b is broken")
		in := waitInbox(t, b.db, id, "user.created", "DEAD")
		require.Equal(t, 2, in.Attempts)
		in = waitInbox(t, a.db, id, "user.created", "COMPLETED")
		require.Equal(t, 1, in.Attempts)
	}
	waitDeliveries(t, p.db, "group-a", n, "COMPLETED")
	waitDeliveries(t, p.db, "group-b", n, "DEAD")
	closeBus(t, a.bus)
	closeBus(t, b.bus)
	for _, id := range ids {
		require.Equal(t, []bool{false}, aRuns.of(id), "group-a ran %s once, never again because group-b failed", id)
		require.Equal(t, 2, bRuns.count(id))
	}
}

func TestBus_Replay(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	clock := &offsetClock{}
	// No re-send while acks travel: a re-send's late ack may cancel a later
	// replay (see TestBus_Replay_StaleAckDoesNotCancelIt).
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.PendingDelay = time.Second
	p := openNode(t, durabus.WithClock(pCfg, clock.Now))
	aRuns, bRuns := replayGroups(t, ps, p)

	u1 := publish(t, p.bus, userCreated{ID: "u1"})
	u2 := publish(t, p.bus, userCreated{ID: "u2"})
	o1 := publish(t, p.bus, orderPlaced{OrderID: "o1"})
	clock.Advance(time.Hour)
	split := clock.Now()
	u3 := publish(t, p.bus, userCreated{ID: "u3"})
	o2 := publish(t, p.bus, orderPlaced{OrderID: "o2"})
	all := []durabus.EventID{u1, u2, o1, u3, o2}
	waitAllOutbox(t, p.db, all, "COMPLETED")
	waitRuns(t, aRuns, 5)
	waitRuns(t, bRuns, 3)

	// want is how many times each event ran in each group so far.
	wantA := map[durabus.EventID]int{u1: 1, u2: 1, o1: 1, u3: 1, o2: 1}
	wantB := map[durabus.EventID]int{u1: 1, u2: 1, u3: 1}
	replay := func(f durabus.ReplayFilter, n int, inA, inB []durabus.EventID) {
		t.Helper()
		got, err := p.bus.Replay(t.Context(), f)
		require.NoError(t, err)
		require.Equal(t, n, got, "Replay(%+v) count", f)
		for _, id := range inA {
			wantA[id]++
		}
		for _, id := range inB {
			wantB[id]++
		}
		totalA, totalB := 0, 0
		for _, c := range wantA {
			totalA += c
		}
		for _, c := range wantB {
			totalB += c
		}
		waitRuns(t, aRuns, totalA)
		waitRuns(t, bRuns, totalB)
		waitAllOutbox(t, p.db, all, "COMPLETED")
		for id, c := range wantA {
			flags := aRuns.of(id)
			require.Len(t, flags, c, "group-a runs of %s after Replay(%+v)", id, f)
			require.False(t, flags[0])
			for _, r := range flags[1:] {
				require.True(t, r, "a replayed run of %s in group-a has Envelope.Replay", id)
			}
		}
		for id, c := range wantB {
			flags := bRuns.of(id)
			require.Len(t, flags, c, "group-b runs of %s after Replay(%+v)", id, f)
			require.False(t, flags[0])
			for _, r := range flags[1:] {
				require.True(t, r, "a replayed run of %s in group-b has Envelope.Replay", id)
			}
		}
	}

	replay(durabus.ReplayFilter{EventNames: []string{"order.placed"}}, 2, []durabus.EventID{o1, o2}, nil)
	replay(durabus.ReplayFilter{From: split}, 2, []durabus.EventID{u3, o2}, []durabus.EventID{u3})
	replay(durabus.ReplayFilter{To: split}, 3, []durabus.EventID{u1, u2, o1}, []durabus.EventID{u1, u2})
	before, err := deliveries(p.db, "d.group_name = 'group-a'")
	require.NoError(t, err)
	replay(durabus.ReplayFilter{Group: "group-b", EventNames: []string{"user.created"}}, 3, nil, []durabus.EventID{u1, u2, u3})
	after, err := deliveries(p.db, "d.group_name = 'group-a'")
	require.NoError(t, err)
	require.Equal(t, before, after, "a replay to group-b leaves group-a's deliveries alone")
	replay(durabus.ReplayFilter{}, 5, all, []durabus.EventID{u1, u2, u3})

	s, groups := groupsOf(t, p.bus)
	require.Equal(t, durabus.StateCounts{Completed: 5}, s.Outbox)
	require.Equal(t, durabus.StateCounts{Completed: 5}, groups["group-a"].Deliveries)
	require.Equal(t, durabus.StateCounts{Completed: 3}, groups["group-b"].Deliveries)
	for _, d := range append(groupDeliveries(t, p.db, "group-a"), groupDeliveries(t, p.db, "group-b")...) {
		require.False(t, d.Replay, "replay flag of %s/%s cleared on completion", d.EventID, d.Group)
	}
}

// A replay to one group re-delivers the events that group consumes; an
// event it does not handle must not get a delivery it can never ack (which
// would turn a COMPLETED event DEAD "undelivered").
func TestBus_Replay_GroupFilterSkipsEventsTheGroupDoesNotConsume(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.MaxRetries = 2
	p := openNode(t, pCfg)
	_, bRuns := replayGroups(t, ps, p)
	u1 := publish(t, p.bus, userCreated{ID: "u1"})
	o1 := publish(t, p.bus, orderPlaced{OrderID: "o1"})
	waitAllOutbox(t, p.db, []durabus.EventID{u1, o1}, "COMPLETED")

	n, err := p.bus.Replay(t.Context(), durabus.ReplayFilter{Group: "group-b"})
	require.NoError(t, err)
	ds, err := deliveries(p.db, "o.event_id = ? AND d.group_name = 'group-b'", string(o1))
	require.NoError(t, err)
	assert.Empty(t, ds, "order.placed got a delivery to group-b, which does not consume it")
	assert.Equal(t, 1, n, "group-b consumes one of the two events")
	waitRuns(t, bRuns, 2)
	waitOutbox(t, p.db, u1, "COMPLETED")
	// o1 was not replayed: it stays COMPLETED for longer than a delivery
	// takes to go DEAD undelivered (PendingDelay, then MaxRetries re-sends).
	consistently(t, time.Duration(pCfg.MaxRetries+3)*pCfg.PendingDelay, func() error {
		r, err := outboxByID(p.db, o1)
		if err != nil {
			return err
		}
		if r.State != "COMPLETED" {
			return fmt.Errorf("order.placed, not consumed by group-b, is %s after Replay(Group: group-b): %s", r.State, r.LastError)
		}
		return nil
	})
}

// An ack a group sent before a Replay (answering a re-send or a status
// query) can arrive after it: it must not stand for the replay, which the
// group has not run yet.
func TestBus_Replay_StaleAckDoesNotCancelIt(t *testing.T) {
	t.Parallel()
	// One message at a time per subscription, in order: the publisher applies
	// the two ack batches below in the order they are sent.
	ps := mempubsub.New(mempubsub.WithMaxInFlight(1))
	t.Cleanup(func() { assert.NoError(t, ps.Close()) })
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.MaxRetries = 100 // the ghost's deliveries stay PENDING
	p := openNode(t, pCfg)
	a := openNode(t, groupConfig(t, ps, "group-a"))
	aRuns := newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	startGhost(t, ps, "ghost", "user.created")
	waitOnline(t, p.bus, "group-a", "ghost")

	u1 := publish(t, p.bus, userCreated{ID: "u1"})
	u2 := publish(t, p.bus, userCreated{ID: "u2"})
	waitDeliveries(t, p.db, "group-a", 2, "COMPLETED")
	waitRuns(t, aRuns, 2)
	closeBus(t, a.bus)
	waitOffline(t, p.bus, "group-a")

	n, err := p.bus.Replay(t.Context(), durabus.ReplayFilter{Group: "group-a"})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	// group-a's answer about u1, sent before the replay, arrives now; then
	// one from the ghost, to know the first was applied.
	stale := fmt.Appendf(nil, `{"v":1,"type":"ack","group":"group-a","acks":[{"id":%q,"status":"completed"}]}`, u1)
	marker := fmt.Appendf(nil, `{"v":1,"type":"ack","group":"ghost","acks":[{"id":%q,"status":"completed"}]}`, u1)
	require.NoError(t, ps.Publish(t.Context(), "durabus:ack:publisher", stale))
	require.NoError(t, ps.Publish(t.Context(), "durabus:ack:publisher", marker))
	eventually(t, func() error {
		ds, err := deliveries(p.db, "o.event_id = ? AND d.group_name = 'ghost'", string(u1))
		if err != nil || len(ds) != 1 || ds[0].State != "COMPLETED" {
			return fmt.Errorf("marker ack not applied yet: %+v %v", ds, err)
		}
		return nil
	})

	a = a.reopen(t)
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	waitDeliveries(t, p.db, "group-a", 2, "COMPLETED")
	eventually(t, func() error {
		if c := aRuns.count(u2); c != 2 {
			return fmt.Errorf("u2 ran %d times", c)
		}
		return nil
	})
	closeBus(t, a.bus)
	require.Equal(t, []bool{false, true}, aRuns.of(u2))
	require.Equal(t, []bool{false, true}, aRuns.of(u1), "u1 was replayed in the same pass as u2")
}

func TestGroups_Replicas(t *testing.T) {
	t.Parallel()
	const replicas, n = 3, 10

	// start opens a publisher and replicas of group "workers" (same Name,
	// own files; ps(i) is replica i's PubSub) on ps, publishes n events.
	start := func(t *testing.T, pub durabus.PubSub, ps func(i int) durabus.PubSub, claimTTL time.Duration) (*node, []*node, *runs, []durabus.EventID) {
		pCfg := groupConfig(t, pub, "publisher")
		pCfg.MaxRetries = 100 // lost acks make it re-send for a while
		// Fewer re-sends while acks travel (see TestBus_Replay_StaleAckDoesNotCancelIt);
		// still longer than the replicas' ClaimTTL (3 × their PendingDelay).
		pCfg.PendingDelay = time.Second
		p := openNode(t, pCfg)
		all := newRuns()
		var nodes []*node
		for i := range replicas {
			cfg := groupConfig(t, ps(i), "workers")
			cfg.ClaimTTL = claimTTL
			r := openNode(t, cfg)
			require.NoError(t, durabus.Handle(r.bus, recordRuns[userCreated](all)))
			nodes = append(nodes, r)
		}
		waitOnline(t, p.bus, "workers")
		return p, nodes, all, publishUsers(t, p.bus, "u", n)
	}
	stored := func(t *testing.T, r *node) int {
		var c int
		require.NoError(t, r.db.QueryRow(`SELECT COUNT(*) FROM durabus_inbox WHERE handler <> ''`).Scan(&c))
		return c
	}
	same := func(ps durabus.PubSub) func(int) durabus.PubSub { return func(int) durabus.PubSub { return ps } }

	t.Run("WithClaimerOneReplicaHandlesEachEvent", func(t *testing.T) {
		t.Parallel()
		ps := newClaimPubSub(t)
		// A claim that outlives the test: see WithClaimerLostAcks for what an
		// expired claim does.
		p, nodes, all, ids := start(t, ps, same(ps), time.Minute)
		waitAllOutbox(t, p.db, ids, "COMPLETED")
		waitRuns(t, all, n)
		sum := 0
		for _, r := range nodes {
			closeBus(t, r.bus)
			sum += stored(t, r)
		}
		require.Equal(t, n, sum, "each event stored by exactly one replica")
		require.Equal(t, n, all.total())
		for _, id := range ids {
			require.Equal(t, 1, all.count(id), "event %s handled once across the replicas", id)
		}
		require.GreaterOrEqual(t, ps.calls.Load(), int64(n*replicas), "every replica claimed every event")
	})

	t.Run("WithoutClaimerEveryReplicaHandlesEveryEvent", func(t *testing.T) {
		t.Parallel()
		// Documented behaviour (see Claimer): without a claim, replicas are
		// independent consumers of one group: each stores and handles every
		// event it hears, so each event runs once per replica.
		ps := newPubSub(t)
		p, nodes, all, ids := start(t, ps, same(ps), 0)
		waitAllOutbox(t, p.db, ids, "COMPLETED")
		waitRuns(t, all, n*replicas)
		for _, r := range nodes {
			closeBus(t, r.bus)
			require.Equal(t, n, stored(t, r), "a replica stored every event")
		}
		for _, id := range ids {
			require.Equal(t, replicas, all.count(id), "event %s handled once per replica", id)
		}
	})

	// The replica that stored an event keeps it while its claim holds: the
	// re-sends that lost acks cause (as when the publisher restarts) reach
	// every replica, and only the holder answers them. (After ClaimTTL a
	// re-send may run on another replica too: see Config.ClaimTTL.)
	t.Run("WithClaimerLostAcks", func(t *testing.T) {
		t.Parallel()
		ps := newClaimPubSub(t)
		var drop atomic.Bool
		drop.Store(true)
		p, nodes, all, ids := start(t, ps, func(int) durabus.PubSub { return lossyAcks{ps, &drop} }, time.Minute)
		ids = append(ids, publishUsers(t, p.bus, "v", 20)...)
		eventually(t, func() error {
			for _, id := range ids {
				if all.count(id) == 0 {
					return fmt.Errorf("event %s not handled yet", id)
				}
			}
			return nil
		})
		// Every replica heard re-sends of every event and claimed it again.
		eventually(t, func() error {
			if c, want := ps.calls.Load(), int64(3*replicas*len(ids)); c < want {
				return fmt.Errorf("%d claims, want %d", c, want)
			}
			return nil
		})
		drop.Store(false)
		waitAllOutbox(t, p.db, ids, "COMPLETED")
		for _, r := range nodes {
			closeBus(t, r.bus)
		}
		dup := 0
		for _, id := range ids {
			if all.count(id) != 1 {
				dup++
			}
		}
		assert.Zero(t, dup, "events handled by more than one replica (%d runs of %d events)", all.total(), len(ids))
	})

	// A replay to a replicated group is a re-delivery to the group: one
	// replica runs it, as for the first delivery.
	t.Run("WithClaimerReplayRunsOnOneReplica", func(t *testing.T) {
		t.Parallel()
		ps := newClaimPubSub(t)
		p, nodes, all, ids := start(t, ps, same(ps), time.Minute)
		waitAllOutbox(t, p.db, ids, "COMPLETED")
		waitRuns(t, all, n)
		got, err := p.bus.Replay(t.Context(), durabus.ReplayFilter{})
		require.NoError(t, err)
		require.Equal(t, n, got)
		eventually(t, func() error {
			if all.total() < 2*n {
				return fmt.Errorf("%d runs, want at least %d", all.total(), 2*n)
			}
			return nil
		})
		waitAllOutbox(t, p.db, ids, "COMPLETED")
		for _, r := range nodes {
			closeBus(t, r.bus)
		}
		dup := 0
		for _, id := range ids {
			if !assert.Equal(t, []bool{false, true}, all.of(id), "runs of %s across the replicas: once, then one replay", id) {
				dup++
				if dup > 2 {
					break
				}
			}
		}
	})
}

func TestGroups_UndeliveredToOneGroup(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.MaxRetries = 2
	pCfg.PendingDelay = 50 * time.Millisecond
	p := openNode(t, pCfg)
	a := openNode(t, groupConfig(t, ps, "group-a"))
	aRuns := newRuns()
	require.NoError(t, durabus.Handle(a.bus, recordRuns[userCreated](aRuns)))
	ghost := startGhost(t, ps, "ghost", "user.created")
	waitOnline(t, p.bus, "group-a", "ghost")

	const n = 3
	ids := publishUsers(t, p.bus, "u", n)
	for _, id := range ids {
		// DESIGN.md section 3: a group gave up on it (here: never acknowledged
		// it) and no group is still working: DEAD.
		out := waitOutbox(t, p.db, id, "DEAD")
		require.Contains(t, out.LastError, `undelivered: group "ghost"`)
		require.Empty(t, out.DeadBy, "no handler dead-lettered it: RecallDead may send it again")
		ds, err := deliveries(p.db, "o.event_id = ?", string(id))
		require.NoError(t, err)
		require.Len(t, ds, 2) // ordered by group name
		require.Equal(t, "ghost", ds[0].Group)
		require.Equal(t, "DEAD", ds[0].State)
		require.True(t, ds[0].Undelivered)
		require.Equal(t, pCfg.MaxRetries, ds[0].Sends)
		require.Equal(t, "group-a", ds[1].Group)
		require.Equal(t, "COMPLETED", ds[1].State)
		// A re-send spends budget only if the group said hello since the
		// previous one, so there may be more re-sends than MaxRetries.
		require.GreaterOrEqual(t, ghost.resendsOf(id), pCfg.MaxRetries, "MaxRetries re-sends on the ghost's channel")
	}
	s, groups := groupsOf(t, p.bus)
	require.Equal(t, durabus.StateCounts{Dead: n}, s.Outbox)
	require.Equal(t, durabus.StateCounts{Dead: n}, groups["ghost"].Deliveries)
	require.Equal(t, durabus.StateCounts{Completed: n}, groups["group-a"].Deliveries)

	// RecallDead sends them again to the group that missed them, with a
	// fresh budget; A, which completed them, keeps its delivery.
	before := map[durabus.EventID]int{}
	for _, id := range ids {
		before[id] = ghost.resendsOf(id)
	}
	got, err := p.bus.RecallDead(t.Context())
	require.NoError(t, err)
	require.Equal(t, n, got)
	for _, id := range ids {
		waitOutbox(t, p.db, id, "DEAD")
		require.GreaterOrEqual(t, ghost.resendsOf(id), before[id]+pCfg.MaxRetries)
	}
	waitDeliveries(t, p.db, "group-a", n, "COMPLETED")
	waitDeliveries(t, p.db, "ghost", n, "DEAD")
	closeBus(t, a.bus)
	for _, id := range ids {
		require.Equal(t, []bool{false}, aRuns.of(id), "group-a ran %s once", id)
	}
}

// A restarted publisher must not forget a group that is alive: its hellos
// are only written down once a minute, so the last_seen it loads may be
// older than a short GroupTTL.
func TestGroups_RestartedPublisherKeepsLiveGroups(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	// Hellos every 100 ms: the bug shows unless a hello happens to arrive
	// between the publisher's Open and its janitor's first pass.
	pCfg := groupConfig(t, ps, "publisher")
	pCfg.GroupTTL = 600 * time.Millisecond
	pCfg.HelloInterval = 100 * time.Millisecond
	p := openNode(t, pCfg)
	aCfg := groupConfig(t, ps, "group-a")
	aCfg.HelloInterval = pCfg.HelloInterval
	a := openNode(t, aCfg)
	require.NoError(t, durabus.Handle(a.bus, func(context.Context, durabus.Envelope[userCreated]) error {
		return durabus.RetryAfter(errors.New("later"), time.Hour)
	}))
	waitOnline(t, p.bus, "group-a")
	id := publish(t, p.bus, userCreated{ID: "u1"})
	waitDeliveries(t, p.db, "group-a", 1, "RECEIVED")
	// group-a keeps saying hello for longer than GroupTTL.
	heardSince := time.Now()
	eventually(t, func() error {
		_, g := groupsOf(t, p.bus)
		if !g["group-a"].Online || time.Since(heardSince) < pCfg.GroupTTL+pCfg.GroupTTL/2 {
			return errors.New("not yet")
		}
		return nil
	})
	closeBus(t, p.bus)
	p = p.reopen(t)
	// At once: group-a said hello less than a HelloInterval ago, so an event
	// published now is expected from it.
	next := publish(t, p.bus, userCreated{ID: "u2"})
	ds, err := deliveries(p.db, "o.event_id = ?", string(next))
	require.NoError(t, err)
	assert.Len(t, ds, 1, "an event published right after the restart has no delivery for the live group-a")
	waitOnline(t, p.bus, "group-a")
	// The janitor runs at open and then every 100 ms: let it run a few times.
	consistently(t, pCfg.GroupTTL, func() error {
		s, err := p.bus.Stats(t.Context())
		if err != nil {
			return err
		}
		if s.DroppedDeliveries != 0 {
			return fmt.Errorf("%d deliveries of a live group dropped", s.DroppedDeliveries)
		}
		return nil
	})
	ds = groupDeliveries(t, p.db, "group-a")
	require.NotEmpty(t, ds)
	require.Equal(t, string(id), ds[0].EventID)
	closeBus(t, a.bus)
}

// An event that its one expected group completes in time never gets a
// delivery row: the expected group is kept on the outbox row, and Stats
// still counts the delivery. One with two groups gets rows once the first
// group's ack does not finish it.
func TestGroups_DeliveryRowsOnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	ps := newPubSub(t)
	cfg := groupConfig(t, ps, "publisher")
	cfg.PendingDelay = time.Hour // no re-send: only acks move the rows
	p := openNode(t, cfg)
	b := openNode(t, groupConfig(t, ps, "group-b"))
	require.NoError(t, durabus.Handle(b.bus, recordRuns[userCreated](newRuns())))
	waitOnline(t, p.bus, "group-b")

	alone := publish(t, p.bus, userCreated{ID: "u1"})
	waitOutbox(t, p.db, alone, "COMPLETED")
	var rows int
	require.NoError(t, p.db.QueryRow(`SELECT COUNT(*) FROM durabus_deliveries`).Scan(&rows))
	require.Zero(t, rows, "an event its one group completed needs no delivery row")
	s, err := p.bus.Stats(t.Context())
	require.NoError(t, err)
	require.Len(t, s.Groups, 1)
	require.Equal(t, durabus.StateCounts{Completed: 1}, s.Groups[0].Deliveries)

	c := openNode(t, groupConfig(t, ps, "group-c"))
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	require.NoError(t, durabus.Handle(c.bus, func(ctx context.Context, _ durabus.Envelope[userCreated]) error {
		select { // group-c does not finish: the event waits for it
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}))
	waitOnline(t, p.bus, "group-b", "group-c")
	both := publish(t, p.bus, userCreated{ID: "u2"})
	waitDeliveries(t, p.db, "group-b", 2, "COMPLETED")
	ds, err := deliveries(p.db, "o.event_id = ? AND d.group_name = 'group-c'", string(both))
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.NotEqual(t, "COMPLETED", ds[0].State, "group-c has not finished")
	require.NoError(t, p.db.QueryRow(`SELECT COUNT(*) FROM durabus_deliveries d JOIN durabus_outbox o ON o.id = d.outbox_id
		WHERE o.event_id = ?`, string(both)).Scan(&rows))
	require.Equal(t, 2, rows, "group-b's ack did not finish the event: it needs its delivery rows")
	out, err := outboxByID(p.db, both)
	require.NoError(t, err)
	require.NotEqual(t, "COMPLETED", out.State)
}
