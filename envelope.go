package durabus

import (
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	"github.com/google/uuid"

	"github.com/durabus/durabus/internal/wire"
)

// Event is a payload that names itself. The name is the event's channel and
// its identity on the wire, so keep it stable; never derive it from a Go
// type name. EventName must work on the zero value.
type Event interface {
	EventName() string
}

// EventID identifies an event: a UUIDv7 string, ordered by time.
type EventID string

// Envelope is a received event and what came with it. On the wire it is the
// JSON that persistent-bus uses:
//
//	{"eventName":"user.created","eventId":"…","publishedBy":"order-service",
//	 "publishedAt":"2026-11-22T10:00:00.000Z","payload":{…}}
type Envelope[E any] struct {
	EventName     string
	EventID       EventID
	PublishedBy   string
	PublishedAt   time.Time
	CorrelationID string
	Key           string
	Headers       map[string]string
	// Replay is true when the event was re-delivered on purpose.
	Replay bool
	// Attempt is this handler run's number, 1 for the first.
	Attempt int
	Payload E
}

// validator is a payload that checks itself.
type validator interface{ Validate() error }

// validate runs v's Validate method, whether it has a value or a pointer
// receiver.
func validate(v any) error {
	if val, ok := v.(validator); ok {
		return val.Validate()
	}
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() == reflect.Pointer {
		return nil
	}
	p := reflect.New(rv.Type())
	p.Elem().Set(rv)
	if val, ok := p.Interface().(validator); ok {
		return val.Validate()
	}
	return nil
}

// eventName returns e's name, or an error when e cannot name itself.
func eventName(e Event) (name string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: EventName of %T panicked: %v", ErrInvalidEventName, e, r)
		}
	}()
	if e == nil {
		return "", fmt.Errorf("%w: the event is nil", ErrInvalidEventName)
	}
	name = e.EventName()
	if err := wire.CheckName("event name", name); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidEventName, err)
	}
	return name, nil
}

// encodeEvent validates e and builds its wire envelope.
func encodeEvent(e Event, publisher string, now time.Time, opts []PublishOption) (name string, id EventID, msg []byte, err error) {
	name, err = eventName(e)
	if err != nil {
		return "", "", nil, err
	}
	if err := validate(e); err != nil {
		return "", "", nil, &ValidationError{EventName: name, Err: err}
	}
	payload, err := json.Marshal(e)
	if err != nil {
		return "", "", nil, fmt.Errorf("%w: encode %q as JSON: %v", ErrInvalidPayload, name, err)
	}
	var o publishOptions
	for _, opt := range opts {
		opt(&o)
	}
	u, err := uuid.NewV7()
	if err != nil {
		return "", "", nil, fmt.Errorf("durabus: new event id: %w", err)
	}
	env := wire.Envelope{
		EventName: name, EventID: u.String(), PublishedBy: publisher, PublishedAt: wire.FormatTime(now),
		Payload: payload, CorrelationID: o.correlationID, Key: o.key, Headers: o.headers,
	}
	msg, err = wire.Encode(&env)
	if err != nil {
		return "", "", nil, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
	}
	return name, EventID(env.EventID), msg, nil
}

// decodeEvent turns a stored message into an envelope of E. Its errors are
// permanent: the message will never decode.
func decodeEvent[E Event](msg []byte, attempt int) (Envelope[E], error) {
	env, err := wire.Decode(msg)
	if err != nil {
		return Envelope[E]{}, err
	}
	return typedEnvelope[E](env, attempt)
}

// typedEnvelope decodes the payload of a decoded envelope as an E.
func typedEnvelope[E Event](env *wire.Envelope, attempt int) (Envelope[E], error) {
	var payload E
	if err := json.Unmarshal(env.Payload, &payload); err != nil {
		return Envelope[E]{}, fmt.Errorf("decode payload of %q as %T: %w", env.EventName, payload, err)
	}
	if err := validate(payload); err != nil {
		return Envelope[E]{}, &ValidationError{EventName: env.EventName, Err: err}
	}
	return Envelope[E]{
		EventName: env.EventName, EventID: EventID(env.EventID), PublishedBy: env.PublishedBy,
		PublishedAt: env.Time(), CorrelationID: env.CorrelationID, Key: env.Key, Headers: env.Headers,
		Replay: env.Replay, Attempt: attempt, Payload: payload,
	}, nil
}
