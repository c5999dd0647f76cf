package engine

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// Consumer groups. A bus's Name is its group. Consumers say hello (the
// events they handle) when they subscribe and every HelloInterval; a
// publisher remembers the groups it heard of and gives each event one
// delivery row per group that consumes its name. The first send goes to the
// event's channel, where every online group hears it; re-sends go to the
// group's own channel, only while the group is online, so an offline group
// spends none of its budget and catches up, paced, when it says hello again.

// groupInfo is what a publisher knows of one consumer group.
type groupInfo struct {
	events    map[string]bool
	lastSeen  int64 // ms
	interval  int64 // the group's hello interval, ms; 0: this bus's
	persisted int64 // last_seen as written to the groups table
	nextSend  int64 // pacing: no re-send to this group before this time, ms
}

// groups is a publisher's registry of consumer groups.
type groups struct {
	mu sync.Mutex
	m  map[string]*groupInfo
}

// persistEvery bounds how often a hello from a known group is written down.
const persistEvery = time.Minute

func (e *Engine) helloChannel() string { return e.cfg.ChannelPrefix + "durabus:hello" }
func (e *Engine) groupChannel(group string) string {
	return e.cfg.ChannelPrefix + "durabus:group:" + group
}
func (e *Engine) statusChannel(group string) string {
	return e.cfg.ChannelPrefix + "durabus:status:" + group
}

// loadGroups fills the registry from the groups table.
func (e *Engine) loadGroups(ctx context.Context) error {
	seen, err := e.st.LoadGroups(ctx, e.cfg.DB, e.cfg.Name)
	if err != nil {
		return fmt.Errorf("load consumer groups: %w", err)
	}
	e.groups.m = map[string]*groupInfo{}
	for _, s := range seen {
		g := e.groups.m[s.Group]
		if g == nil {
			g = &groupInfo{events: map[string]bool{}}
			e.groups.m[s.Group] = g
		}
		g.events[s.EventName] = true
		g.lastSeen = max(g.lastSeen, s.LastSeen)
		g.persisted = g.lastSeen
	}
	return nil
}

// offlineAfter is how long g may be silent before it counts as offline:
// three of its hello intervals.
func (e *Engine) offlineAfter(g *groupInfo) int64 {
	if g.interval > 0 {
		return 3 * g.interval
	}
	return 3 * e.cfg.HelloInterval.Milliseconds()
}

// persistInterval bounds how often a hello from a known group is written.
func (e *Engine) persistInterval() int64 {
	return min(persistEvery, e.cfg.GroupTTL/10).Milliseconds()
}

