package faulttest

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
)

// publisherRetries is the publishers' MaxRetries: 0, durabus's default of
// 10 re-sends. With the suite's fast retry policy (re-sends at most 2 s
// apart) that budget lasts about 12 s, four times the 3 s after which a
// silent group is offline (helloInterval): from then on its deliveries wait
// without spending it. (With a 5 s HelloInterval, 15 s to go offline, the
// budget would run out first and consumer-offline would lose events.)
const publisherRetries = 0

// Deadlines of the waits for delivery. A passing scenario never waits for
// them: the waits poll.
const (
	settleTimeout = 60 * time.Second
	doneTimeout   = 90 * time.Second
)

// scenario is the setting of one fault test: a temp dir and its own
// redis-server.
type scenario struct {
	t     *testing.T
	dir   string
	redis *redisServer
}

func newScenario(t *testing.T) *scenario {
	t.Helper()
	redisBinary(t) // skips the test without redis-server
	if raceEnabled {
		// Measured: under -race the helper processes publish and handle
		// about ten times slower and the suite takes over 10 minutes, past
		// go test's default timeout. Without -race it takes about 3.
		t.Skip("the fault suite does not run under -race (its helper processes would be race builds, ~10x slower): run go test ./faulttest -v")
	}
	s := &scenario{t: t, dir: t.TempDir()}
	s.redis = startRedis(t)
	return s
}

func (s *scenario) path(name string) string { return filepath.Join(s.dir, name) }

// consumer is the config of a consumer process; file names its files.
func (s *scenario) consumer(name, file, url string) roleConfig {
	return roleConfig{Role: "consumer", Name: name, DB: s.path(file + ".db"), Log: s.path(file + ".handled"),
		Redis: url, Concurrency: 16, HandlerTimeout: time.Second}
}

// publisher is the config of a publisher process; file names its files.
// It publishes once it has heard of the consumer group groups.
func (s *scenario) publisher(name, file, url string, events, workers, rate int, groups ...string) roleConfig {
	return roleConfig{Role: "publisher", Name: name, DB: s.path(file + ".db"), Log: s.path(file + ".record"),
		Redis: url, Events: events, Workers: workers, Rate: rate, MaxRetries: publisherRetries, Groups: groups}
}

// finish waits for the publisher's last Publish and for the delivery of
// every acknowledged event to the consumers, and reports.
func (s *scenario) finish(name string, pub *proc, pcfg roleConfig, dbs []consumerDB, logs []string, faultEnd time.Time) {
	t := s.t
	t.Helper()
	// Recovery: how long after the fault ended the events acknowledged
	// until then are all delivered, while the publisher may go on.
	backlog := readRecords(t, pcfg.Log).ackedOf(eventName, -1)
	waitDelivered(t, dbs, eventName, "COMPLETED", backlog, settleTimeout)
	t.Logf("recovery: the %d events acknowledged before the fault ended were all delivered %v after it ended",
		len(backlog), time.Since(faultEnd).Round(time.Millisecond))
	if err := pub.waitLine("DONE", doneTimeout); err != nil {
		t.Fatal(err)
	}
	rec := readRecords(t, pcfg.Log)
	want := rec.ackedOf(eventName, -1)
	done, took := waitDelivered(t, dbs, eventName, "COMPLETED", want, settleTimeout)
	t.Logf("settled: every acknowledged event delivered %v after the last Publish returned", took.Round(time.Millisecond))
	s.checkOutbox(pcfg, nil)
	tl := count(t, rec, want, done, readHandlerLogs(t, logs...), nil)
	report(t, name, rec.published, tl)
}

