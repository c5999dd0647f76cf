package durabus_test

// Wire compatibility with persistent-bus (Node), both ways. The fixtures in
// testdata/persistent-bus are byte for byte what persistent-bus publishes
// (JSON.stringify of its envelope); the goldens in testdata/durabus are what
// durabus publishes, with eventId and publishedAt replaced by EVENT_ID and
// PUBLISHED_AT.

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

// pbUserCreated is persistent-bus's README event:
// { "user.created": { id: string; email: string } }.
type pbUserCreated struct {
	ID    string `json:"id"`
	Email string `json:"email"`
}

func (pbUserCreated) EventName() string { return "user.created" }

const (
	pbFixtureDir  = "testdata/persistent-bus"
	pbGoldenDir   = "testdata/durabus"
	pbPublishedBy = "order-service"
	envWait       = 10 * time.Second
	envTick       = 5 * time.Millisecond
)

// pbTimeFormat is JavaScript's Date.prototype.toISOString.
var pbTimeFormat = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// pbFixture is one persistent-bus message and the fields it carries.
type pbFixture struct {
	raw     []byte
	eventID string
}

func loadPBFixture(t *testing.T, name string) pbFixture {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(pbFixtureDir, name))
	require.NoError(t, err)
	var head struct {
		EventID string `json:"eventId"`
	}
	require.NoError(t, json.Unmarshal(raw, &head), "fixture %s is not JSON", name)
	require.NotEmpty(t, head.EventID, "fixture %s has no eventId", name)
	return pbFixture{raw: raw, eventID: head.EventID}
}

func envCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// envMemPubSub returns a mempubsub closed when the test ends (after the
// buses opened later, since cleanups run last-in first-out).
func envMemPubSub(t *testing.T) *mempubsub.PubSub {
	t.Helper()
	ps := mempubsub.New()
	t.Cleanup(func() { assert.NoError(t, ps.Close()) })
	return ps
}

// envOpenBus opens a bus named name on a fresh SQLite file and closes it when
// the test ends. It returns the file's path.
func envOpenBus(t *testing.T, name string, ps durabus.PubSub) (*durabus.Bus[durabus.Event, durabus.Event], string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".db")
	bus, err := durabus.Open[durabus.Event, durabus.Event](envCtx(t), durabus.Config{Name: name, Path: path, PubSub: ps})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, bus.Close(ctx))
	})
	return bus, path
}

// envOpenDB opens a second connection pool on a bus's file, to look at its
// tables as an operator would.
func envOpenDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, db.Close()) })
	return db
}

// envCapture subscribes to channel with a plain subscription and returns the
// raw messages it receives.
func envCapture(t *testing.T, ps durabus.PubSub, channel string) <-chan []byte {
	t.Helper()
	got := make(chan []byte, 64)
	unsub, err := ps.Subscribe(envCtx(t), channel, func(_ context.Context, msg []byte) error {
		select {
		case got <- msg:
		default: // re-sends of the relay; the test reads the first copy
		}
		return nil
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, unsub()) })
	return got
}

func envReceive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(envWait):
		t.Fatalf("timed out after %v waiting for %s", envWait, what)
		panic("unreachable")
	}
}

// envNormalise replaces the generated fields of an envelope, eventId and
// publishedAt, with the placeholders of the goldens.
func envNormalise(t *testing.T, msg []byte) []byte {
	t.Helper()
	out := msg
	for _, f := range []struct{ re, repl string }{
		{`"eventId":"[^"]*"`, `"eventId":"EVENT_ID"`},
		{`"publishedAt":"[^"]*"`, `"publishedAt":"PUBLISHED_AT"`},
	} {
		re := regexp.MustCompile(f.re)
		loc := re.FindIndex(out)
		require.NotNil(t, loc, "no %s in %s", f.re, msg)
		out = slices.Concat(out[:loc[0]], []byte(f.repl), out[loc[1]:])
	}
	return out
}

func envKeys(t *testing.T, msg []byte) (map[string]json.RawMessage, []string) {
	t.Helper()
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(msg, &fields), "envelope is not a JSON object: %s", msg)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return fields, keys
}

func envString(t *testing.T, fields map[string]json.RawMessage, key string) string {
	t.Helper()
	var s string
	require.NoError(t, json.Unmarshal(fields[key], &s), "%s is not a JSON string: %s", key, fields[key])
	return s
}

