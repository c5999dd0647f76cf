package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// eventSize is the size every workload's messages aim at: the JSON envelope
// of one benchEvent as durabus sends it (the smoke test checks it).
const eventSize = 300

// benchEvent is the payload every workload sends. Seq numbers the events of
// one run; Sent is the publisher's clock (Unix ns) just before it published,
// which the latency workload subtracts from the handler's clock. Every
// workload sets Sent, so that messages are the same size everywhere; Body
// pads the envelope to eventSize bytes.
type benchEvent struct {
	Seq  int    `json:"seq"`
	Sent int64  `json:"sent"`
	Body string `json:"body"`
}

// EventName names benchEvent's channel.
func (benchEvent) EventName() string { return "durabench.event" }

// benchBody pads the envelope of a benchEvent with a six-digit Seq, sent by
// a publisher with a nine-letter name, to eventSize bytes.
var benchBody = strings.Repeat("x", 92)

// newEvent returns event seq, stamped now.
func newEvent(seq int) benchEvent {
	return benchEvent{Seq: seq, Sent: time.Now().UnixNano(), Body: benchBody}
}

// envelope mirrors durabus's wire envelope (the persistent-bus format), so
// that the baselines move the same bytes as durabus does.
type envelope struct {
	EventName   string     `json:"eventName"`
	EventID     string     `json:"eventId"`
	PublishedBy string     `json:"publishedBy"`
	PublishedAt string     `json:"publishedAt"`
	Payload     benchEvent `json:"payload"`
}

// baselinePublisher is the publishedBy of the baselines' envelopes; it is as
// long as the durabus buses' names.
const baselinePublisher = "bench-raw"

// encodeEvent returns the envelope of event seq with a fresh UUIDv7, as a
// publisher would build it, and its id.
func encodeEvent(seq int) (id string, msg []byte, err error) {
	u, err := uuid.NewV7()
	if err != nil {
		return "", nil, fmt.Errorf("new event id: %w", err)
	}
	e := newEvent(seq)
	env := envelope{
		EventName:   e.EventName(),
		EventID:     u.String(),
		PublishedBy: baselinePublisher,
		PublishedAt: time.Unix(0, e.Sent).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Payload:     e,
	}
	msg, err = json.Marshal(env)
	if err != nil {
		return "", nil, fmt.Errorf("encode event %d: %w", seq, err)
	}
	return env.EventID, msg, nil
}

// eventID extracts the eventId of an envelope, as a naive consumer does.
func eventID(msg []byte) (string, error) {
	var env struct {
		EventID string `json:"eventId"`
	}
	if err := json.Unmarshal(msg, &env); err != nil {
		return "", fmt.Errorf("decode envelope: %w", err)
	}
	if env.EventID == "" {
		return "", fmt.Errorf("envelope without eventId: %.80s", msg)
	}
	return env.EventID, nil
}
