// Package wire encodes and decodes what durabus sends over a PubSub: event
// envelopes (compatible with persistent-bus) and control messages (acks).
package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen bounds event, publisher and handler names, in bytes.
const MaxNameLen = 255

// TimeLayout is how publishedAt is written: ISO 8601 in UTC with
// milliseconds, as JavaScript's Date.toISOString does.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Envelope is an event on the wire.
type Envelope struct {
	EventName     string            `json:"eventName"`
	EventID       string            `json:"eventId"`
	PublishedBy   string            `json:"publishedBy"`
	PublishedAt   string            `json:"publishedAt"`
	Payload       json.RawMessage   `json:"payload"`
	CorrelationID string            `json:"correlationId,omitempty"`
	Key           string            `json:"key,omitempty"`
	Headers       map[string]string `json:"headers,omitempty"`
	Replay        bool              `json:"replay,omitempty"`
}

// Time parses PublishedAt; the zero time when it does not parse.
func (e *Envelope) Time() time.Time {
	t, err := time.Parse(time.RFC3339Nano, e.PublishedAt)
	if err != nil {
		return time.Time{}
	}
	return t
}

// FormatTime formats t as PublishedAt.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// Encode returns the JSON of e, as json.Marshal writes it.
func Encode(e *Envelope) ([]byte, error) {
	size := 112 + len(e.EventName) + len(e.EventID) + len(e.PublishedBy) + len(e.PublishedAt) + len(e.Payload) +
		len(e.CorrelationID) + len(e.Key)
	return appendEnvelope(make([]byte, 0, size), e)
}

// Decode parses and checks an envelope. Its errors say what is wrong, for the
// DEAD row that keeps the message.
func Decode(msg []byte) (*Envelope, error) {
	var e Envelope
	if err := decodeEnvelope(msg, &e); err != nil {
		return nil, fmt.Errorf("malformed envelope: %w", err)
	}
	if err := CheckName("eventName", e.EventName); err != nil {
		return nil, fmt.Errorf("malformed envelope: %w", err)
	}
	if err := CheckName("eventId", e.EventID); err != nil {
		return nil, fmt.Errorf("malformed envelope: %w", err)
	}
	if len(e.Payload) == 0 {
		return nil, errors.New("malformed envelope: no payload field")
	}
	if _, err := time.Parse(time.RFC3339Nano, e.PublishedAt); err != nil {
		return nil, fmt.Errorf("malformed envelope: publishedAt %q is not an ISO 8601 time", e.PublishedAt)
	}
	return &e, nil
}

// CheckName reports why s cannot be a name: empty, longer than MaxNameLen
// bytes, invalid UTF-8 or containing control characters.
func CheckName(field, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", field)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%s is %d bytes long, the limit is %d", field, len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", field)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s %q contains a control character", field, s)
		}
	}
	return nil
}

// Ack statuses on the wire.
const (
	AckReceived  = "received"
	AckCompleted = "completed"
	AckDead      = "dead"
)

// ControlVersion is the version of control messages this code writes.
const ControlVersion = 1

// AckBatch tells a publisher what a consumer group did with its events.
type AckBatch struct {
	Version int    `json:"v"`
	Type    string `json:"type"`
	Group   string `json:"group"`
	Acks    []Ack  `json:"acks"`
}

// Ack is the status of one event in one group.
type Ack struct {
	EventID string `json:"id"`
	Status  string `json:"status"`
	Error   string `json:"error,omitempty"`
	// Replay is true for the status of a replayed run.
	Replay bool `json:"replay,omitempty"`
}

// EncodeAcks returns the JSON of an ack batch from group.
func EncodeAcks(group string, acks []Ack) ([]byte, error) {
	return json.Marshal(AckBatch{Version: ControlVersion, Type: "ack", Group: group, Acks: acks})
}

