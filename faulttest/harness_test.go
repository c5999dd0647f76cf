package faulttest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// tick is how often the suite polls files, SQLite and Redis.
const tick = 100 * time.Millisecond

// ---- seeds ----

// baseSeed is FAULTTEST_SEED, or a seed drawn once per test binary.
var baseSeed = sync.OnceValue(func() uint64 {
	if s := os.Getenv("FAULTTEST_SEED"); s != "" {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n
		}
	}
	return uint64(time.Now().UnixNano())
})

// newRand returns the random source of one scenario run and logs its seed.
func newRand(t *testing.T, run int) (*rand.Rand, uint64) {
	seed := baseSeed() + uint64(crc32.ChecksumIEEE([]byte(t.Name())))<<16 + uint64(run)
	t.Logf("seed=%d (FAULTTEST_SEED=%d reproduces the suite's timings)", seed, baseSeed())
	return rand.New(rand.NewPCG(seed, 0x6475726162757321)), seed
}

func randDuration(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)+1))
}

// ---- polling ----

// poll calls cond every tick until it returns true or d passes, and
// reports whether it did and how long it took.
func poll(d time.Duration, cond func() bool) (bool, time.Duration) {
	start := time.Now()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if cond() {
			return true, time.Since(start)
		}
		if time.Since(start) > d {
			return false, time.Since(start)
		}
		<-t.C
	}
}

// after returns a channel that fires after d: fault timing, not
// synchronisation.
func after(d time.Duration) <-chan time.Time { return time.After(d) }

// ---- redis-server ----

func redisBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed: skipping the fault suite")
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// redisServer is a redis-server of one scenario, on its own port and dir.
type redisServer struct {
	t      *testing.T
	bin    string
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
	admin  *redis.Client
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	r := &redisServer{t: t, bin: redisBinary(t), dir: t.TempDir(), port: freePort(t)}
	r.admin = redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() {
		r.kill()
		_ = r.admin.Close()
	})
	r.start()
	return r
}

func (r *redisServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }
func (r *redisServer) url() string  { return "redis://" + r.addr() }
func (r *redisServer) logPath() string {
	return filepath.Join(r.dir, "redis.log")
}

// start starts redis-server and waits until it answers PING.
func (r *redisServer) start() {
	r.t.Helper()
	cmd := exec.Command(r.bin, "--save", "", "--appendonly", "no", "--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1", "--dir", r.dir, "--logfile", r.logPath())
	setPdeathsig(cmd)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	r.cmd, r.exited = cmd, exited
	ok, _ := poll(10*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return r.admin.Ping(ctx).Err() == nil
	})
	select {
	case <-exited:
		r.t.Fatalf("redis-server on port %d exited at start; log:\n%s", r.port, tail(r.logPath(), 2000))
	default:
	}
	if !ok {
		r.t.Fatalf("redis-server on port %d does not answer PING", r.port)
	}
}

// shutdownNoSave stops Redis without saving (nothing survives it) and
// waits for the process to exit.
func (r *redisServer) shutdownNoSave() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.admin.Do(ctx, "SHUTDOWN", "NOSAVE").Err() // the connection closes: an error is expected
	select {
	case <-r.exited:
	case <-after(10 * time.Second):
		r.t.Errorf("redis-server ignored SHUTDOWN NOSAVE: killing it")
		r.kill()
	}
}

func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
}

func (r *redisServer) do(args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.admin.Do(ctx, args...).Result()
}

// ---- helper processes ----

// proc is a publisher or consumer process.
type proc struct {
	t      *testing.T
	name   string
	cfg    roleConfig
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *lines
	exited chan struct{}
	errOut string // the stderr file, shared by the restarts of one name
	err    error  // cmd.Wait's, once exited is closed
}

// lines collects the stdout of a helper process.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen []string
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		i := bytes.IndexByte(l.buf.Bytes(), '\n')
		if i < 0 {
			return len(p), nil
		}
		l.seen = append(l.seen, string(l.buf.Next(i + 1)[:i]))
	}
}

func (l *lines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.seen {
		if x == s {
			return true
		}
	}
	return false
}

