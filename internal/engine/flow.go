package engine

import (
	"context"
	"sync"
	"time"
)

// Flow control. Pub/sub has no back-pressure of its own: a consumer that
// falls behind stops reading, Redis buffers what it cannot deliver, and past
// its output-buffer limit it drops the subscriber and everything buffered.
// The relay therefore keeps at most flowLimit bytes of first sends in
// flight: sent, and not yet acknowledged by any consumer. An entry that no
// ack clears leaves the window after PendingDelay, when the row is due for
// a re-send anyway, so a consumer that vanished stalls nothing for long.

// flowLimit bounds the bytes of sent, unacknowledged messages.
const flowLimit = 4 << 20

type flowEntry struct {
	bytes int
	at    time.Time
}

type flow struct {
	expiry time.Duration

	mu      sync.Mutex
	byID    map[string]flowEntry // sent, not yet acknowledged
	bytes   int
	waiting bool
	freed   chan struct{}
}

func newFlow(expiry time.Duration) *flow {
	return &flow{expiry: expiry, byID: map[string]flowEntry{}, freed: make(chan struct{}, 1)}
}

// acquire waits until the window has room, then counts the messages as in
// flight. A batch may overshoot the limit once it started below it.
func (f *flow) acquire(ctx context.Context, ids []string, sizes []int) error {
	for {
		f.mu.Lock()
		now := time.Now()
		wait := time.Duration(0)
		if f.bytes >= flowLimit {
			wait = f.prune(now)
		}
		if f.bytes < flowLimit {
			for i, id := range ids {
				if _, ok := f.byID[id]; ok {
					continue // sent again before its ack: one entry is enough
				}
				f.byID[id] = flowEntry{bytes: sizes[i], at: now}
				f.bytes += sizes[i]
			}
			f.mu.Unlock()
			return nil
		}
		f.waiting = true
		f.mu.Unlock()
		t := time.NewTimer(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-f.freed:
		case <-t.C:
		}
		t.Stop()
	}
}

// done clears acknowledged events from the window.
func (f *flow) done(ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if e, ok := f.byID[id]; ok {
			f.bytes -= e.bytes
			delete(f.byID, id)
		}
	}
	if f.waiting && f.bytes < flowLimit {
		f.waiting = false
		wake(f.freed)
	}
}

// prune drops the entries older than the expiry and returns how long until
// the oldest remaining one expires.
func (f *flow) prune(now time.Time) time.Duration {
	next := f.expiry
	for id, e := range f.byID {
		left := f.expiry - now.Sub(e.at)
		if left <= 0 {
			f.bytes -= e.bytes
			delete(f.byID, id)
			continue
		}
		next = min(next, left)
	}
	return next
}
