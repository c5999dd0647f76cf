package faulttest

// The roles: what a re-executed test binary does as a publisher or as a
// consumer. The parent process passes a roleConfig as JSON in envRole; the
// role prints READY once it can work (and DONE when a publisher has made
// all its Publish calls), and shuts down gracefully when its stdin closes,
// which also happens when the parent dies.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/redispubsub"
)

// envRole selects the role of a helper process and carries its roleConfig.
const envRole = "DURABUS_FAULTTEST_ROLE"

// Event names and handler names of the suite.
const (
	eventName     = "fault.event"
	doomedName    = "fault.doomed"
	doomedHandler = "doomed"
)

// Bus settings every role uses, so that recovery is quick. With a hello
// every second, a consumer group silent for 3 s is offline for its
// publishers, so the scenarios' outages take groups offline and back.
const (
	pendingDelay  = 500 * time.Millisecond
	pollInterval  = 100 * time.Millisecond
	helloInterval = time.Second
)

var retryPolicy = durabus.ExponentialBackoff{Base: 50 * time.Millisecond, Cap: 2 * time.Second}

// faultEvent is the event every scenario publishes. Check ties the payload
// to its run and sequence number, so that a mangled payload fails Validate.
type faultEvent struct {
	Run   int    `json:"run"`
	Seq   int    `json:"seq"`
	Check string `json:"check"`
	Pad   string `json:"pad,omitempty"`
}

func (faultEvent) EventName() string { return eventName }

func (e faultEvent) Validate() error {
	if e.Check != checksum(e.Run, e.Seq) {
		return fmt.Errorf("check %q does not match run %d seq %d", e.Check, e.Run, e.Seq)
	}
	return nil
}

// doomedEvent is handled by a handler that always fails.
type doomedEvent struct {
	Run   int    `json:"run"`
	Seq   int    `json:"seq"`
	Check string `json:"check"`
}

func (doomedEvent) EventName() string { return doomedName }

func (e doomedEvent) Validate() error {
	if e.Check != checksum(e.Run, e.Seq) {
		return fmt.Errorf("check %q does not match run %d seq %d", e.Check, e.Run, e.Seq)
	}
	return nil
}

func checksum(run, seq int) string {
	return fmt.Sprintf("%08x", crc32.ChecksumIEEE(fmt.Appendf(nil, "durabus-fault:%d:%d", run, seq)))
}

// flaky reports whether the handler-failures scenario makes seq fail twice
// before it succeeds: 30% of the events.
func flaky(seq int) bool { return seq%10 < 3 }

// roleConfig is what the parent tells a helper process to be.
type roleConfig struct {
	Role  string `json:"role"` // "publisher" or "consumer"
	Name  string `json:"name"` // the bus's Name
	DB    string `json:"db"`
	Redis string `json:"redis"` // redis:// URL
	Log   string `json:"log"`   // the publisher's record, or the consumer's handler log

	MaxRetries     int           `json:"maxRetries"`
	Concurrency    int           `json:"concurrency"`
	HandlerTimeout time.Duration `json:"handlerTimeout"`

	// Publisher.
	Run     int  `json:"run"`     // goes into every payload
	Events  int  `json:"events"`  // faultEvents to publish
	Doomed  int  `json:"doomed"`  // doomedEvents to publish after them
	Workers int  `json:"workers"` // goroutines calling Publish
	Rate    int  `json:"rate"`    // Publish calls per second in all, 0: as fast as possible
	Pad     int  `json:"pad"`     // bytes of padding in each payload
	Resume  bool `json:"resume"`  // publish nothing: only let the relay finish the outbox
	// Groups are the consumer groups the publisher must have heard of (by
	// their hello) before it prints READY, so that its events are tracked
	// per group from the first one.
	Groups []string `json:"groups"`
	Gate   bool     `json:"gate"` // after READY, wait for a GO line on stdin before publishing

	// Consumer.
	WorkMin   time.Duration `json:"workMin"` // simulated work of each handler run
	WorkMax   time.Duration `json:"workMax"`
	LogStarts bool          `json:"logStarts"` // log the start of every handler run
	Flaky     bool          `json:"flaky"`     // 30% of the events fail twice
	DoomHard  bool          `json:"doomHard"`  // add the always-failing handler of doomedEvent
}

