package durabus

// Fuzz targets for the wire decoders: whatever arrives on a channel, decoding
// never panics, and what decodes is well formed and survives a round trip.
//
//	go test -run XXX -fuzz FuzzDecodeEnvelope -fuzztime 30s .
//	go test -run XXX -fuzz FuzzDecodeAcks -fuzztime 30s .

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/durabus/durabus/internal/wire"
)

// fuzzUserCreated is the payload type the decoded envelopes are read as.
type fuzzUserCreated struct {
	ID    string `json:"id"`
	Email string `json:"email"`
}

func (fuzzUserCreated) EventName() string { return "user.created" }

// fuzzSeedFiles adds every file of testdata/persistent-bus to the corpus.
func fuzzSeedFiles(f *testing.F) {
	f.Helper()
	names, err := filepath.Glob(filepath.Join("testdata", "persistent-bus", "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	if len(names) == 0 {
		f.Fatal("no fixtures in testdata/persistent-bus")
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	fuzzSeedFiles(f)
	// What durabus itself publishes, with and without the optional fields.
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, opts := range [][]PublishOption{
		nil,
		{WithCorrelationID("req-42"), WithKey("abc"), WithHeaders(map[string]string{"traceparent": "00-abc-def-01"})},
	} {
		_, _, msg, err := encodeEvent(fuzzUserCreated{ID: "abc", Email: "a@b.com"}, "order-service", at, opts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg)
	}
	for _, s := range []string{
		``, `{`, `}`, `null`, `[]`, `42`, `"x"`, `{}`, "\xff\xfe",
		`{"eventName":"","eventId":"x","payload":{}}`,
		`{"eventName":"a","eventId":"","payload":{}}`,
		`{"eventName":"a","eventId":"b"}`,
		`{"eventName":"a","eventId":"b","payload":null}`,
		`{"eventName":"a\u0000b","eventId":"b","payload":{}}`,
		`{"eventName":"a\u2028b","eventId":"b","payload":"<&>"}`,
		"{\"eventName\":\"a\xffb\",\"eventId\":\"b\",\"payload\":{}}",
		`{"eventName":"a","eventId":"b","payload":{}} trailing`,
		`{"EVENTNAME":"a","EventId":"b","payload":{"id":1}}`,
		`{"eventName":"a","eventName":"b","eventId":"c","payload":{},"payload":[]}`,
		`{"eventName":"a","eventId":"b","payload":{"id":"x","email":"y"},"headers":{"k":"v"},"replay":true,"key":"k","correlationId":"c"}`,
		`{"eventName":"a","eventId":"b","payload":{},"headers":{"k":1}}`,
		`{"eventName":"a","eventId":"b","payload":{},"replay":"yes"}`,
		`{"eventName":"a","eventId":"b","payload":{},"publishedAt":"not a time"}`,
		`{"eventName":"a","eventId":"b","payload":1e999}`,
		`{"eventName":"a","eventId":"b","payload":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
		`{"eventName":"` + strings.Repeat("n", wire.MaxNameLen+1) + `","eventId":"b","payload":{}}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, msg []byte) {
		env, err := wire.Decode(msg)
		// The bus's own decoding of a stored message must not panic either.
		typed, typedErr := decodeEvent[fuzzUserCreated](msg, 1)
		if err != nil {
			if env != nil {
				t.Fatalf("Decode returned an envelope and the error %v", err)
			}
			if typedErr == nil {
				t.Fatalf("decodeEvent accepted a message Decode rejects (%v): %q", err, msg)
			}
			return
		}
		fuzzCheckEnvelope(t, "decoded", env)

		out, err := wire.Encode(env)
		if err != nil {
			t.Fatalf("Encode of a decoded envelope failed: %v\nmessage: %q", err, msg)
		}
		again, err := wire.Decode(out)
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v\nmessage: %q\nencoded: %q", err, msg, out)
		}
		fuzzSameEnvelope(t, env, again, msg, out)
		if out2, err := wire.Encode(again); err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", out, out2, err)
		}

		if typedErr == nil {
			if typed.EventName != env.EventName || string(typed.EventID) != env.EventID || typed.PublishedBy != env.PublishedBy ||
				typed.CorrelationID != env.CorrelationID || typed.Key != env.Key || typed.Replay != env.Replay || typed.Attempt != 1 {
				t.Fatalf("decodeEvent disagrees with Decode: %+v vs %+v", typed, env)
			}
			if !typed.PublishedAt.Equal(env.Time()) {
				t.Fatalf("PublishedAt %v, Time() %v", typed.PublishedAt, env.Time())
			}
		}
	})
}