// The persistent-bus fixture and durabus's golden are the same bytes once the
// generated fields are normalised: same keys, same order, same encoding.
func TestEnvelopeGoldenMatchesPersistentBusFixture(t *testing.T) {
	fx := loadPBFixture(t, "user.created.json")
	golden, err := os.ReadFile(filepath.Join(pbGoldenDir, "user.created.golden.json"))
	require.NoError(t, err)
	assert.Equal(t, string(golden), string(envNormalise(t, fx.raw)))
}

// Direction 1: persistent-bus publishes, a durabus bus consumes.
func TestEnvelopeFromPersistentBus(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		payload pbUserCreated
	}{
		{"user.created.json", pbUserCreated{ID: "abc", Email: "a@b.com"}},
		// Unknown fields, at the top level and in the payload, are ignored.
		{"user.created.extra-fields.json", pbUserCreated{ID: "abc", Email: "a@b.com"}},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			ctx := envCtx(t)
			fx := loadPBFixture(t, tc.fixture)
			ps := envMemPubSub(t)
			bus, path := envOpenBus(t, "notification-svc", ps)
			got := make(chan durabus.Envelope[pbUserCreated], 8)
			require.NoError(t, durabus.Handle(bus, func(_ context.Context, env durabus.Envelope[pbUserCreated]) error {
				got <- env
				return nil
			}))

			require.NoError(t, ps.Publish(ctx, "user.created", fx.raw))

			env := envReceive(t, got, "the persistent-bus event")
			assert.Equal(t, "user.created", env.EventName)
			assert.Equal(t, durabus.EventID(fx.eventID), env.EventID)
			assert.Equal(t, pbPublishedBy, env.PublishedBy)
			want := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
			assert.True(t, env.PublishedAt.Equal(want), "PublishedAt = %v, want %v", env.PublishedAt, want)
			assert.Equal(t, tc.payload, env.Payload)
			assert.Empty(t, env.CorrelationID)
			assert.Empty(t, env.Key)
			assert.Empty(t, env.Headers)
			assert.False(t, env.Replay)
			assert.Equal(t, 1, env.Attempt)

			// The inbox entry completes: nothing about the message was rejected.
			db := envOpenDB(t, path)
			require.Eventually(t, func() bool {
				var state string
				err := db.QueryRowContext(ctx, `SELECT state FROM durabus_inbox WHERE consumer = ? AND event_id = ?`,
					"notification-svc", fx.eventID).Scan(&state)
				return err == nil && state == "COMPLETED"
			}, envWait, envTick, "the inbox entry of %s never became COMPLETED", fx.eventID)
		})
	}
}

// Direction 2: durabus publishes what persistent-bus expects.
func TestEnvelopeToPersistentBus(t *testing.T) {
	ctx := envCtx(t)
	ps := envMemPubSub(t)
	raw := envCapture(t, ps, "user.created")
	bus, _ := envOpenBus(t, pbPublishedBy, ps)

	before := time.Now().UTC().Truncate(time.Millisecond)
	id, err := bus.Publish(ctx, pbUserCreated{ID: "abc", Email: "a@b.com"})
	require.NoError(t, err)
	after := time.Now().UTC()
	msg := envReceive(t, raw, "the published event on channel user.created")

	fields, keys := envKeys(t, msg)
	assert.Equal(t, []string{"eventId", "eventName", "payload", "publishedAt", "publishedBy"}, keys,
		"an envelope without options has exactly persistent-bus's keys: %s", msg)
	assert.Equal(t, "user.created", envString(t, fields, "eventName"))
	assert.Equal(t, pbPublishedBy, envString(t, fields, "publishedBy"))
	assert.JSONEq(t, `{"id":"abc","email":"a@b.com"}`, string(fields["payload"]))

	eventID := envString(t, fields, "eventId")
	assert.Equal(t, string(id), eventID, "the eventId on the wire is the ID Publish returned")
	u, err := uuid.Parse(eventID)
	require.NoError(t, err, "eventId %q is not a UUID", eventID)
	assert.Equal(t, uuid.Version(7), u.Version(), "eventId %q is not a UUIDv7", eventID)
	assert.Equal(t, uuid.RFC4122, u.Variant(), "eventId %q", eventID)
	assert.Equal(t, u.String(), eventID, "eventId is in the canonical lower-case form")

	publishedAt := envString(t, fields, "publishedAt")
	assert.Regexp(t, pbTimeFormat, publishedAt, "publishedAt is not in Date.toISOString's format")
	at, err := time.Parse(time.RFC3339Nano, publishedAt)
	require.NoError(t, err)
	assert.False(t, at.Before(before) || at.After(after), "publishedAt %v is not within [%v, %v]", at, before, after)

	golden, err := os.ReadFile(filepath.Join(pbGoldenDir, "user.created.golden.json"))
	require.NoError(t, err)
	assert.Equal(t, string(golden), string(envNormalise(t, msg)))
}

