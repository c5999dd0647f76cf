package engine

import (
	"sync"

	"github.com/durabus/durabus/internal/store"
)

// The handoff carries rows Publish just committed straight to the relay, so
// that their first send needs neither a read nor a write of the outbox: the
// rows are stored as sent once, due for a re-send after PendingDelay. A
// crash before the send only delays them until then. The queue is bounded;
// when it is full (the broker is slow or down), rows are stored as due now
// and the relay finds them in the table, as it finds PublishTx's rows.

// handoffLimit bounds the rows waiting in memory for their first send.
const handoffLimit = 8192

type handoff struct {
	mu       sync.Mutex
	reserved int // rows promised by reserve and not yet sent
	queue    []store.OutboxSend
	signal   chan struct{}
}

func newHandoff() *handoff { return &handoff{signal: make(chan struct{}, 1)} }

// reserve makes room for n rows; false when the queue is full.
func (h *handoff) reserve(n int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reserved+n > handoffLimit {
		return false
	}
	h.reserved += n
	return true
}

// push queues committed rows that reserve made room for, as first sends.
func (h *handoff) push(rows []store.OutboxRow) {
	h.mu.Lock()
	for _, r := range rows {
		h.queue = append(h.queue, store.OutboxSend{ID: r.ID, EventID: r.EventID, EventName: r.EventName, State: store.Pending,
			Tracked: len(r.Groups), Message: r.Message})
	}
	h.mu.Unlock()
	wake(h.signal)
}

// take removes up to max queued rows.
func (h *handoff) take(max int) []store.OutboxSend {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(max, len(h.queue))
	if n == 0 {
		return nil
	}
	out := make([]store.OutboxSend, n)
	copy(out, h.queue)
	clear(h.queue[:n]) // let the messages go
	if n == len(h.queue) {
		h.queue = h.queue[:0] // all taken: keep the room for the next rows
	} else {
		h.queue = h.queue[n:]
	}
	return out
}

// release gives back the room of n rows that were sent, or never queued.
func (h *handoff) release(n int) {
	h.mu.Lock()
	h.reserved -= n
	h.mu.Unlock()
}