// fuzzCheckEnvelope checks what Decode promises about an envelope it accepts.
func fuzzCheckEnvelope(t *testing.T, what string, env *wire.Envelope) {
	t.Helper()
	if env == nil {
		t.Fatalf("%s: nil envelope without an error", what)
	}
	if err := wire.CheckName("eventName", env.EventName); err != nil {
		t.Fatalf("%s: invalid event name accepted: %v", what, err)
	}
	if err := wire.CheckName("eventId", env.EventID); err != nil {
		t.Fatalf("%s: invalid event id accepted: %v", what, err)
	}
	if len(env.Payload) == 0 || !json.Valid(env.Payload) {
		t.Fatalf("%s: payload %q is not a JSON value", what, env.Payload)
	}
}

// fuzzSameEnvelope checks that a round trip kept every field. The payload is
// compared as JSON values, since encoding compacts it and escapes HTML.
func fuzzSameEnvelope(t *testing.T, a, b *wire.Envelope, msg, out []byte) {
	t.Helper()
	if a.EventName != b.EventName || a.EventID != b.EventID || a.PublishedBy != b.PublishedBy || a.PublishedAt != b.PublishedAt ||
		a.CorrelationID != b.CorrelationID || a.Key != b.Key || a.Replay != b.Replay ||
		(len(a.Headers) != 0 || len(b.Headers) != 0) && !reflect.DeepEqual(a.Headers, b.Headers) {
		t.Fatalf("round trip changed the envelope:\n%+v\n%+v\nmessage: %q\nencoded: %q", a, b, msg, out)
	}
	pa, errA := fuzzJSONValue(a.Payload)
	pb, errB := fuzzJSONValue(b.Payload)
	if errA != nil || errB != nil || !reflect.DeepEqual(pa, pb) {
		t.Fatalf("round trip changed the payload: %q -> %q (%v, %v)", a.Payload, b.Payload, errA, errB)
	}
}

func fuzzJSONValue(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}