// TestHelperProcess is not a test: it is the entry point of the publisher
// and consumer processes that the scenarios start. It does nothing unless
// envRole is set.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv(envRole)
	if spec == "" {
		return
	}
	var c roleConfig
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		fmt.Fprintf(os.Stderr, "helper: bad %s: %v\n", envRole, err)
		os.Exit(2)
	}
	var err error
	switch c.Role {
	case "publisher":
		err = runPublisher(c)
	case "consumer":
		err = runConsumer(c)
	default:
		err = fmt.Errorf("unknown role %q", c.Role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s %s: %v\n", c.Role, c.Name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// control reads the parent's commands on stdin: go is closed by a GO line,
// stop when stdin closes (also when the parent dies).
func control() (goCh, stop <-chan struct{}) {
	g, st := make(chan struct{}), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		opened := false
		for sc.Scan() {
			if sc.Text() == "GO" && !opened {
				close(g)
				opened = true
			}
		}
		close(st)
	}()
	return g, st
}

type bus = durabus.Bus[durabus.Event, durabus.Event]

func openBus(c roleConfig) (*bus, *redispubsub.PubSub, error) {
	ps, err := redispubsub.NewURL(c.Redis)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
		Name:           c.Name,
		Path:           c.DB,
		PubSub:         ps,
		MaxRetries:     c.MaxRetries,
		PendingDelay:   pendingDelay,
		RetryPolicy:    retryPolicy,
		PollInterval:   pollInterval,
		HelloInterval:  helloInterval,
		Concurrency:    c.Concurrency,
		HandlerTimeout: c.HandlerTimeout,
		Retention:      -1, // keep COMPLETED rows: they are the evidence
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		_ = ps.Close()
		return nil, nil, err
	}
	return b, ps, nil
}

func closeBus(b *bus, ps *redispubsub.PubSub) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := b.Close(ctx)
	return errors.Join(err, ps.Close())
}

// appendFile opens path for appending. Each line is written with a single
// write(2) on an O_APPEND file: once written it survives a SIGKILL of the
// writer, and lines of concurrent writers never interleave.
func appendFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

func writeLine(f *os.File, format string, args ...any) {
	if _, err := f.Write(fmt.Appendf(nil, format, args...)); err != nil {
		fmt.Fprintf(os.Stderr, "helper: write %s: %v\n", f.Name(), err)
		os.Exit(3) // a record we cannot write makes the counts wrong
	}
}

// runPublisher publishes c.Events faultEvents and c.Doomed doomedEvents from
// c.Workers goroutines. Its record has a line "A name run seq" before every
// Publish call and "K name run seq id" after every call that returned nil.
func runPublisher(c roleConfig) error {
	goCh, stop := control()
	b, ps, err := openBus(c)
	if err != nil {
		return err
	}
	if err := awaitGroups(b, c); err != nil {
		_ = closeBus(b, ps)
		return err
	}
	fmt.Println("READY")
	if c.Gate {
		select {
		case <-goCh:
		case <-stop:
			return closeBus(b, ps)
		}
	}
	if !c.Resume {
		if err := publishAll(b, c); err != nil {
			_ = closeBus(b, ps)
			return err
		}
		fmt.Println("DONE")
	}
	<-stop
	return closeBus(b, ps)
}

// awaitGroups polls the bus's Stats until it has heard of every group in
// c.Groups, for every event name c publishes.
func awaitGroups(b *bus, c roleConfig) error {
	if len(c.Groups) == 0 {
		return nil
	}
	names := []string{eventName}
	if c.Doomed > 0 {
		names = append(names, doomedName)
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := b.Stats(context.Background())
		if err != nil {
			return err
		}
		known := 0
		for _, g := range s.Groups {
			if slices.Contains(c.Groups, g.Name) && !slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(g.Events, n) }) {
				known++
			}
		}
		if known == len(c.Groups) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no hello from consumer groups %v within 30 s (heard of %+v)", c.Groups, s.Groups)
		}
		<-tick.C
	}
}