// startProc starts a helper process and waits until it printed READY.
func startProc(t *testing.T, name string, cfg roleConfig) *proc {
	t.Helper()
	spec, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cfg: cfg, out: &lines{}, exited: make(chan struct{}),
		errOut: filepath.Join(filepath.Dir(cfg.DB), name+".stderr")}
	stderr, err := appendFile(p.errOut)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close() // the child has its own descriptor
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), envRole+"="+string(spec))
	cmd.Stdout = p.out
	cmd.Stderr = stderr
	setPdeathsig(cmd)
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	if err := p.waitLine("READY", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitLine waits until the process printed s.
func (p *proc) waitLine(s string, d time.Duration) error {
	ok, _ := poll(d, func() bool {
		if p.out.has(s) {
			return true
		}
		select {
		case <-p.exited:
			return true
		default:
			return false
		}
	})
	if p.out.has(s) {
		return nil
	}
	if !ok {
		return fmt.Errorf("%s did not print %s within %v; stderr:\n%s", p.name, s, d, tail(p.errOut, 3000))
	}
	return fmt.Errorf("%s exited (%v) before printing %s; stderr:\n%s", p.name, p.err, s, tail(p.errOut, 3000))
}

func (p *proc) isRunning() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop asks the process to close its bus (by closing its stdin) and waits;
// it kills it when that takes longer than 30 s.
func (p *proc) stop() {
	p.t.Helper()
	_ = p.stdin.Close()
	select {
	case <-p.exited:
		if p.err != nil {
			p.t.Errorf("%s exited with %v; stderr:\n%s", p.name, p.err, tail(p.errOut, 3000))
		}
	case <-after(30 * time.Second):
		p.t.Errorf("%s did not close within 30 s: killing it", p.name)
		p.kill()
	}
}

// send writes a command line to the process's stdin.
func (p *proc) send(line string) {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Errorf("send %q to %s: %v", line, p.name, err)
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Errorf("signal %v to %s: %v", sig, p.name, err)
	}
}

// checkAlive fails the test when the process died by itself.
func (p *proc) checkAlive() {
	p.t.Helper()
	if !p.isRunning() {
		p.t.Fatalf("%s exited by itself (%v); stderr:\n%s", p.name, p.err, tail(p.errOut, 3000))
	}
}

// tail returns the last n bytes of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ---- records and handler logs ----

// key identifies an event by what its publisher put into it.
type key struct {
	Name string
	Run  int
	Seq  int
}

// pubRecord is what publishers wrote to their records.
type pubRecord struct {
	attempted map[key]bool
	acked     map[string]key // event ID → event
	errors    []string
	published int // Publish calls
}

func readRecords(t *testing.T, paths ...string) pubRecord {
	t.Helper()
	r := pubRecord{attempted: map[key]bool{}, acked: map[string]key{}}
	for _, path := range paths {
		forLines(t, path, func(f []string) {
			if len(f) < 4 {
				t.Errorf("record %s: bad line %q", path, strings.Join(f, " "))
				return
			}
			run, _ := strconv.Atoi(f[2])
			seq, _ := strconv.Atoi(f[3])
			k := key{f[1], run, seq}
			switch {
			case f[0] == "A":
				r.published++
				r.attempted[k] = true
			case f[0] == "K" && len(f) == 5:
				r.acked[f[4]] = k
			case f[0] == "E":
				r.errors = append(r.errors, strings.Join(f, " "))
			default:
				t.Errorf("record %s: bad line %q", path, strings.Join(f, " "))
			}
		})
	}
	return r
}

// ackedOf returns the acknowledged events of one name (and run, if run >= 0).
func (r pubRecord) ackedOf(name string, run int) map[string]key {
	out := map[string]key{}
	for id, k := range r.acked {
		if k.Name == name && (run < 0 || k.Run == run) {
			out[id] = k
		}
	}
	return out
}

// run is one handler run in a handler log.
type run struct {
	kind    string // S, OK or F
	id      string
	k       key
	attempt int
	log     string
}

// handlerLog is what consumers wrote to their handler logs.
type handlerLog struct {
	runs  []run
	ok    map[string]int // successful runs by event ID
	fail  map[string]int // failed runs by event ID
	keyOf map[string]key
	ids   map[key]map[string]bool // the event IDs a payload arrived under
}