// checkOutbox waits until the publisher's outbox rows reached their final
// state (COMPLETED, or what final says for an event), so that acks travel
// back: a row a consumer completed must not stay PENDING or PROCESSING.
func (s *scenario) checkOutbox(pcfg roleConfig, final func(r outboxRow) bool) {
	t := s.t
	t.Helper()
	if final == nil {
		final = func(r outboxRow) bool { return r.State == "COMPLETED" }
	}
	db := openDB(t, pcfg.DB)
	var rows map[string]outboxRow
	var err error
	ok, took := poll(30*time.Second, func() bool {
		rows, err = outboxRows(db, pcfg.Name)
		if err != nil {
			return false
		}
		for _, r := range rows {
			if !final(r) {
				return false
			}
		}
		return true
	})
	states := countStates(rows, func(r outboxRow) string { return r.State })
	if !ok {
		var bad []string
		for _, r := range rows {
			if !final(r) && len(bad) < 5 {
				bad = append(bad, fmt.Sprintf("%+v", r))
			}
		}
		t.Errorf("outbox of %s did not reach its final states within 30 s (%v): %s; e.g. %v", pcfg.Name, err, states, bad)
		return
	}
	t.Logf("outbox of %s: %s (final %v after delivery)", pcfg.Name, states, took.Round(time.Millisecond))
}

// waitUntil waits until the moment at, for fault timing.
func waitUntil(at time.Time) { <-after(time.Until(at)) }

// ---- publisher-kill ----

