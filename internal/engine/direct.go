package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/durabus/durabus/internal/store"
	"github.com/durabus/durabus/internal/wire"
)

// Direct runs. A new event (intake.go checked it) with one local handler
// runs at once in the call that received it, when one of the Concurrency
// slots is free or frees within slotWait. Its inbox row is written once,
// with the outcome, before the event is acknowledged: one row write per
// event instead of an insert, a claim and a completion.
//
// Nothing is acknowledged before the row is on disk, so a crash during the
// run leaves the event to its publisher's re-send, as a crash inside a
// handler always does. A handler that is still running after directBudget
// is "spilled": its row is stored as a claimed, running entry and receipt
// is acknowledged, so the publisher stops re-sending long before
// PendingDelay; the run then ends like any claimed entry's.

// directBudget is how long a direct run may go on before its row is stored.
const directBudget = 50 * time.Millisecond

// slotWait is how long a fresh event waits for a free slot before it is
// stored for the workers instead.
const slotWait = 10 * time.Millisecond

// Run states.
const (
	directRunning int32 = iota
	directFinished
	directSpilled
)

type directRun struct {
	env     *wire.Envelope
	msg     []byte
	h       Handler
	started time.Time
	state   atomic.Int32
	// stored is closed once a spilled run's row is written (or could not
	// be).
	stored chan struct{}
	// For spilled runs, set before stored closes.
	id       int64
	spillErr error
}

// directRuns tracks the direct runs in progress and spills slow ones. It
// also keeps two copies of one event from being stored at once (a re-send
// and a recall, say): the second waits until the first is on disk, and
// then finds it there.
type directRuns struct {
	e      *Engine
	mu     sync.Mutex
	active map[string]*directRun    // running, by event id
	held   map[string]chan struct{} // events being stored, by id
	idle   bool                     // the loop waits without a deadline: kick it
	kick   chan struct{}
}

func newDirectRuns(e *Engine) *directRuns {
	return &directRuns{e: e, active: map[string]*directRun{}, held: map[string]chan struct{}{}, kick: make(chan struct{}, 1)}
}

