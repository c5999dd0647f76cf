package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The envelope codec must agree with encoding/json: Encode byte for byte
// with json.Marshal, and decodeEnvelope with json.Unmarshal on what is
// accepted and what it yields.

// encodeCases are envelopes whose strings and payloads take every path of
// the encoder.
func encodeCases() []Envelope {
	base := Envelope{EventName: "order.placed", EventID: "0193a3c2-7d4e-7c3b-9f3a-1c2d3e4f5a6b", PublishedBy: "orders",
		PublishedAt: "2026-11-25T17:00:00.000Z", Payload: json.RawMessage(`{"id":1}`)}
	with := func(f func(e *Envelope)) Envelope {
		e := base
		f(&e)
		return e
	}
	return []Envelope{
		base,
		{},
		with(func(e *Envelope) { e.Payload = nil }),
		with(func(e *Envelope) { e.Payload = json.RawMessage(`null`) }),
		with(func(e *Envelope) { e.Payload = json.RawMessage(" {\n\t\"a\" : [1, 2.5e-3, true, null, \"x\"] } ") }),
		with(func(e *Envelope) {
			e.Payload = json.RawMessage(`{"html":"<b>&amp;</b>","sep":"` + "\u2028\u2029" + `"}`)
		}),
		with(func(e *Envelope) { e.Payload = json.RawMessage(`"\u003c\ud83d\ude00\n"`) }),
		with(func(e *Envelope) { e.Payload = json.RawMessage("\"\xff\xfe\"") }),
		with(func(e *Envelope) { e.EventName = "a\"b\\c\b\f\n\r\t\x00\x1f\x7f<>&" }),
		with(func(e *Envelope) { e.EventID = "\xff\xc3(\u2028\u2029é😀" }),
		with(func(e *Envelope) {
			e.CorrelationID, e.Key = "corr", "k<ey>"
			e.Headers = map[string]string{"z": "1", "a": "\n", "M": "<&>", "é": "\xff"}
			e.Replay = true
		}),
		with(func(e *Envelope) { e.Headers = map[string]string{} }),
	}
}

func TestEncodeMatchesJSON(t *testing.T) {
	for i, e := range encodeCases() {
		want, wantErr := json.Marshal(&e)
		got, err := Encode(&e)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("case %d: Encode error %v, json.Marshal error %v", i, err, wantErr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d:\nEncode       %s\njson.Marshal %s", i, got, want)
		}
	}
}

func TestEncodeRejectsInvalidPayload(t *testing.T) {
	for _, p := range []string{``, `{`, `{"a":}`, `[1,]`, `01`, `1.`, `-`, `tru`, `"\x01"`, `"\q"`, `{} {}`, `"\ud83`} {
		e := Envelope{EventName: "n", EventID: "i", Payload: json.RawMessage(p)}
		if _, err := Encode(&e); err == nil {
			t.Errorf("Encode accepted the payload %q", p)
		}
		if _, err := json.Marshal(&e); err == nil {
			t.Errorf("json.Marshal accepted the payload %q: the case is wrong", p)
		}
	}
}