func publishAll(b *bus, c roleConfig) error {
	rec, err := appendFile(c.Log)
	if err != nil {
		return err
	}
	defer rec.Close()
	total := c.Events + c.Doomed
	var tokens chan struct{}
	if c.Rate > 0 {
		tokens = make(chan struct{})
		go func() { // paces the Publish calls; not synchronisation
			tick := time.NewTicker(time.Second / time.Duration(c.Rate))
			defer tick.Stop()
			for range total {
				<-tick.C
				tokens <- struct{}{}
			}
		}()
	}
	pad := strings.Repeat("p", c.Pad)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(c.Workers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				if tokens != nil {
					<-tokens
				}
				var e durabus.Event
				name, seq := eventName, i
				if i < c.Events {
					e = faultEvent{Run: c.Run, Seq: seq, Check: checksum(c.Run, seq), Pad: pad}
				} else {
					name, seq = doomedName, i-c.Events
					e = doomedEvent{Run: c.Run, Seq: seq, Check: checksum(c.Run, seq)}
				}
				writeLine(rec, "A %s %d %d\n", name, c.Run, seq)
				id, err := b.Publish(context.Background(), e)
				if err != nil {
					writeLine(rec, "E %s %d %d %q\n", name, c.Run, seq, err.Error())
					continue
				}
				writeLine(rec, "K %s %d %d %s\n", name, c.Run, seq, id)
			}
		})
	}
	wg.Wait()
	return nil
}

// runConsumer handles faultEvents (and doomedEvents with DoomHard). Its
// handler log has a line "OK name id run seq attempt" for every successful
// run and "F ..." for every failed one; with LogStarts also "S ..." when a
// run starts.
func runConsumer(c roleConfig) error {
	_, stop := control()
	hlog, err := appendFile(c.Log)
	if err != nil {
		return err
	}
	defer hlog.Close()
	b, ps, err := openBus(c)
	if err != nil {
		return err
	}
	work := func(ctx context.Context) error {
		if c.WorkMax <= 0 {
			return nil
		}
		d := c.WorkMin + time.Duration(time.Now().UnixNano()%int64(c.WorkMax-c.WorkMin+1))
		t := time.NewTimer(d) // simulated work of the handler
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err = durabus.Handle(b, func(ctx context.Context, env durabus.Envelope[faultEvent]) error {
		p := env.Payload
		if c.LogStarts {
			writeLine(hlog, "S %s %s %d %d %d\n", eventName, env.EventID, p.Run, p.Seq, env.Attempt)
		}
		if err := work(ctx); err != nil {
			writeLine(hlog, "F %s %s %d %d %d\n", eventName, env.EventID, p.Run, p.Seq, env.Attempt)
			return err
		}
		if c.Flaky && flaky(p.Seq) && env.Attempt <= 2 {
			writeLine(hlog, "F %s %s %d %d %d\n", eventName, env.EventID, p.Run, p.Seq, env.Attempt)
			return fmt.Errorf("flaky: seq %d fails on attempt %d", p.Seq, env.Attempt)
		}
		writeLine(hlog, "OK %s %s %d %d %d\n", eventName, env.EventID, p.Run, p.Seq, env.Attempt)
		return nil
	})
	if err == nil && c.DoomHard {
		err = durabus.Handle(b, func(ctx context.Context, env durabus.Envelope[doomedEvent]) error {
			p := env.Payload
			writeLine(hlog, "F %s %s %d %d %d\n", doomedName, env.EventID, p.Run, p.Seq, env.Attempt)
			return fmt.Errorf("doomed: seq %d always fails (attempt %d)", p.Seq, env.Attempt)
		}, durabus.WithHandlerName(doomedHandler))
	}
	if err != nil {
		_ = closeBus(b, ps)
		return err
	}
	fmt.Println("READY")
	<-stop
	return closeBus(b, ps)
}
