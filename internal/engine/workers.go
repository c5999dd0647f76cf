package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/durabus/durabus/internal/store"
)

// workers run handlers on inbox rows: one dispatcher claims due rows with a
// lease (so a crash leaves them to be picked up again) and hands them to a
// fixed pool of Concurrency goroutines. Every handler run, a worker's or a
// direct one (direct.go), holds one of Concurrency slots while it runs.
type workers struct {
	e         *Engine
	mu        sync.Mutex
	running   map[int64]struct{} // inbox ids whose handler runs now
	renewStop chan struct{}
	renewDone chan struct{}
	jobs      chan store.InboxRun
	freed     chan struct{}
	quit      chan struct{}
	idle      atomic.Int64  // workers without a job
	slots     chan struct{} // one per running handler
	starved   atomic.Bool   // the dispatcher waits for a free slot
	wg        sync.WaitGroup
	startOnce sync.Once
	stopOnce  sync.Once
}

func newWorkers(e *Engine) *workers {
	return &workers{e: e, jobs: make(chan store.InboxRun), slots: make(chan struct{}, e.cfg.Concurrency), freed: make(chan struct{}, 1), quit: make(chan struct{}),
		running: map[int64]struct{}{}, renewStop: make(chan struct{}), renewDone: make(chan struct{})}
}

// start launches the pool; called when the first handler is added.
func (w *workers) start() {
	w.startOnce.Do(func() {
		n := w.e.cfg.Concurrency
		w.idle.Store(int64(n))
		w.wg.Add(n)
		for range n {
			go w.work()
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.dispatch()
			close(w.jobs) // the workers finish what they hold, then exit
		}()
		go w.renewLoop()
	})
}

// A claimed entry is leased for leaseTime and the lease is renewed while
// its handler runs, so that the entry of a process that crashed runs again
// soon, however long handlers take.
const (
	leaseTime  = 15 * time.Second
	renewEvery = leaseTime / 3
)

// renewLoop extends the leases of running entries until the workers stopped.
func (w *workers) renewLoop() {
	defer close(w.renewDone)
	t := time.NewTicker(renewEvery)
	defer t.Stop()
	for {
		select {
		case <-w.renewStop:
			return
		case <-t.C:
		}
		w.mu.Lock()
		ids := make([]int64, 0, len(w.running))
		for id := range w.running {
			ids = append(ids, id)
		}
		w.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		until := w.e.nowMS() + leaseTime.Milliseconds()
		err := w.e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
			return w.e.st.InboxRenew(ctx, q, ids, until)
		})
		if err != nil {
			w.e.log.Warn("durabus: renew handler leases", "err", err)
		}
	}
}

// stop stops claiming, waits for running handlers and their results.
func (w *workers) stop() {
	w.stopOnce.Do(func() {
		close(w.quit)
		w.startOnce.Do(func() { close(w.renewDone) }) // never started: nothing to renew
		w.wg.Wait()
		close(w.renewStop) // handlers are done: their leases need no renewal
	})
	<-w.renewDone
}

func (w *workers) dispatch() {
	e := w.e
	failures := 0
	for {
		select {
		case <-w.quit:
			return
		case <-e.closed: // Close started: claim nothing more
			return
		default:
		}
		free := min(int(w.idle.Load()), cap(w.slots)-len(w.slots))
		var runs []store.InboxRun
		var err error
		if free > 0 {
			runs, err = w.claim(free)
		}
		if err != nil {
			failures++
			e.log.Warn("durabus: claim inbox rows", "err", err, "failures", failures)
			w.wait(min(e.cfg.Backoff(failures), e.cfg.PollInterval*5))
			continue
		}
		failures = 0
		for _, r := range runs {
			w.track(r.ID) // its lease is renewed from now on
			w.idle.Add(-1)
			w.jobs <- r
		}
		if free == 0 || len(runs) == free {
			// All busy: a freed worker or slot wakes us.
			w.starved.Store(true)
			w.wait(e.cfg.PollInterval)
			w.starved.Store(false)
			continue
		}
		if len(runs) == 0 {
			w.wait(w.untilNextDue())
		}
	}
}

func (w *workers) claim(n int) ([]store.InboxRun, error) {
	e := w.e
	now := e.nowMS()
	lease := now + leaseTime.Milliseconds()
	var runs []store.InboxRun
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		var err error
		runs, err = e.st.ClaimInbox(ctx, q, e.cfg.Name, now, lease, n)
		return err
	})
	return runs, err
}

func (w *workers) untilNextDue() time.Duration {
	e := w.e
	due, ok, err := e.st.NextInboxDue(context.Background(), e.rd, e.cfg.Name)
	if err != nil || !ok {
		return e.cfg.PollInterval
	}
	return min(e.cfg.PollInterval, time.Duration(due-e.nowMS())*time.Millisecond)
}

func (w *workers) wait(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.quit:
	case <-t.C:
	case <-w.e.workWake:
	case <-w.freed:
	}
}