// decodeCases are messages that take every path of the decoder, valid and
// not.
var decodeCases = []string{
	`{"eventName":"n","eventId":"i","publishedBy":"p","publishedAt":"2026-11-25T17:00:00.000Z","payload":{"a":1}}`,
	` { "eventName" : "n" , "payload" : [ 1 , { "b" : [ ] } , "s" , -0.5E+3 , true , false , null ] } `,
	`{"EVENTNAME":"upper","EventId":"mixed","payLoad":1,"REPLAY":true,"Headers":{"a":"b"}}`,
	`{"eventName":"first","eventName":"second"}`,
	`{"eventName":"kept","eventName":null,"payload":null,"headers":null,"replay":null}`,
	`{"headers":{"a":"1"},"headers":{"b":"2","a":"3"}}`,
	`{"headers":{"a":null}}`,
	`{"headers":{}}`,
	`{"headers":{"a":"1"},"headers":null}`,
	`{"eventName":"a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\ud83d\ude00"}`,
	`{"eventName":"\ud800"}`,
	`{"eventName":"\ud800\u0041"}`,
	`{"eventName":"\udc00\ud800x"}`,
	`{"eventName":"\ud83d\ude00\ud83d"}`,
	"{\"eventName\":\"\xff\xfe invalid \xc3(\"}",
	"{\"eventName\":\"\u2028 <&> \"}",
	`{"unknown":{"deep":[[[{"x":"\u0000"}]]]},"eventId":"i"}`,
	`{"replay":false,"replay":true}`,
	`{}`,
	`{"payload":"x","payload":{"y":2}}`,
	// Invalid.
	`null`, ` null `, `null x`, `nul`, ``, ` `, `{`, `}`, `[]`, `"x"`, `1`, `true`, `[1,]`, `{"eventName":1}`, `{"eventName":["x"]}`, `{"replay":"true"}`,
	`{"replay":1}`, `{"headers":[]}`, `{"headers":"x"}`, `{"headers":{"a":1}}`, `{"headers":{"a":{}}}`,
	`{"eventName":"x",}`, `{"eventName":"x"}}`, `{"eventName":"x"} x`, `{"eventName" "x"}`, `{eventName:"x"}`,
	`{"eventName":"x" "eventId":"y"}`, `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":+1}`,
	`{"a":tru}`, `{"a":nul}`, `{"a":True}`, `{"a":[1 2]}`, `{"a":{"b"}}`, `{"a":{1:2}}`, "{\"eventName\":\"\x01\"}",
	`{"eventName":"\q"}`, `{"eventName":"\u12"}`, `{"eventName":"\u12g4"}`, `{"eventName":"\ud800\u12"}`, `{"eventName":"x`,
	`{"eventName":"x\`, `{"payload":`, `{"payload":[`, `{"payload":{"a":1}`, `{"a":"\'"}`,
	`{"headers":{"a":"1",}}`, `{"headers":{"a" "1"}}`, `{"headers":{"a":"1"`, `{"headers":{a:"1"}}`,
	strings.Repeat("[", 10001),
}

// checkDecode compares decodeEnvelope with json.Unmarshal on msg.
func checkDecode(t *testing.T, msg []byte) {
	t.Helper()
	var got, want Envelope
	err := decodeEnvelope(msg, &got)
	wantErr := json.Unmarshal(msg, &want)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q: decodeEnvelope error %v, json.Unmarshal error %v", msg, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\ndecodeEnvelope %#v\njson.Unmarshal %#v", msg, got, want)
	}
}

func TestDecodeMatchesJSON(t *testing.T) {
	for _, msg := range decodeCases {
		checkDecode(t, []byte(msg))
	}
	deep := strings.Repeat("[", 9999) + strings.Repeat("]", 9999)
	checkDecode(t, []byte(`{"payload":`+deep+`}`))
	checkDecode(t, []byte(`{"payload":[`+deep+`]}`))
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for i, e := range encodeCases() {
		msg, err := Encode(&e)
		if err != nil {
			continue
		}
		checkDecode(t, msg)
		var back Envelope
		if err := decodeEnvelope(msg, &back); err != nil {
			t.Fatalf("case %d: decode what Encode wrote: %v", i, err)
		}
		// Invalid UTF-8 comes back as U+FFFD, so compare with json.Marshal
		// rather than with the first encoding.
		again, err := Encode(&back)
		want, _ := json.Marshal(&back)
		if err != nil || !bytes.Equal(again, want) {
			t.Fatalf("case %d: encoded again %s (%v), json.Marshal %s", i, again, err, want)
		}
	}
}

// FuzzEnvelopeCodec keeps comparing the codec with encoding/json:
//
//	go test -run XXX -fuzz FuzzEnvelopeCodec -fuzztime 60s ./internal/wire
func FuzzEnvelopeCodec(f *testing.F) {
	for _, msg := range decodeCases {
		f.Add([]byte(msg))
	}
	for _, e := range encodeCases() {
		if msg, err := json.Marshal(&e); err == nil {
			f.Add(msg)
		}
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		checkDecode(t, msg)
		var e Envelope
		if decodeEnvelope(msg, &e) != nil {
			return
		}
		want, wantErr := json.Marshal(&e)
		got, err := Encode(&e)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("%q: Encode %s (%v), json.Marshal %s (%v)", msg, got, err, want, wantErr)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	e := benchEnvelope()
	b.Run("codec", func(b *testing.B) {
		for b.Loop() {
			if _, err := Encode(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	msg, err := Encode(benchEnvelope())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("codec", func(b *testing.B) {
		for b.Loop() {
			var e Envelope
			if err := decodeEnvelope(msg, &e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var e Envelope
			if err := json.Unmarshal(msg, &e); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchEnvelope is an event of about 300 bytes, as durabench sends.
func benchEnvelope() *Envelope {
	payload, _ := json.Marshal(map[string]any{"seq": 12345, "sent": time.Now().UnixNano(), "body": strings.Repeat("x", 220)})
	return &Envelope{EventName: "bench.event", EventID: "0193a3c2-7d4e-7c3b-9f3a-1c2d3e4f5a6b", PublishedBy: "bench-pub",
		PublishedAt: FormatTime(time.Now()), Payload: payload}
}