// The optional fields appear with their documented names, and a durabus
// consumer gets them back.
func TestEnvelopeOptionalFields(t *testing.T) {
	ctx := envCtx(t)
	ps := envMemPubSub(t)
	raw := envCapture(t, ps, "user.created")
	publisher, _ := envOpenBus(t, pbPublishedBy, ps)
	consumer, _ := envOpenBus(t, "notification-svc", ps)
	got := make(chan durabus.Envelope[pbUserCreated], 8)
	require.NoError(t, durabus.Handle(consumer, func(_ context.Context, env durabus.Envelope[pbUserCreated]) error {
		got <- env
		return nil
	}))
	headers := map[string]string{
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"tracestate":  "congo=t61rcWkgMzE",
	}

	id, err := publisher.Publish(ctx, pbUserCreated{ID: "abc", Email: "a@b.com"},
		durabus.WithCorrelationID("req-42"), durabus.WithKey("abc"), durabus.WithHeaders(headers))
	require.NoError(t, err)

	msg := envReceive(t, raw, "the published event on channel user.created")
	fields, keys := envKeys(t, msg)
	assert.Equal(t, []string{"correlationId", "eventId", "eventName", "headers", "key", "payload", "publishedAt", "publishedBy"}, keys)
	assert.Equal(t, "req-42", envString(t, fields, "correlationId"))
	assert.Equal(t, "abc", envString(t, fields, "key"))
	var gotHeaders map[string]string
	require.NoError(t, json.Unmarshal(fields["headers"], &gotHeaders))
	assert.Equal(t, headers, gotHeaders)
	golden, err := os.ReadFile(filepath.Join(pbGoldenDir, "user.created.options.golden.json"))
	require.NoError(t, err)
	assert.Equal(t, string(golden), string(envNormalise(t, msg)))

	env := envReceive(t, got, "the event at the durabus consumer")
	assert.Equal(t, id, env.EventID)
	assert.Equal(t, pbPublishedBy, env.PublishedBy)
	assert.Equal(t, "req-42", env.CorrelationID)
	assert.Equal(t, "abc", env.Key)
	assert.Equal(t, headers, env.Headers)
	assert.Equal(t, pbUserCreated{ID: "abc", Email: "a@b.com"}, env.Payload)
}

// A persistent-bus event whose payload is not the Go type's JSON becomes a
// DEAD inbox entry holding the raw bytes and the reason; the handler never
// runs.
func TestEnvelopeFromPersistentBusPayloadMismatchIsDead(t *testing.T) {
	for _, fixture := range []string{"user.created.numeric-payload.json", "user.created.array-payload.json"} {
		t.Run(fixture, func(t *testing.T) {
			ctx := envCtx(t)
			fx := loadPBFixture(t, fixture)
			ps := envMemPubSub(t)
			bus, path := envOpenBus(t, "notification-svc", ps)
			var calls atomic.Int64
			require.NoError(t, durabus.Handle(bus, func(context.Context, durabus.Envelope[pbUserCreated]) error {
				calls.Add(1)
				return nil
			}))

			require.NoError(t, ps.Publish(ctx, "user.created", fx.raw))

			db := envOpenDB(t, path)
			var state, lastError string
			var message []byte
			require.Eventually(t, func() bool {
				err := db.QueryRowContext(ctx, `SELECT state, COALESCE(last_error, ''), message FROM durabus_inbox
WHERE consumer = ? AND event_id = ?`, "notification-svc", fx.eventID).Scan(&state, &lastError, &message)
				return err == nil && state == "DEAD"
			}, envWait, envTick, "no DEAD inbox entry for %s (last state %q)", fx.eventID, state)
			assert.NotEmpty(t, lastError, "a DEAD entry says why")
			assert.Equal(t, string(fx.raw), string(message), "a DEAD entry keeps the raw message")
			assert.Zero(t, calls.Load(), "the handler ran on a payload that does not decode")

			var rows int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM durabus_inbox`).Scan(&rows))
			assert.Equal(t, 1, rows, "one entry for one handler")
		})
	}
}