// DecodeAcks parses and checks an ack batch.
func DecodeAcks(msg []byte) (*AckBatch, error) {
	var b AckBatch
	if err := json.Unmarshal(msg, &b); err != nil {
		return nil, fmt.Errorf("malformed ack batch: %w", err)
	}
	if b.Version != ControlVersion || b.Type != "ack" {
		return nil, fmt.Errorf("unsupported control message v=%d type=%q", b.Version, b.Type)
	}
	if err := CheckName("group", b.Group); err != nil {
		return nil, fmt.Errorf("malformed ack batch: %w", err)
	}
	for _, a := range b.Acks {
		switch a.Status {
		case AckReceived, AckCompleted, AckDead:
		default:
			return nil, fmt.Errorf("malformed ack batch: unknown status %q", a.Status)
		}
		if err := CheckName("id", a.EventID); err != nil {
			return nil, fmt.Errorf("malformed ack batch: %w", err)
		}
	}
	return &b, nil
}

// Hello announces which events a consumer group handles. Consumers send it
// when they subscribe and every hello interval.
type Hello struct {
	Version int      `json:"v"`
	Type    string   `json:"type"`
	Group   string   `json:"group"`
	Events  []string `json:"events"`
	// Interval is the sender's hello interval in milliseconds; publishers
	// count the group offline after three silent intervals.
	Interval int64 `json:"interval,omitempty"`
}

// EncodeHello returns the JSON of a hello from group.
func EncodeHello(group string, events []string, interval time.Duration) ([]byte, error) {
	return json.Marshal(Hello{Version: ControlVersion, Type: "hello", Group: group, Events: events, Interval: interval.Milliseconds()})
}

// DecodeHello parses and checks a hello.
func DecodeHello(msg []byte) (*Hello, error) {
	var h Hello
	if err := json.Unmarshal(msg, &h); err != nil {
		return nil, fmt.Errorf("malformed hello: %w", err)
	}
	if h.Version != ControlVersion || h.Type != "hello" {
		return nil, fmt.Errorf("unsupported control message v=%d type=%q", h.Version, h.Type)
	}
	if err := CheckName("group", h.Group); err != nil {
		return nil, fmt.Errorf("malformed hello: %w", err)
	}
	for _, e := range h.Events {
		if err := CheckName("event", e); err != nil {
			return nil, fmt.Errorf("malformed hello: %w", err)
		}
	}
	return &h, nil
}

// StatusQuery asks a group what became of events it acknowledged receiving;
// the group answers with acks. Only a group member that stored an event
// answers for it.
type StatusQuery struct {
	Version   int      `json:"v"`
	Type      string   `json:"type"`
	Publisher string   `json:"publisher"`
	IDs       []string `json:"ids"`
}

// EncodeStatusQuery returns the JSON of a status query from publisher.
func EncodeStatusQuery(publisher string, ids []string) ([]byte, error) {
	return json.Marshal(StatusQuery{Version: ControlVersion, Type: "status", Publisher: publisher, IDs: ids})
}

// DecodeStatusQuery parses and checks a status query.
func DecodeStatusQuery(msg []byte) (*StatusQuery, error) {
	var s StatusQuery
	if err := json.Unmarshal(msg, &s); err != nil {
		return nil, fmt.Errorf("malformed status query: %w", err)
	}
	if s.Version != ControlVersion || s.Type != "status" {
		return nil, fmt.Errorf("unsupported control message v=%d type=%q", s.Version, s.Type)
	}
	if err := CheckName("publisher", s.Publisher); err != nil {
		return nil, fmt.Errorf("malformed status query: %w", err)
	}
	for _, id := range s.IDs {
		if err := CheckName("id", id); err != nil {
			return nil, fmt.Errorf("malformed status query: %w", err)
		}
	}
	return &s, nil
}

// WithReplay returns msg with the replay flag set.
func WithReplay(msg []byte) ([]byte, error) {
	env, err := Decode(msg)
	if err != nil {
		return nil, err
	}
	env.Replay = true
	return Encode(env)
}
