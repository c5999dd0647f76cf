package engine

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/durabus/durabus/internal/wire"
)

// Every received event is checked before it is stored or run: does this
// replica hold its claim (replicas of one group race for each event), and
// has this bus stored it before (a re-send)? Messages arrive many at a
// time, so one goroutine checks all that wait together, with one pipelined
// round of claims and one indexed read, as the writer commits many at once.

// BatchClaimer is the optional pipelined Claim.
type BatchClaimer interface {
	ClaimBatch(ctx context.Context, keys []string, owner string, ttl time.Duration) ([]bool, error)
}

// maxCheckBatch bounds the events one check round takes.
const maxCheckBatch = 512

type check struct {
	env  *wire.Envelope
	mine bool // this bus should store it (it holds the claim, or has it)
	seen bool // this bus stored it before
	err  error
	done chan struct{} // receives once, when the check ran
}

// checks are reused, as the writer's ops are: one goes back to the pool
// once its caller has its answer, when checkLoop no longer holds it.
var checkPool = sync.Pool{New: func() any { return &check{done: make(chan struct{}, 1)} }}

// checkEvent runs the checks of env, batched with those of other messages.
func (e *Engine) checkEvent(ctx context.Context, env *wire.Envelope) (mine, seen bool, err error) {
	c := checkPool.Get().(*check)
	c.env = env
	select {
	case e.checks <- c:
	case <-ctx.Done():
		c.recycle()
		return false, false, ctx.Err()
	}
	select {
	case <-c.done:
		mine, seen, err = c.mine, c.seen, c.err
		c.recycle()
		return mine, seen, err
	case <-ctx.Done():
		return false, false, ctx.Err() // c may still be checked: not reused
	}
}

func (c *check) recycle() {
	*c = check{done: c.done}
	checkPool.Put(c)
}

// checkLoop answers checks until ctx ends.
func (e *Engine) checkLoop(ctx context.Context) {
	batch := make([]*check, 0, maxCheckBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case c := <-e.checks:
			batch = append(batch, c)
		}
	fill:
		for len(batch) < maxCheckBatch {
			select {
			case c := <-e.checks:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		e.runChecks(ctx, batch)
		for _, c := range batch {
			c.done <- struct{}{}
		}
	}
}

func (e *Engine) runChecks(ctx context.Context, batch []*check) {
	ids := make([]string, len(batch))
	for i, c := range batch {
		ids[i] = c.env.EventID
	}
	// The read and the claims do not depend on each other: the claims go to
	// the broker while the read runs.
	var held []bool
	var claimErr error
	var wg sync.WaitGroup
	if e.claimer != nil {
		wg.Go(func() { held, claimErr = e.claim(ctx, batch) })
	}
	seen, err := e.st.Seen(ctx, e.rd, e.cfg.Name, ids)
	wg.Wait()
	if err != nil {
		for _, c := range batch {
			c.err = fmt.Errorf("check event %s: %w", c.env.EventID, err)
		}
		return
	}
	if claimErr != nil {
		// A claim that fails to reach the broker counts as won: a
		// duplicate is better than a loss.
		e.log.Debug("durabus: claim failed; storing the events anyway", "events", len(batch), "err", claimErr)
		held = nil
	}
	for i, c := range batch {
		c.seen = seen[c.env.EventID]
		// A claim lost on an event this bus stored is still answered; a
		// replay is claimed apart from the first delivery.
		c.mine = held == nil || held[i] || (!c.env.Replay && c.seen)
	}
}

// claim races for the batch's events when replicas share the group, and
// reports which this replica holds.
func (e *Engine) claim(ctx context.Context, batch []*check) ([]bool, error) {
	keys := make([]string, len(batch))
	for i, c := range batch {
		keys[i] = e.claimKey(c.env)
	}
	if bc, ok := e.claimer.(BatchClaimer); ok {
		return bc.ClaimBatch(ctx, keys, e.instance, e.cfg.ClaimTTL)
	}
	held := make([]bool, len(keys))
	for i, k := range keys {
		var err error
		if held[i], err = e.claimer.Claim(ctx, k, e.instance, e.cfg.ClaimTTL); err != nil {
			return nil, err
		}
	}
	return held, nil
}

func (e *Engine) claimKey(env *wire.Envelope) string {
	key := e.cfg.ChannelPrefix + "durabus:claim:" + e.cfg.Name + ":" + env.EventID
	if env.Replay {
		key += ":replay"
	}
	return key
}