// takeSlot takes a slot for a direct run; false when all are taken.
func (w *workers) takeSlot() bool {
	select {
	case w.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// waitSlot is takeSlot waiting up to d for a slot to free.
func (w *workers) waitSlot(ctx context.Context, d time.Duration) bool {
	if w.takeSlot() {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case w.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	case <-w.quit:
	}
	return false
}

// giveSlot returns a slot.
func (w *workers) giveSlot() {
	<-w.slots
	if w.starved.Load() {
		wake(w.freed)
	}
}

// track renews the lease of entry id while its handler runs elsewhere;
// untrack stops that.
func (w *workers) track(id int64) {
	w.mu.Lock()
	w.running[id] = struct{}{}
	w.mu.Unlock()
}

func (w *workers) untrack(id int64) {
	w.mu.Lock()
	delete(w.running, id)
	w.mu.Unlock()
}

func (w *workers) work() {
	defer w.wg.Done()
	for r := range w.jobs {
		w.slots <- struct{}{} // may wait for a direct run to end
		w.e.run(r)
		<-w.slots
		w.untrack(r.ID)
		w.idle.Add(1)
		wake(w.freed)
	}
}

// noHandlerReason is the last_error of an entry postponed because its
// handler is not registered (yet); AddHandler makes such entries due again.
func noHandlerReason(event, handler string) string {
	return fmt.Sprintf("no handler registered: no handler named %q for event %q", handler, event)
}

// run runs one handler on one row and records the outcome.
func (e *Engine) run(r store.InboxRun) {
	h, ok := e.handler(r.EventName, r.Handler)
	if !ok {
		reason := noHandlerReason(r.EventName, r.Handler)
		e.log.Warn("durabus: inbox entry waits for its handler", "event", r.EventName, "handler", r.Handler)
		e.postpone(r, true, e.nowMS()+time.Minute.Milliseconds(), reason)
		return
	}
	if e.runCtx.Err() != nil {
		e.postpone(r, true, e.nowMS(), "") // claimed as Close gave up: not run, not counted
		return
	}
	err := e.runHandler(h, r.Message, nil, r.Attempts)
	if err != nil && e.runCtx.Err() != nil {
		// Close gave up on it: release the lease so that the next bus on this
		// file runs it at once. The attempt counts, as after a crash.
		e.postpone(r, false, e.nowMS(), "")
		return
	}
	e.finish(r, err)
}

// postpone makes a claimed row due at dueAt; uncount gives its attempt back.
func (e *Engine) postpone(r store.InboxRun, uncount bool, dueAt int64, reason string) {
	now := e.nowMS()
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		return e.st.InboxPostpone(ctx, q, r.ID, uncount, dueAt, reason, now)
	})
	if err != nil {
		e.log.Warn("durabus: postpone inbox entry; it runs again after its lease", "event", r.EventID, "err", err)
	}
}

// outcome is what a run's result makes of its inbox row.
type outcome struct {
	state string // COMPLETED, DEAD, or PROCESSING for a retry
	due   int64  // when a retry is due
}

// outcome classifies the result of the attempts-th run.
func (e *Engine) outcome(attempts int, runErr error, now int64) outcome {
	if runErr == nil {
		return outcome{state: store.Completed}
	}
	unrecoverable, after := e.cfg.Classify(runErr)
	if unrecoverable || attempts > e.cfg.MaxRetries {
		return outcome{state: store.Dead}
	}
	if after <= 0 {
		after = e.cfg.Backoff(attempts)
	}
	return outcome{state: store.Processing, due: now + after.Milliseconds()}
}

// finish records a handler's outcome and tells the publisher once every
// handler of the event is done.
func (e *Engine) finish(r store.InboxRun, runErr error) {
	now := e.nowMS()
	o := e.outcome(r.Attempts, runErr, now)
	ack := store.Ack{EventID: r.EventID, Group: e.cfg.Name}
	local := r.Publisher == e.cfg.Name
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		var err error
		switch o.state {
		case store.Completed:
			err = e.st.InboxComplete(ctx, q, r.ID, now)
		case store.Dead:
			err = e.st.InboxDead(ctx, q, r.ID, runErr.Error(), now)
		default:
			return e.st.InboxRetry(ctx, q, r.ID, o.due, runErr.Error(), now)
		}
		if err != nil {
			return err
		}
		st, _, err := e.st.InboxEventStatus(ctx, q, e.cfg.Name, r.EventID)
		ack.Status, ack.Error, ack.Replay = st.Status, st.LastError, st.Replay
		if err != nil || ack.Status == store.Received || ack.Status == "" || !local {
			return err
		}
		_, err = e.st.ApplyAck(ctx, q, e.cfg.Name, ack, now, now)
		return err
	})
	if err != nil {
		e.log.Error("durabus: record handler outcome; the row runs again after its lease", "event", r.EventID, "handler", r.Handler, "err", err)
		return
	}
	if o.state == store.Dead {
		e.reportDead(r, runErr)
	}
	if !local && o.state != store.Processing && ack.Status != store.Received && ack.Status != "" && r.Publisher != "" {
		e.acks.add(r.Publisher, ack)
	}
}

// reportDead logs an entry that just became DEAD and calls OnDead.
func (e *Engine) reportDead(r store.InboxRun, runErr error) {
	e.log.Warn("durabus: event is DEAD", "event", r.EventName, "id", r.EventID, "handler", r.Handler, "attempts", r.Attempts, "err", runErr)
	if e.cfg.OnDead != nil {
		e.cfg.OnDead(e.runCtx, Dead{EventID: r.EventID, EventName: r.EventName, Handler: r.Handler, Attempts: r.Attempts, Err: runErr, Message: r.Message})
	}
}