func readHandlerLogs(t *testing.T, paths ...string) handlerLog {
	t.Helper()
	h := handlerLog{ok: map[string]int{}, fail: map[string]int{}, keyOf: map[string]key{}, ids: map[key]map[string]bool{}}
	for _, path := range paths {
		forLines(t, path, func(f []string) {
			if len(f) != 6 {
				t.Errorf("handler log %s: bad line %q", path, strings.Join(f, " "))
				return
			}
			r, _ := strconv.Atoi(f[3])
			s, _ := strconv.Atoi(f[4])
			a, _ := strconv.Atoi(f[5])
			x := run{kind: f[0], id: f[2], k: key{f[1], r, s}, attempt: a, log: path}
			h.runs = append(h.runs, x)
			switch x.kind {
			case "OK":
				h.ok[x.id]++
			case "F":
				h.fail[x.id]++
			case "S":
			default:
				t.Errorf("handler log %s: bad line %q", path, strings.Join(f, " "))
				return
			}
			if old, ok := h.keyOf[x.id]; ok && old != x.k {
				t.Errorf("garbage: event %s handled as %+v and as %+v", x.id, old, x.k)
			}
			h.keyOf[x.id] = x.k
			if h.ids[x.k] == nil {
				h.ids[x.k] = map[string]bool{}
			}
			h.ids[x.k][x.id] = true
		})
	}
	return h
}

// interrupted counts handler runs that started and never ended: runs
// killed mid-handler.
func (h handlerLog) interrupted() int {
	type runKey struct {
		id      string
		attempt int
		log     string
	}
	open := map[runKey]int{}
	for _, r := range h.runs {
		k := runKey{r.id, r.attempt, r.log}
		if r.kind == "S" {
			open[k]++
		} else {
			open[k]--
		}
	}
	n := 0
	for _, v := range open {
		n += max(v, 0)
	}
	return n
}

// forLines calls fn with the fields of every complete line of path. A last
// line without its newline is being written by a live process: it is left
// for the next read.
func forLines(t *testing.T, path string, fn func(fields []string)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if fields := strings.Fields(string(b[:i])); len(fields) > 0 {
			fn(fields)
		}
		b = b[i+1:]
	}
}

// ---- SQLite ----

// openDB opens a bus's SQLite file for inspection, next to the process
// that writes it.
func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// inboxRow is an inbox entry as the consumer stored it.
type inboxRow struct {
	EventID, Handler, EventName, State, LastError string
	Attempts                                      int
	Message                                       []byte
}

func inboxRows(db *sql.DB, consumer string, withMessage bool) ([]inboxRow, error) {
	msg := "x''"
	if withMessage {
		msg = "message"
	}
	rows, err := db.Query(`SELECT event_id, handler, event_name, state, COALESCE(last_error, ''), attempts, `+msg+`
FROM durabus_inbox WHERE consumer = ?`, consumer)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []inboxRow
	for rows.Next() {
		var r inboxRow
		if err := rows.Scan(&r.EventID, &r.Handler, &r.EventName, &r.State, &r.LastError, &r.Attempts, &r.Message); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// inboxStates returns the state of each event's entry of one handler.
func inboxStates(db *sql.DB, consumer, handler string) (map[string]string, error) {
	rows, err := db.Query(`SELECT event_id, state FROM durabus_inbox WHERE consumer = ? AND handler = ?`, consumer, handler)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			return nil, err
		}
		out[id] = state
	}
	return out, rows.Err()
}

// outboxRow is an outbox row as the publisher stored it.
type outboxRow struct {
	EventID, EventName, State, LastError, DeadBy string
	Sends                                        int
}

func outboxRows(db *sql.DB, publisher string) (map[string]outboxRow, error) {
	rows, err := db.Query(`SELECT event_id, event_name, state, COALESCE(last_error, ''), COALESCE(dead_by, ''), sends
FROM durabus_outbox WHERE publisher = ?`, publisher)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]outboxRow{}
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.EventID, &r.EventName, &r.State, &r.LastError, &r.DeadBy, &r.Sends); err != nil {
			return nil, err
		}
		out[r.EventID] = r
	}
	return out, rows.Err()
}

func countStates[R any](rows map[string]R, state func(R) string) string {
	n := map[string]int{}
	for _, r := range rows {
		n[state(r)]++
	}
	var parts []string
	for _, s := range []string{"PENDING", "PROCESSING", "COMPLETED", "DEAD"} {
		parts = append(parts, fmt.Sprintf("%s=%d", s, n[s]))
	}
	return strings.Join(parts, " ")
}