func FuzzDecodeAcks(f *testing.F) {
	for _, acks := range [][]wire.Ack{
		nil,
		{},
		{{EventID: "0193a1b2-0000-7000-8000-000000000001", Status: wire.AckReceived}},
		{
			{EventID: "0193a1b2-0000-7000-8000-000000000001", Status: wire.AckCompleted},
			{EventID: "0193a1b2-0000-7000-8000-000000000002", Status: wire.AckDead, Error: "unrecoverable: boom\n\nstack"},
		},
	} {
		msg, err := wire.EncodeAcks("notification-svc", acks)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg)
	}
	for _, s := range []string{
		``, `{`, `null`, `[]`, `{}`, "\xff",
		`{"v":2,"type":"ack","group":"g","acks":[]}`,
		`{"v":1,"type":"hello","group":"g"}`,
		`{"v":1,"type":"ack","group":"","acks":[]}`,
		`{"v":1,"type":"ack","group":"g","acks":[{"id":"x","status":"weird"}]}`,
		`{"v":1,"type":"ack","group":"g","acks":[{"id":"","status":"dead"}]}`,
		`{"v":1,"type":"ack","group":"g","acks":[null]}`,
		`{"v":1,"type":"ack","group":"g","acks":null}`,
		`{"v":1,"type":"ack","group":"g","acks":[{"id":"x","status":"completed"}]} trailing garbage`,
		`{"v":1,"type":"ack","group":"g\u0007","acks":[]}`,
		`{"V":1,"TYPE":"ack","Group":"g","ACKS":[{"ID":"x","STATUS":"received"}]}`,
		`{"v":1.5,"type":"ack","group":"g"}`,
		`{"v":1,"type":"ack","group":"g","acks":{"id":"x"}}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, msg []byte) {
		b, err := wire.DecodeAcks(msg)
		if err != nil {
			if b != nil {
				t.Fatalf("DecodeAcks returned a batch and the error %v", err)
			}
			return
		}
		fuzzCheckAcks(t, "decoded", b)
		out, err := wire.EncodeAcks(b.Group, b.Acks)
		if err != nil {
			t.Fatalf("EncodeAcks of a decoded batch failed: %v\nmessage: %q", err, msg)
		}
		again, err := wire.DecodeAcks(out)
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v\nmessage: %q\nencoded: %q", err, msg, out)
		}
		fuzzCheckAcks(t, "re-decoded", again)
		if b.Group != again.Group || len(b.Acks) != len(again.Acks) || len(b.Acks) > 0 && !reflect.DeepEqual(b.Acks, again.Acks) {
			t.Fatalf("round trip changed the batch:\n%+v\n%+v\nmessage: %q\nencoded: %q", b, again, msg, out)
		}
	})
}

// fuzzCheckAcks checks what DecodeAcks promises about a batch it accepts.
func fuzzCheckAcks(t *testing.T, what string, b *wire.AckBatch) {
	t.Helper()
	if b == nil {
		t.Fatalf("%s: nil batch without an error", what)
	}
	if b.Version != wire.ControlVersion || b.Type != "ack" {
		t.Fatalf("%s: accepted v=%d type=%q", what, b.Version, b.Type)
	}
	if err := wire.CheckName("group", b.Group); err != nil {
		t.Fatalf("%s: invalid group accepted: %v", what, err)
	}
	for _, a := range b.Acks {
		switch a.Status {
		case wire.AckReceived, wire.AckCompleted, wire.AckDead:
		default:
			t.Fatalf("%s: unknown status %q accepted", what, a.Status)
		}
		if err := wire.CheckName("id", a.EventID); err != nil {
			t.Fatalf("%s: invalid id accepted: %v", what, err)
		}
	}
}

// FuzzDecodeControl feeds arbitrary bytes to the hello and status-query
// decoders: they never panic, and what they accept is valid and encodes back
// to what decodes the same.
func FuzzDecodeControl(f *testing.F) {
	hello, err := wire.EncodeHello("billing", []string{"order.placed", "user.created"}, 5*time.Second)
	if err != nil {
		f.Fatal(err)
	}
	status, err := wire.EncodeStatusQuery("orders", []string{"0193a1b2-0000-7000-8000-000000000001"})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{string(hello), string(status), ``, `{`, `null`, "\xff",
		`{"v":1,"type":"hello","group":"","events":[]}`, `{"v":1,"type":"status","publisher":"p","ids":[""]}`,
		`{"v":1,"type":"hello","group":"g","events":["a\u0000b"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if h, err := wire.DecodeHello(msg); err == nil {
			if wire.CheckName("group", h.Group) != nil {
				t.Fatalf("accepted hello with invalid group %q", h.Group)
			}
			again, err := wire.EncodeHello(h.Group, h.Events, time.Duration(h.Interval)*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			h2, err := wire.DecodeHello(again)
			if err != nil || h2.Group != h.Group || len(h2.Events) != len(h.Events) || h2.Interval != h.Interval {
				t.Fatalf("hello does not round-trip: %+v → %+v (%v)", h, h2, err)
			}
		}
		if s, err := wire.DecodeStatusQuery(msg); err == nil {
			for _, id := range s.IDs {
				if wire.CheckName("id", id) != nil {
					t.Fatalf("accepted status query with invalid id %q", id)
				}
			}
			again, err := wire.EncodeStatusQuery(s.Publisher, s.IDs)
			if err != nil {
				t.Fatal(err)
			}
			s2, err := wire.DecodeStatusQuery(again)
			if err != nil || s2.Publisher != s.Publisher || len(s2.IDs) != len(s.IDs) {
				t.Fatalf("status query does not round-trip: %+v → %+v (%v)", s, s2, err)
			}
		}
	})
}