// hold reserves event id for the caller until release is called, waiting
// while another copy of it holds it.
func (d *directRuns) hold(ctx context.Context, id string) (release func(), err error) {
	for {
		d.mu.Lock()
		other, busy := d.held[id]
		if !busy {
			mine := make(chan struct{})
			d.held[id] = mine
			d.mu.Unlock()
			return func() {
				d.mu.Lock()
				delete(d.held, id)
				d.mu.Unlock()
				close(mine)
			}, nil
		}
		d.mu.Unlock()
		select {
		case <-other:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tryDirect runs a new event directly when it can and reports whether it
// did; otherwise the caller stores it for the workers.
func (e *Engine) tryDirect(ctx context.Context, env *wire.Envelope, msg []byte, hs []Handler) (bool, error) {
	if env.Replay || len(hs) != 1 || e.isClosed() {
		return false, nil // a closing bus stores what still arrives, for the next start
	}
	// Handlers that finish quickly free their slots quickly: wait a moment
	// for one rather than store the event for later at three times the cost.
	if !e.workers.waitSlot(ctx, slotWait) {
		return false, nil
	}
	slot := true
	release := func() {
		if slot {
			slot = false
			e.workers.giveSlot()
		}
	}
	defer release()
	d := e.direct
	r := &directRun{env: env, msg: msg, h: hs[0], started: time.Now(), stored: make(chan struct{})}
	d.mu.Lock()
	d.active[env.EventID] = r
	idle := d.idle
	d.idle = false
	d.mu.Unlock()
	if idle {
		wake(d.kick)
	}
	defer func() {
		d.mu.Lock()
		delete(d.active, env.EventID)
		d.mu.Unlock()
	}()

	runErr := e.runHandler(r.h, msg, env, 1)
	release() // the slot bounds running handlers, not stores
	if r.state.CompareAndSwap(directRunning, directFinished) {
		return true, e.storeOutcome(r, runErr)
	}
	// Spilled: the row was stored as a running entry; finish it as one.
	<-r.stored
	if r.spillErr != nil {
		return true, r.spillErr // not acknowledged: the publisher re-sends
	}
	run := store.InboxRun{ID: r.id, EventID: env.EventID, Handler: r.h.Name, EventName: env.EventName,
		Publisher: env.PublishedBy, Message: msg, Attempts: 1}
	e.workers.untrack(r.id)
	if runErr != nil && e.runCtx.Err() != nil {
		e.postpone(run, false, e.nowMS(), "") // Close gave up on it
		return true, nil
	}
	e.finish(run, runErr)
	return true, nil
}

// runHandler runs h under the engine's run context and HandlerTimeout.
func (e *Engine) runHandler(h Handler, msg []byte, env *wire.Envelope, attempt int) error {
	ctx, cancel := context.WithTimeout(e.runCtx, e.cfg.HandlerTimeout)
	defer cancel()
	return h.Run(ctx, msg, env, attempt)
}

// storeOutcome writes the row of a direct run that finished in time, with
// its outcome, and acknowledges it.
func (e *Engine) storeOutcome(r *directRun, runErr error) error {
	now := e.nowMS()
	row := store.InboxRow{Consumer: e.cfg.Name, EventID: r.env.EventID, Handler: r.h.Name, EventName: r.env.EventName,
		Publisher: r.env.PublishedBy, Message: r.msg, Attempts: 1, Now: now}
	var o outcome
	if runErr != nil && e.runCtx.Err() != nil {
		// Close gave up on it: due at once for the next bus on this file.
		o = outcome{state: store.Processing, due: now}
	} else {
		o = e.outcome(1, runErr, now)
	}
	row.State, row.DueAt = o.state, o.due
	if runErr != nil {
		row.LastError = runErr.Error()
	}
	ack := store.Ack{EventID: r.env.EventID, Group: e.cfg.Name, Status: o.state}
	if o.state == store.Processing {
		ack.Status = store.Received
	} else if o.state == store.Dead {
		ack.Error = row.LastError
	}
	local := r.env.PublishedBy == e.cfg.Name
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		if _, err := e.st.InsertInboxID(ctx, q, row); err != nil {
			return err
		}
		if local {
			_, err := e.st.ApplyAck(ctx, q, e.cfg.Name, ack, now+e.cfg.PendingDelay.Milliseconds(), now)
			return err
		}
		return nil
	})
	if err != nil {
		e.log.Error("durabus: store the outcome of a handler; the publisher re-sends the event", "event", r.env.EventID, "err", err)
		return fmt.Errorf("store event %s: %w", r.env.EventID, err)
	}
	if o.state == store.Dead {
		e.reportDead(store.InboxRun{EventID: r.env.EventID, EventName: r.env.EventName, Handler: r.h.Name, Attempts: 1, Message: r.msg}, runErr)
	}
	if local {
		e.flow.done(r.env.EventID)
	} else {
		e.acks.add(r.env.PublishedBy, ack)
	}
	return nil
}

// loop spills direct runs that outlive directBudget, until ctx ends.
func (d *directRuns) loop(ctx context.Context) {
	t := time.NewTimer(directBudget)
	t.Stop()
	for {
		d.mu.Lock()
		var late []*directRun
		next := time.Duration(-1)
		now := time.Now()
		for _, r := range d.active {
			if r.state.Load() != directRunning {
				continue
			}
			left := directBudget - now.Sub(r.started)
			if left <= 0 {
				if r.state.CompareAndSwap(directRunning, directSpilled) {
					late = append(late, r)
				}
				continue
			}
			if next < 0 || left < next {
				next = left
			}
		}
		d.idle = len(late) == 0 && next < 0
		d.mu.Unlock()
		if len(late) > 0 {
			d.spill(late)
			continue
		}
		var tick <-chan time.Time
		if next >= 0 {
			t.Reset(next)
			tick = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-tick:
		}
		t.Stop()
	}
}

// spill stores slow direct runs as claimed, running entries and
// acknowledges their receipt.
func (d *directRuns) spill(runs []*directRun) {
	e := d.e
	now := e.nowMS()
	lease := now + leaseTime.Milliseconds()
	err := e.w.Do(context.Background(), func(ctx context.Context, q store.Querier) error {
		for _, r := range runs {
			row := store.InboxRow{Consumer: e.cfg.Name, EventID: r.env.EventID, Handler: r.h.Name, EventName: r.env.EventName,
				Publisher: r.env.PublishedBy, State: store.Processing, Message: r.msg, Attempts: 1, DueAt: lease, Now: now}
			id, err := e.st.InsertInboxID(ctx, q, row)
			if err != nil {
				return err
			}
			r.id = id // 0: another bus on this database stored it meanwhile
			if id != 0 && r.env.PublishedBy == e.cfg.Name {
				ack := store.Ack{EventID: r.env.EventID, Group: e.cfg.Name, Status: store.Received}
				if _, err := e.st.ApplyAck(ctx, q, e.cfg.Name, ack, now+e.cfg.PendingDelay.Milliseconds(), now); err != nil {
					return err
				}
			}
		}
		return nil
	})
	for _, r := range runs {
		switch {
		case err != nil:
			r.spillErr = fmt.Errorf("store running event %s: %w", r.env.EventID, err)
			e.log.Warn("durabus: store a running event; its publisher re-sends it", "event", r.env.EventID, "err", err)
		case r.id == 0:
			r.spillErr = errors.New("the event was stored meanwhile by another bus on this database")
		default:
			e.workers.track(r.id)
			e.flow.done(r.env.EventID)
			if r.env.PublishedBy != e.cfg.Name {
				e.acks.add(r.env.PublishedBy, store.Ack{EventID: r.env.EventID, Group: e.cfg.Name, Status: store.Received})
			}
		}
		close(r.stored)
	}
}