func integrityCheck(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("PRAGMA integrity_check")
	if err != nil {
		t.Fatalf("integrity_check %s: %v", path, err)
	}
	defer rows.Close()
	var res []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		res = append(res, s)
	}
	if len(res) != 1 || res[0] != "ok" {
		t.Errorf("PRAGMA integrity_check of %s: %q", path, res)
	} else {
		t.Logf("PRAGMA integrity_check of %s: ok", filepath.Base(path))
	}
}

// ---- delivery ----

// consumerDB is one consumer's SQLite file opened for inspection.
type consumerDB struct {
	db   *sql.DB
	name string // the consumer's bus Name
}

// waitDelivered polls the consumers' inboxes until each of want has an
// entry of handler in state (in any of them), or d passes. It returns the
// events that reached it and how long that took.
func waitDelivered(t *testing.T, dbs []consumerDB, handler, state string, want map[string]key, d time.Duration) (map[string]bool, time.Duration) {
	t.Helper()
	got := map[string]bool{}
	var lastErr error
	_, took := poll(d, func() bool {
		for _, c := range dbs {
			states, err := inboxStates(c.db, c.name, handler)
			if err != nil {
				lastErr = err
				return false
			}
			for id, s := range states {
				if s == state {
					got[id] = true
				}
			}
		}
		for id := range want {
			if !got[id] {
				return false
			}
		}
		return true
	})
	if lastErr != nil {
		t.Logf("reading an inbox failed at least once: %v", lastErr)
	}
	return got, took
}

// ---- the verdict ----

type tally struct {
	published, acknowledged, delivered, lost, duplicates int
}

// count builds the tally of acknowledged events want: delivered when done
// holds them. Duplicates are handler runs beyond expected(id) (1 when nil),
// over every event of want's names in the handler log.
func count(t *testing.T, rec pubRecord, want map[string]key, done map[string]bool, h handlerLog, expected func(id string) int) tally {
	t.Helper()
	if expected == nil {
		expected = func(string) int { return 1 }
	}
	var tl tally
	tl.acknowledged = len(want)
	names, runs := map[string]bool{}, map[int]bool{}
	for _, k := range want {
		names[k.Name], runs[k.Run] = true, true
	}
	for _, k := range rec.acked {
		names[k.Name], runs[k.Run] = true, true
	}
	var lost []string
	for id, k := range want {
		if !done[id] {
			lost = append(lost, fmt.Sprintf("%s(%s run %d seq %d)", id, k.Name, k.Run, k.Seq))
			continue
		}
		tl.delivered++
		if hk, ok := h.keyOf[id]; ok && hk != k {
			t.Errorf("garbage: event %s was published as %+v and handled as %+v", id, k, hk)
		}
		if h.ok[id]+h.fail[id] == 0 {
			t.Errorf("event %s (%+v) is delivered in the inbox but its handler never logged a run", id, k)
		}
	}
	tl.lost = len(lost)
	if len(lost) > 0 {
		sort.Strings(lost)
		t.Logf("lost (first 10 of %d): %v", len(lost), lost[:min(10, len(lost))])
	}
	for id, k := range h.keyOf {
		if !names[k.Name] || !runs[k.Run] {
			continue
		}
		if !rec.attempted[k] {
			t.Errorf("garbage: event %s carries %+v, which no publisher published", id, k)
		}
		if n := len(h.ids[k]); n > 1 {
			t.Errorf("garbage: %+v was handled under %d event IDs", k, n)
		}
		tl.duplicates += max(0, h.ok[id]+h.fail[id]-expected(id))
	}
	return tl
}

// report prints the scenario's line and fails the test when events were lost.
func report(t *testing.T, name string, published int, tl tally) {
	t.Helper()
	tl.published = published
	line := fmt.Sprintf("scenario=%s published=%d acknowledged=%d delivered=%d lost=%d duplicates=%d\n",
		name, tl.published, tl.acknowledged, tl.delivered, tl.lost, tl.duplicates)
	fmt.Print(line)
	// FAULTTEST_REPORT collects the lines of a run that does not use -v.
	if path := os.Getenv("FAULTTEST_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString(line)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			t.Errorf("write FAULTTEST_REPORT: %v", err)
		}
	}
	if tl.lost > 0 {
		t.Errorf("scenario %s lost %d of %d acknowledged events", name, tl.lost, tl.acknowledged)
	}
	if tl.acknowledged == 0 {
		t.Errorf("scenario %s: no event was acknowledged, nothing was tested", name)
	}
}