// TestFault_PublisherKill SIGKILLs a publisher at a random moment while it
// publishes 10,000 events from several goroutines, then restarts it on the
// same file. The restarted publisher publishes nothing and calls no recall:
// its relay must finish what the killed one left. Five seeded runs share
// the file, which must pass PRAGMA integrity_check afterwards.
func TestFault_PublisherKill(t *testing.T) {
	s := newScenario(t)
	url := s.redis.url()
	ccfg := s.consumer("pk-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	cdb := []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}
	const runs = 5
	pubDB := s.path("publisher.db")
	var pdb *sql.DB
	for i := 1; i <= runs; i++ {
		r, seed := newRand(t, i)
		workers := 4 + r.IntN(29)
		killAfter := randDuration(r, 10*time.Millisecond, 6*time.Second)
		pcfg := s.publisher("pk-publisher", "unused", url, 10000, workers, 0, ccfg.Name)
		pcfg.DB, pcfg.Log, pcfg.Run = pubDB, s.path(fmt.Sprintf("run%d.record", i)), i
		pub := startProc(t, fmt.Sprintf("publisher-run%d", i), pcfg)
		started := time.Now()
		select {
		case <-after(killAfter):
		case <-pub.exited:
		}
		pub.checkAlive()
		finished := pub.out.has("DONE")
		pub.kill()
		killedAt := time.Since(started)

		if pdb == nil {
			pdb = openDB(t, pubDB)
		}
		rows, err := outboxRows(pdb, pcfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		unfinished := 0
		for _, row := range rows {
			if row.State == "PENDING" || row.State == "PROCESSING" {
				unfinished++
			}
		}
		rec := readRecords(t, pcfg.Log)
		t.Logf("run %d: seed=%d workers=%d SIGKILL after %v (all Publish calls returned: %v): %d Publish calls, %d acknowledged; outbox: %s",
			i, seed, workers, killedAt.Round(time.Millisecond), finished, rec.published, len(rec.acked),
			countStates(rows, func(r outboxRow) string { return r.State }))

		rcfg := pcfg
		rcfg.Resume, rcfg.Log, rcfg.Groups = true, s.path(fmt.Sprintf("run%d-resumed.record", i)), nil
		restarted := time.Now()
		resumed := startProc(t, fmt.Sprintf("publisher-run%d-resumed", i), rcfg)
		want := rec.ackedOf(eventName, i)
		done, _ := waitDelivered(t, cdb, eventName, "COMPLETED", want, settleTimeout)
		t.Logf("recovery: run %d: %d rows left unfinished by the killed publisher; every acknowledged event delivered %v after the restart",
			i, unfinished, time.Since(restarted).Round(time.Millisecond))
		s.checkOutbox(rcfg, nil) // the resumed relay finished every row, recorded or not
		resumed.stop()
		tl := count(t, rec, want, done, readHandlerLogs(t, ccfg.Log), nil)
		report(t, "publisher-kill", rec.published, tl)
	}
	cons.stop()
	integrityCheck(t, pubDB)
	integrityCheck(t, ccfg.DB)
}

// ---- consumer-kill ----

// TestFault_ConsumerKill SIGKILLs the consumer every 1 to 3 s while 5,000
// events flow at 250/s into handlers that work 10 to 40 ms, so that kills
// land mid-handler, and restarts it each time.
func TestFault_ConsumerKill(t *testing.T) {
	s := newScenario(t)
	r, _ := newRand(t, 0)
	url := s.redis.url()
	ccfg := s.consumer("ck-consumer", "consumer", url)
	ccfg.WorkMin, ccfg.WorkMax, ccfg.LogStarts = 10*time.Millisecond, 40*time.Millisecond, true
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("ck-publisher", "publisher", url, 5000, 4, 250, ccfg.Name)
	pub := startProc(t, "publisher", pcfg)
	kills := 0
	var lastRestart time.Time
	for kills < 5 || !pub.out.has("DONE") {
		if kills >= 30 {
			t.Fatal("the publisher does not finish")
		}
		<-after(randDuration(r, time.Second, 3*time.Second))
		cons.checkAlive()
		cons.kill()
		kills++
		cons = startProc(t, "consumer", ccfg)
		lastRestart = time.Now()
		pub.checkAlive()
	}
	h := readHandlerLogs(t, ccfg.Log)
	t.Logf("%d SIGKILLs; %d handler runs were interrupted by them", kills, h.interrupted())
	if h.interrupted() == 0 {
		t.Errorf("no SIGKILL landed mid-handler: the scenario did not test what it should")
	}
	s.finish("consumer-kill", pub, pcfg, []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}, []string{ccfg.Log}, lastRestart)
	pub.stop()
	cons.stop()
	integrityCheck(t, ccfg.DB)
}

// ---- redis-restart ----

// TestFault_RedisRestart shuts Redis down without saving and restarts it on
// the same port twice while 10,000 events are published at 500/s.
func TestFault_RedisRestart(t *testing.T) {
	s := newScenario(t)
	r, _ := newRand(t, 0)
	url := s.redis.url()
	ccfg := s.consumer("rr-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("rr-publisher", "publisher", url, 10000, 4, 500, ccfg.Name)
	pub := startProc(t, "publisher", pcfg)
	start := time.Now()
	var up time.Time
	for i, at := range []time.Duration{randDuration(r, 3*time.Second, 6*time.Second), randDuration(r, 10*time.Second, 14*time.Second)} {
		waitUntil(start.Add(at))
		s.redis.shutdownNoSave()
		down := time.Now()
		<-after(randDuration(r, 500*time.Millisecond, 2*time.Second))
		s.redis.start()
		up = time.Now()
		t.Logf("restart %d: Redis shut down (NOSAVE) %v after the publisher started, down for %v",
			i+1, down.Sub(start).Round(time.Millisecond), up.Sub(down).Round(time.Millisecond))
	}
	s.finish("redis-restart", pub, pcfg, []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}, []string{ccfg.Log}, up)
	cons.checkAlive()
	pub.stop()
	cons.stop()
}

// ---- network-cut ----

// TestFault_NetworkCut puts a TCP proxy between the buses and Redis, cuts
// every connection three times, then drops all traffic for 10 s and heals,
// while 5,000 events are published at 250/s.
func TestFault_NetworkCut(t *testing.T) {
	s := newScenario(t)
	proxy := startProxy(t, s.redis.addr())
	url := proxy.url()
	ccfg := s.consumer("nc-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("nc-publisher", "publisher", url, 5000, 4, 250, ccfg.Name)
	pub := startProc(t, "publisher", pcfg)
	start := time.Now()
	for _, at := range []time.Duration{2 * time.Second, 4 * time.Second, 6 * time.Second} {
		waitUntil(start.Add(at))
		t.Logf("cut %d connections", proxy.cutAll())
	}
	waitUntil(start.Add(8 * time.Second))
	proxy.startBlackhole()
	<-after(10 * time.Second)
	healed := time.Now()
	t.Logf("blackhole for 10 s, then healed: closed %d connections that lost traffic", proxy.heal())
	s.finish("network-cut", pub, pcfg, []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}, []string{ccfg.Log}, healed)
	cons.checkAlive()
	pub.stop()
	cons.stop()
}

// ---- consumer-offline ----

// TestFault_ConsumerOffline stops the consumer group (its only process,
// gracefully) for 30 s while 5,000 events are published, then restarts it.
// The publisher heard of the group before it was stopped: it keeps a
// delivery per event for it, and the group catches up when it is back.
func TestFault_ConsumerOffline(t *testing.T) {
	s := newScenario(t)
	url := s.redis.url()
	ccfg := s.consumer("co-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("co-publisher", "publisher", url, 5000, 4, 200, ccfg.Name)
	pcfg.Gate = true
	pub := startProc(t, "publisher", pcfg) // READY: it heard the group's hello
	cons.stop()
	stopped := time.Now()
	pub.send("GO")
	waitUntil(stopped.Add(30 * time.Second))
	if rows, err := outboxRows(openDB(t, pcfg.DB), pcfg.Name); err == nil {
		t.Logf("after 30 s offline, the outbox holds %s", countStates(rows, func(r outboxRow) string { return r.State }))
	}
	cons = startProc(t, "consumer", ccfg)
	s.finish("consumer-offline", pub, pcfg, []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}, []string{ccfg.Log}, time.Now())
	pub.stop()
	cons.stop()
}

// ---- handler-failures ----

// TestFault_HandlerFailures publishes 10,000 events of which 30% fail twice
// before they succeed, and 200 events of a second handler that always
// fails. With MaxRetries 3 the first all end COMPLETED after exactly their
// planned runs, the others DEAD after exactly 4 runs with their error, and
// the publisher learns both.
func TestFault_HandlerFailures(t *testing.T) {
	const maxRetries = 3
	s := newScenario(t)
	url := s.redis.url()
	ccfg := s.consumer("hf-consumer", "consumer", url)
	ccfg.Flaky, ccfg.DoomHard, ccfg.MaxRetries = true, true, maxRetries
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("hf-publisher", "publisher", url, 10000, 8, 0, ccfg.Name)
	pcfg.Doomed = 200
	pub := startProc(t, "publisher", pcfg)
	if err := pub.waitLine("DONE", doneTimeout); err != nil {
		t.Fatal(err)
	}
	lastPublish := time.Now()
	rec := readRecords(t, pcfg.Log)
	wantOK, wantDead := rec.ackedOf(eventName, -1), rec.ackedOf(doomedName, -1)
	cdb := []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}
	completed, _ := waitDelivered(t, cdb, eventName, "COMPLETED", wantOK, settleTimeout)
	dead, _ := waitDelivered(t, cdb, doomedHandler, "DEAD", wantDead, settleTimeout)
	t.Logf("settled: every acknowledged event COMPLETED or DEAD %v after the last Publish returned", time.Since(lastPublish).Round(time.Millisecond))

	h := readHandlerLogs(t, ccfg.Log)
	rows, err := inboxRows(cdb[0].db, ccfg.Name, false)
	if err != nil {
		t.Fatal(err)
	}
	expected := func(id string) int {
		if k, ok := rec.acked[id]; ok {
			switch {
			case k.Name == doomedName:
				return maxRetries + 1
			case flaky(k.Seq):
				return 3
			}
		}
		return 1
	}
	var problems []string
	problem := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	byID := map[string]inboxRow{}
	for _, row := range rows {
		byID[row.EventID+"/"+row.Handler] = row
		if row.Handler == eventName && row.State == "DEAD" {
			problem("%s entry %s is DEAD: %s", eventName, row.EventID, row.LastError)
		}
	}
	for id, k := range wantOK {
		row, ok := byID[id+"/"+eventName]
		if ok && row.State == "COMPLETED" && row.Attempts != expected(id) {
			problem("%s seq %d COMPLETED after %d attempts, want %d", id, k.Seq, row.Attempts, expected(id))
		}
		if fails := h.fail[id]; h.ok[id] >= 1 && fails != expected(id)-1 {
			problem("%s seq %d failed %d times, want %d", id, k.Seq, fails, expected(id)-1)
		}
	}
	for id, k := range wantDead {
		row, ok := byID[id+"/"+doomedHandler]
		if !ok || row.State != "DEAD" {
			continue // counted as lost
		}
		want := fmt.Sprintf("doomed: seq %d always fails (attempt %d)", k.Seq, maxRetries+1)
		if row.Attempts != maxRetries+1 || !strings.Contains(row.LastError, want) {
			problem("doomed %s: DEAD after %d attempts with %q, want %d attempts and %q", id, row.Attempts, row.LastError, maxRetries+1, want)
		}
		if n := h.fail[id] + h.ok[id]; n != maxRetries+1 {
			problem("doomed %s ran %d times, want %d", id, n, maxRetries+1)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		t.Errorf("%d problems, e.g.:\n%s", len(problems), strings.Join(problems[:min(20, len(problems))], "\n"))
	}
	s.checkOutbox(pcfg, func(r outboxRow) bool {
		if r.EventName == doomedName {
			return r.State == "DEAD" && r.DeadBy == ccfg.Name && strings.Contains(r.LastError, "always fails")
		}
		return r.State == "COMPLETED"
	})

	want := map[string]key{}
	done := map[string]bool{}
	for id, k := range wantOK {
		want[id] = k
		done[id] = completed[id]
	}
	for id, k := range wantDead {
		want[id] = k
		done[id] = dead[id]
	}
	report(t, "handler-failures", rec.published, count(t, rec, want, done, h, expected))
	pub.stop()
	cons.stop()
}

// ---- bad-input ----

// badMessage is a message published raw on the event channel, and the DEAD
// inbox entry it must become.
type badMessage struct {
	kind    string
	data    []byte
	handler string // "" for messages that are not events; eventName for bad payloads
	id      string // the event ID, for bad payloads
	reason  string // a part of the entry's last_error
}

func envelope(name, id string, payload any) []byte {
	m := map[string]any{"eventName": name, "eventId": id, "publishedBy": "rogue-publisher",
		"publishedAt": time.Now().UTC().Format("2006-01-02T15:04:05.000Z")}
	if payload != nil {
		m["payload"] = payload
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func badMessages(r *rand.Rand) []badMessage {
	var bad []badMessage
	add := func(kind string, data []byte, reason string) {
		bad = append(bad, badMessage{kind: kind, data: data, reason: reason})
	}
	for range 10 {
		b := make([]byte, 1+r.IntN(300))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		b[0] = 0xff // never valid JSON
		add("garbage", b, "malformed envelope")
	}
	for range 10 {
		full := envelope(eventName, uuid.NewString(), faultEvent{Run: 9, Seq: 1, Check: checksum(9, 1)})
		add("truncated", full[:1+r.IntN(len(full)-2)], "malformed envelope")
	}
	add("empty", []byte{}, "malformed envelope")
	add("null", []byte("null"), "eventName is empty")
	add("array", []byte("[1,2,3]"), "malformed envelope")
	add("object", []byte("{}"), "eventName is empty")
	add("no-id", envelope(eventName, "", map[string]int{"seq": 1}), "eventId is empty")
	add("no-payload", envelope(eventName, uuid.NewString(), nil), "no payload field")
	for range 3 {
		add("wrong-channel", envelope("other.event", uuid.NewString(), map[string]int{"seq": 1}), "arrived on the channel of")
	}
	huge := envelope(eventName, uuid.NewString(), faultEvent{Run: 9, Seq: 2, Check: checksum(9, 2), Pad: strings.Repeat("z", 10<<20)})
	add("10MB", huge, "exceeds the limit")

	payloads := []struct {
		payload any
		reason  string
	}{
		{map[string]any{"run": "one", "seq": 1, "check": "x"}, "decode payload"},
		{map[string]any{"run": 1, "seq": "two", "check": "x"}, "decode payload"},
		{map[string]any{"run": 1, "seq": map[string]int{}, "check": "x"}, "decode payload"},
		{map[string]any{"run": 1.5, "seq": 1, "check": "x"}, "decode payload"},
		{map[string]any{"run": 1, "seq": 1, "check": 7}, "decode payload"},
		{[]int{1, 2, 3}, "decode payload"},
		{"a string", "decode payload"},
		{42, "decode payload"},
		{map[string]any{"run": 1, "seq": 2, "check": "bogus"}, "does not match"},
		{map[string]any{}, "does not match"},
	}
	for _, p := range payloads {
		id := uuid.NewString()
		bad = append(bad, badMessage{kind: "wrong-payload", data: envelope(eventName, id, p.payload),
			handler: eventName, id: id, reason: p.reason})
	}
	r.Shuffle(len(bad), func(i, j int) { bad[i], bad[j] = bad[j], bad[i] })
	return bad
}

// TestFault_BadInput publishes garbage, truncated JSON, envelopes with
// payloads of the wrong types and a 10 MB message raw on the event channel
// among 1,000 valid events: the consumer goes on, every bad message is a
// DEAD entry with its reason, every valid event is COMPLETED.
func TestFault_BadInput(t *testing.T) {
	s := newScenario(t)
	r, _ := newRand(t, 0)
	url := s.redis.url()
	ccfg := s.consumer("bi-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("bi-publisher", "publisher", url, 1000, 2, 200, ccfg.Name)
	pub := startProc(t, "publisher", pcfg)
	bad := badMessages(r)
	pace := time.NewTicker(4 * time.Second / time.Duration(len(bad)))
	for _, b := range bad {
		<-pace.C // spreads the bad messages among the valid ones
		n, err := s.redis.admin.Publish(t.Context(), eventName, b.data).Result()
		if err != nil || n != 1 {
			t.Fatalf("raw PUBLISH of a %s message: %d receivers, %v (want the consumer)", b.kind, n, err)
		}
	}
	pace.Stop()
	t.Logf("published %d bad messages raw among the valid events", len(bad))

	db := openDB(t, ccfg.DB)
	s.finish("bad-input", pub, pcfg, []consumerDB{{db, ccfg.Name}}, []string{ccfg.Log}, time.Now())
	cons.checkAlive()

	// Every bad message must be a DEAD entry with its reason.
	var missing []string
	var rows []inboxRow
	poll(30*time.Second, func() bool {
		var err error
		if rows, err = inboxRows(db, ccfg.Name, true); err != nil {
			return false
		}
		missing = matchBad(bad, rows)
		return len(missing) == 0
	})
	if len(missing) > 0 {
		t.Errorf("%d bad messages have no DEAD entry with their reason: %v", len(missing), missing)
	}
	dead := 0
	for _, row := range rows {
		if row.State == "DEAD" {
			dead++
		}
	}
	if dead != len(bad) {
		t.Errorf("%d DEAD inbox entries, want %d (one per bad message)", dead, len(bad))
	}
	t.Logf("every one of the %d bad messages is a DEAD entry with its reason", len(bad))
	pub.stop()
	cons.stop()
}

// matchBad returns the bad messages that have no matching DEAD entry.
func matchBad(bad []badMessage, rows []inboxRow) []string {
	used := make([]bool, len(rows))
	var missing []string
	for _, b := range bad {
		kept := b.data[:min(len(b.data), 64<<10)]
		found := false
		for i, row := range rows {
			if used[i] || row.State != "DEAD" || row.Handler != b.handler || !strings.Contains(row.LastError, b.reason) {
				continue
			}
			if b.handler == "" && !bytes.Equal(row.Message, kept) || b.handler != "" && row.EventID != b.id {
				continue
			}
			used[i], found = true, true
			break
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%s(%q)", b.kind, b.reason))
		}
	}
	return missing
}

// ---- slow-consumer ----

// TestFault_SlowConsumer lowers Redis's pub/sub output buffer limit, stops
// the consumer process (SIGSTOP) while 2 KB events flow at 1,000/s until
// Redis disconnects it for exceeding the limit, then lets it go on
// (SIGCONT): the publisher re-sends what the disconnection lost.
func TestFault_SlowConsumer(t *testing.T) {
	s := newScenario(t)
	if _, err := s.redis.do("CONFIG", "SET", "client-output-buffer-limit", "pubsub 256kb 128kb 1"); err != nil {
		t.Fatal(err)
	}
	url := s.redis.url()
	ccfg := s.consumer("sc-consumer", "consumer", url)
	cons := startProc(t, "consumer", ccfg)
	pcfg := s.publisher("sc-publisher", "publisher", url, 5000, 4, 1000, ccfg.Name)
	pcfg.Pad = 2048
	pub := startProc(t, "publisher", pcfg)
	<-after(time.Second)
	cons.signal(syscall.SIGSTOP)
	stopped := time.Now()
	disconnected, took := poll(60*time.Second, func() bool {
		b, _ := os.ReadFile(s.redis.logPath())
		return bytes.Contains(b, []byte("output buffer limits"))
	})
	cons.signal(syscall.SIGCONT)
	resumed := time.Now()
	if !disconnected {
		t.Fatalf("Redis did not disconnect the stalled consumer within %v", took)
	}
	t.Logf("consumer stalled (SIGSTOP) for %v until Redis disconnected it for exceeding the output buffer limit; then SIGCONT",
		resumed.Sub(stopped).Round(time.Millisecond))
	s.finish("slow-consumer", pub, pcfg, []consumerDB{{openDB(t, ccfg.DB), ccfg.Name}}, []string{ccfg.Log}, resumed)
	cons.checkAlive()
	pub.stop()
	cons.stop()
}

// ---- replicas ----

// TestFault_Replicas runs 3 replicas of one consumer group (one Name,
// separate SQLite files) while 5,000 events are published at 500/s, and
// SIGKILLs one of them mid-run; like a supervisor would, it restarts it on
// its file 1 to 3 s later. Every event must be handled at least once;
// duplicates are reported. Replicas claim events from each other (SET NX in
// Redis): a killed replica keeps the events it had stored until it is back.
func TestFault_Replicas(t *testing.T) {
	s := newScenario(t)
	r, _ := newRand(t, 0)
	url := s.redis.url()
	var replicas []*proc
	var cfgs []roleConfig
	var dbs []consumerDB
	var logs []string
	for i := 1; i <= 3; i++ {
		ccfg := s.consumer("replica-group", fmt.Sprintf("replica%d", i), url)
		ccfg.WorkMin, ccfg.WorkMax = 5*time.Millisecond, 20*time.Millisecond
		replicas = append(replicas, startProc(t, fmt.Sprintf("replica%d", i), ccfg))
		cfgs = append(cfgs, ccfg)
		dbs = append(dbs, consumerDB{openDB(t, ccfg.DB), ccfg.Name})
		logs = append(logs, ccfg.Log)
	}
	pcfg := s.publisher("rp-publisher", "publisher", url, 5000, 4, 500, "replica-group")
	pub := startProc(t, "publisher", pcfg)
	killAfter := randDuration(r, 2*time.Second, 8*time.Second)
	<-after(killAfter)
	replicas[1].checkAlive()
	replicas[1].kill()
	stranded := 0
	if rows, err := inboxRows(dbs[1].db, dbs[1].name, false); err == nil {
		for _, row := range rows {
			if row.State == "PROCESSING" {
				stranded++
			}
		}
	}
	down := randDuration(r, time.Second, 3*time.Second)
	<-after(down)
	replicas[1] = startProc(t, "replica2", cfgs[1])
	t.Logf("replica2 SIGKILLed %v after the publisher started, holding %d unfinished inbox entries; restarted %v later",
		killAfter.Round(time.Millisecond), stranded, down.Round(time.Millisecond))
	s.finish("replicas", pub, pcfg, dbs, logs, time.Now())
	for i, l := range logs {
		h := readHandlerLogs(t, l)
		t.Logf("replica%d handled %d events", i+1, len(h.ok))
	}
	pub.stop()
	for _, p := range replicas {
		p.checkAlive()
		p.stop()
	}
}