// expectedGroups returns the groups, sorted, that consume event and were
// heard of within GroupTTL.
func (e *Engine) expectedGroups(event string, now int64) []string {
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	var out []string
	for name, g := range e.groups.m {
		if g.events[event] && now-g.lastSeen < e.cfg.GroupTTL.Milliseconds() {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// expectsAck reports whether a first send of event is expected to be
// acknowledged: a group online now consumes it, or no group was ever heard
// of (then nothing is known, and the flow window counts it to be safe).
func (e *Engine) expectsAck(event string, now int64) bool {
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	if len(e.groups.m) == 0 {
		return true
	}
	for _, g := range e.groups.m {
		if g.events[event] && now-g.lastSeen < e.offlineAfter(g) {
			return true
		}
	}
	return false
}

// onlineGroups returns the groups heard of recently, sorted, whose pacing
// allows a send at now.
func (e *Engine) onlineGroups(now int64) []string {
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	var out []string
	for name, g := range e.groups.m {
		if now-g.lastSeen < e.offlineAfter(g) && g.nextSend <= now {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// lastSeen is when group last said hello, in ms.
func (e *Engine) lastSeen(group string) int64 {
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	if g := e.groups.m[group]; g != nil {
		return g.lastSeen
	}
	return 0
}

// pace delays the next re-sends to group after n were sent.
func (e *Engine) pace(group string, n int, now int64) {
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	if g := e.groups.m[group]; g != nil && e.cfg.CatchUpRate > 0 {
		g.nextSend = now + int64(n)*1000/int64(e.cfg.CatchUpRate)
	}
}

// receiveHello records a group's hello. A group that was offline gets what
// it missed: the relay is woken to re-send its due deliveries.
func (e *Engine) receiveHello(ctx context.Context, msg []byte) error {
	h, err := wire.DecodeHello(msg)
	if err != nil {
		e.log.Warn("durabus: ignored an invalid hello", "err", err, "bytes", len(msg))
		return nil
	}
	now := e.nowMS()
	var write []store.GroupSeen
	e.groups.mu.Lock()
	g := e.groups.m[h.Group]
	if g == nil {
		g = &groupInfo{events: map[string]bool{}}
		e.groups.m[h.Group] = g
		e.log.Info("durabus: new consumer group", "group", h.Group, "events", h.Events)
	}
	wasOffline := now-g.lastSeen >= e.offlineAfter(g)
	g.interval = h.Interval
	for _, ev := range h.Events {
		if !g.events[ev] || now-g.persisted >= e.persistInterval() {
			write = append(write, store.GroupSeen{Group: h.Group, EventName: ev, LastSeen: now})
		}
		g.events[ev] = true
	}
	g.lastSeen = now
	if len(write) > 0 {
		g.persisted = now
	}
	e.groups.mu.Unlock()
	if wasOffline {
		e.log.Info("durabus: consumer group online", "group", h.Group)
		wake(e.relayWake)
	}
	if len(write) == 0 {
		return nil
	}
	return e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		for _, s := range write {
			if err := e.st.UpsertGroup(ctx, q, e.cfg.Name, s); err != nil {
				return err
			}
		}
		return nil
	})
}

// forgetSilentGroups drops the groups silent for longer than GroupTTL, with
// their unfinished deliveries.
func (e *Engine) forgetSilentGroups(ctx context.Context) {
	now := e.nowMS()
	var silent []string
	e.groups.mu.Lock()
	for name, g := range e.groups.m {
		// Silent since it was last heard of, or since this bus opened: a
		// restarted publisher hears the groups again before it forgets them.
		if now-max(g.lastSeen, e.openedAt) >= e.cfg.GroupTTL.Milliseconds() {
			silent = append(silent, name)
		}
	}
	e.groups.mu.Unlock()
	for _, name := range silent {
		var dropped int
		err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
			var err error
			dropped, err = e.st.ForgetGroup(ctx, q, e.cfg.Name, name, now)
			return err
		})
		if err != nil {
			e.log.Warn("durabus: forget consumer group", "group", name, "err", err)
			continue
		}
		e.groups.mu.Lock()
		delete(e.groups.m, name)
		e.groups.mu.Unlock()
		e.log.Warn("durabus: forgot a consumer group silent for longer than GroupTTL", "group", name, "dropped_deliveries", dropped)
	}
}

// helloLoop announces this group's events now and every HelloInterval, and
// again whenever a handler of a new event is added.
func (e *Engine) helloLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.HelloInterval)
	defer t.Stop()
	for {
		e.mu.Lock()
		events := make([]string, 0, len(e.handlers))
		for ev := range e.handlers {
			events = append(events, ev)
		}
		e.mu.Unlock()
		slices.Sort(events)
		if msg, err := wire.EncodeHello(e.cfg.Name, events, e.cfg.HelloInterval); err == nil {
			sctx, cancel := context.WithTimeout(ctx, ackSendTimeout)
			if err := e.cfg.PubSub.Publish(sctx, e.helloChannel(), msg); err != nil && ctx.Err() == nil {
				e.log.Debug("durabus: send hello", "err", err)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.helloWake:
		}
	}
}

// relayDeliveries re-sends the due deliveries of online groups on their
// own channels, and asks groups about events they received but have not
// finished. It returns how many deliveries it handled.
func (e *Engine) relayDeliveries(ctx context.Context) (int, error) {
	now := e.nowMS()
	total := 0
	for _, group := range e.onlineGroups(now) {
		n, err := e.relayGroup(ctx, group, now)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (e *Engine) relayGroup(ctx context.Context, group string, now int64) (int, error) {
	var resend []store.DeliverySend
	var ask []store.DeliverySend
	handled := 0
	if !anyDue(now, func() (int64, bool, error) { return e.st.NextDeliveryDue(ctx, e.rd, group) }) {
		return 0, nil
	}
	err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		resend, ask = resend[:0], ask[:0]
		due, err := e.st.DueDeliveries(ctx, q, e.cfg.Name, group, now, relayBatch)
		if err != nil {
			return err
		}
		handled = len(due)
		heard := e.lastSeen(group)
		for _, d := range due {
			// A re-send spends budget only if the group said hello since the
			// previous one: a group that fell silent is not yet known to be
			// offline, and must not lose its events meanwhile.
			spent := 0
			if heard >= d.UpdatedAt {
				spent = 1
			}
			sends := d.Sends + spent
			switch {
			case d.State == store.DeliveryPending && spent == 1 && d.Sends >= e.cfg.MaxRetries:
				reason := fmt.Sprintf("undelivered: group %q did not acknowledge it after %d sends", group, d.Sends+1)
				if err := e.st.DeliveryUndelivered(ctx, q, d.OutboxID, group, reason, now); err != nil {
					return err
				}
				continue
			case d.State == store.DeliveryReceived && spent == 1 && d.Sends >= e.cfg.MaxRetries:
				if err := e.st.DeliverySent(ctx, q, d.OutboxID, group, d.Sends, store.Never, now); err != nil {
					return err
				}
				continue
			}
			next := now + max(e.cfg.PendingDelay, e.cfg.Backoff(sends)).Milliseconds()
			if err := e.st.DeliverySent(ctx, q, d.OutboxID, group, sends, next, now); err != nil {
				return err
			}
			if d.State == store.DeliveryPending {
				resend = append(resend, d)
			} else {
				ask = append(ask, d)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("claim deliveries of group %q: %w", group, err)
	}
	if err := e.sendToGroup(ctx, group, resend, ask); err != nil {
		e.unclaimDeliveries(group, append(resend, ask...), now)
		return 0, err
	}
	e.pace(group, len(resend), now)
	return handled, nil
}

// sendToGroup publishes re-sends on the group's channel (marked when they
// are replays) and one status query for the rest.
func (e *Engine) sendToGroup(ctx context.Context, group string, resend, ask []store.DeliverySend) error {
	channels := make([]string, 0, len(resend)+1)
	msgs := make([][]byte, 0, len(resend)+1)
	for _, d := range resend {
		msg := d.Message
		if d.Replay {
			var err error
			if msg, err = wire.WithReplay(msg); err != nil {
				e.log.Error("durabus: stored event does not decode; not replayed", "id", d.EventID, "err", err)
				continue
			}
		}
		channels, msgs = append(channels, e.groupChannel(group)), append(msgs, msg)
	}
	if len(ask) > 0 {
		ids := make([]string, len(ask))
		for i, d := range ask {
			ids[i] = d.EventID
		}
		msg, err := wire.EncodeStatusQuery(e.cfg.Name, ids)
		if err != nil {
			return err
		}
		channels, msgs = append(channels, e.statusChannel(group)), append(msgs, msg)
	}
	return e.publishAll(ctx, channels, msgs)
}

// publishAll publishes msgs[i] on channels[i], pipelined when it can.
func (e *Engine) publishAll(ctx context.Context, channels []string, msgs [][]byte) error {
	if len(msgs) == 0 {
		return nil
	}
	if bp, ok := e.cfg.PubSub.(BatchPublisher); ok && len(msgs) > 1 {
		return bp.PublishBatch(ctx, channels, msgs)
	}
	for i := range msgs {
		if err := e.cfg.PubSub.Publish(ctx, channels[i], msgs[i]); err != nil {
			return err
		}
	}
	return nil
}

// unclaimDeliveries puts back deliveries whose send failed, without
// spending their budget.
func (e *Engine) unclaimDeliveries(group string, ds []store.DeliverySend, now int64) {
	due := now + min(e.cfg.PollInterval, time.Second).Milliseconds()
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		for _, d := range ds {
			if err := e.st.DeliverySent(ctx, q, d.OutboxID, group, d.Sends, due, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.log.Warn("durabus: relay: put back unsent deliveries", "group", group, "err", err)
	}
}

// receiveStatus answers a publisher's status query with acks for the
// events this bus stored; events it does not have are another replica's.
func (e *Engine) receiveStatus(ctx context.Context, msg []byte) error {
	sq, err := wire.DecodeStatusQuery(msg)
	if err != nil {
		e.log.Warn("durabus: ignored an invalid status query", "err", err, "bytes", len(msg))
		return nil
	}
	var acks []store.Ack
	for _, id := range sq.IDs {
		st, ok, err := e.st.InboxEventStatus(ctx, e.cfg.DB, e.cfg.Name, id)
		if err != nil {
			return err
		}
		if ok {
			acks = append(acks, store.Ack{EventID: id, Status: st.Status, Group: e.cfg.Name, Error: st.LastError, Replay: st.Replay})
		}
	}
	if sq.Publisher != e.cfg.Name {
		for _, a := range acks {
			e.acks.add(sq.Publisher, a)
		}
		return nil
	}
	now := e.nowMS()
	return e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
		for _, a := range acks {
			if _, err := e.st.ApplyAck(ctx, q, e.cfg.Name, a, now+e.cfg.PendingDelay.Milliseconds(), now); err != nil {
				return err
			}
		}
		return nil
	})
}

// GroupStatus is what Stats reports of one consumer group.
type GroupStatus struct {
	Name     string
	Events   []string
	LastSeen time.Time
	Online   bool
}

// Groups lists the consumer groups this bus heard of.
func (e *Engine) Groups() []GroupStatus {
	now := e.nowMS()
	e.groups.mu.Lock()
	defer e.groups.mu.Unlock()
	out := make([]GroupStatus, 0, len(e.groups.m))
	for name, g := range e.groups.m {
		s := GroupStatus{Name: name, LastSeen: time.UnixMilli(g.lastSeen), Online: now-g.lastSeen < e.offlineAfter(g)}
		for ev := range g.events {
			s.Events = append(s.Events, ev)
		}
		slices.Sort(s.Events)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b GroupStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}
