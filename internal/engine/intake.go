package engine

import (
	"context"
	"fmt"
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
	done chan struct{}
}

// checkEvent runs the checks of env, batched with those of other messages.
func (e *Engine) checkEvent(ctx context.Context, env *wire.Envelope) (mine, seen bool, err error) {
	c := &check{env: env, done: make(chan struct{})}
	select {
	case e.checks <- c:
	case <-ctx.Done():
		return false, false, ctx.Err()
	}
	select {
	case <-c.done:
		return c.mine, c.seen, c.err
	case <-ctx.Done():
		return false, false, ctx.Err()
	}
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
			close(c.done)
		}
	}
}

func (e *Engine) runChecks(ctx context.Context, batch []*check) {
	ids := make([]string, len(batch))
	for i, c := range batch {
		ids[i] = c.env.EventID
		c.mine = true
	}
	seen, err := e.st.Seen(ctx, e.rd, e.cfg.Name, ids)
	if err != nil {
		for _, c := range batch {
			c.err = fmt.Errorf("check event %s: %w", c.env.EventID, err)
		}
		return
	}
	for _, c := range batch {
		c.seen = seen[c.env.EventID]
	}
	e.claimAll(ctx, batch)
}

// claimAll races for the batch's events when replicas share the group. A
// claim lost on an event this bus stored is still answered; a replay is
// claimed apart from the first delivery. A claim that fails to reach the
// broker counts as won: a duplicate is better than a loss.
func (e *Engine) claimAll(ctx context.Context, batch []*check) {
	if e.claimer == nil {
		return
	}
	keys := make([]string, len(batch))
	for i, c := range batch {
		keys[i] = e.claimKey(c.env)
	}
	var held []bool
	var err error
	if bc, ok := e.claimer.(BatchClaimer); ok {
		held, err = bc.ClaimBatch(ctx, keys, e.instance, e.cfg.ClaimTTL)
	} else {
		held = make([]bool, len(keys))
		for i, k := range keys {
			if held[i], err = e.claimer.Claim(ctx, k, e.instance, e.cfg.ClaimTTL); err != nil {
				break
			}
		}
	}
	if err != nil {
		e.log.Debug("durabus: claim failed; storing the events anyway", "events", len(batch), "err", err)
		return
	}
	for i, c := range batch {
		c.mine = held[i] || (!c.env.Replay && c.seen)
	}
}

func (e *Engine) claimKey(env *wire.Envelope) string {
	key := e.cfg.ChannelPrefix + "durabus:claim:" + e.cfg.Name + ":" + env.EventID
	if env.Replay {
		key += ":replay"
	}
	return key
}
