package engine

import (
	"context"
	"slices"
	"time"

	"github.com/durabus/durabus/internal/store"
)

const maintenanceBatch = 500

// Recall makes this bus's rows of kind (store.RecallOutgoing, ...) due now,
// in batches, and returns how many.
func (e *Engine) Recall(ctx context.Context, kind int) (int, error) {
	name := e.cfg.Name
	total := 0
	var after int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var last int64
		var n int
		err := e.Write(ctx, func(ctx context.Context, q store.Querier) error {
			var err error
			last, n, err = e.st.Recall(ctx, q, kind, name, after, maintenanceBatch, e.nowMS())
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		after = last
		if kind == store.RecallDeadInbox {
			wake(e.workWake)
		} else {
			wake(e.relayWake)
		}
		if n < maintenanceBatch {
			return total, nil
		}
	}
}

// Delete removes this bus's rows in state last updated before before,
// from the outbox and the inbox, in batches, and returns how many.
func (e *Engine) Delete(ctx context.Context, state string, before time.Time) (int, error) {
	total := 0
	for _, inbox := range []bool{false, true} {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			var n int
			err := e.w.Do(ctx, func(ctx context.Context, q store.Querier) error {
				var err error
				n, err = e.st.Delete(ctx, q, inbox, e.cfg.Name, state, before.UnixMilli(), maintenanceBatch)
				return err
			})
			if err != nil {
				return total, err
			}
			total += n
			if n < maintenanceBatch {
				break
			}
		}
	}
	return total, nil
}

// janitorLoop deletes COMPLETED rows older than the retention and forgets
// consumer groups silent for longer than GroupTTL, every minute (or a tenth
// of the retention or of GroupTTL, when that is shorter).
func (e *Engine) janitorLoop(ctx context.Context) {
	every := min(time.Minute, e.cfg.GroupTTL/10)
	if e.cfg.Retention > 0 {
		every = min(every, e.cfg.Retention/10)
	}
	every = max(every, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if e.cfg.Retention > 0 {
			if n, err := e.Delete(ctx, store.Completed, e.cfg.Now().Add(-e.cfg.Retention)); err != nil && ctx.Err() == nil {
				e.log.Warn("durabus: delete old COMPLETED rows", "err", err)
			} else if n > 0 {
				e.log.Debug("durabus: deleted old COMPLETED rows", "rows", n)
			}
		}
		e.forgetSilentGroups(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Replay re-delivers this bus's stored events that match f to group (all
// groups that consume each event when group is empty), marked as replays,
// in batches, and returns how many events it scheduled.
func (e *Engine) Replay(ctx context.Context, f store.ReplayFilter, group string) (int, error) {
	total := 0
	var after int64
	groupsFor := func(event string) []string {
		groups := e.expectedGroups(event, e.nowMS())
		switch {
		case group == "":
			return groups
		case slices.Contains(groups, group):
			return []string{group}
		}
		return nil // group does not consume event
	}
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var last int64
		var seen, n int
		err := e.Write(ctx, func(ctx context.Context, q store.Querier) error {
			var err error
			last, seen, n, err = e.st.Replay(ctx, q, e.cfg.Name, f, groupsFor, after, maintenanceBatch, e.nowMS())
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		after = last
		wake(e.relayWake)
		if seen < maintenanceBatch {
			return total, nil
		}
	}
}
