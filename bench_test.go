package durabus_test

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

// benchEvent is a 300-byte event, the size the performance figures use.
type benchEvent struct {
	N    int    `json:"n"`
	Body string `json:"body"`
}

func (benchEvent) EventName() string { return "bench.event" }

var benchBody = strings.Repeat("x", 220)

func openBench(b *testing.B, sync durabus.Synchronous) (*durabus.Bus[durabus.Event, durabus.Event], *mempubsub.PubSub) {
	b.Helper()
	ctx := context.Background()
	ps := mempubsub.New()
	bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
		Name: "bench", Path: filepath.Join(b.TempDir(), "bus.db"), PubSub: ps, Synchronous: sync,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := bus.Close(ctx); err != nil {
			b.Error(err)
		}
		ps.Close()
	})
	return bus, ps
}

// BenchmarkPublish measures Publish with 64 concurrent callers, each call
// returning after its commit (group commit shares the fsync).
func BenchmarkPublish(b *testing.B) {
	for _, s := range []durabus.Synchronous{durabus.SyncFull, durabus.SyncNormal} {
		b.Run(s.String(), func(b *testing.B) {
			bus, _ := openBench(b, s)
			ctx := context.Background()
			b.SetParallelism(64 / max(1, testingProcs()))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bus.Publish(ctx, benchEvent{Body: benchBody}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkEndToEnd measures Publish → relay → in-memory PubSub → the
// consumer's inbox → handler → COMPLETED acknowledged back, between two
// buses with separate database files, until every outbox row is COMPLETED.
func BenchmarkEndToEnd(b *testing.B) {
	ctx := context.Background()
	ps := mempubsub.New()
	b.Cleanup(func() { ps.Close() })
	open := func(name string) *durabus.Bus[durabus.Event, durabus.Event] {
		bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
			Name: name, Path: filepath.Join(b.TempDir(), name+".db"), PubSub: ps,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := bus.Close(ctx); err != nil {
				b.Error(err)
			}
		})
		return bus
	}
	pub, con := open("bench-pub"), open("bench-con")
	if err := durabus.Handle(con, func(ctx context.Context, env durabus.Envelope[benchEvent]) error {
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	waitGroupKnown(b, pub, "bench-con")
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(64 / max(1, testingProcs()))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := pub.Publish(ctx, benchEvent{Body: benchBody}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := pub.Stats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if s.Outbox.Completed == b.N {
			break
		}
		if s.Outbox.Dead > 0 {
			b.Fatalf("%d events are DEAD", s.Outbox.Dead)
		}
		if time.Now().After(deadline) {
			b.Fatalf("after 5 min, %d of %d events are COMPLETED (%+v)", s.Outbox.Completed, b.N, s.Outbox)
		}
		waitTick()
	}
}

// waitGroupKnown waits until pub heard the hello of group, so that its
// events are tracked per group as in production.
func waitGroupKnown(b *testing.B, pub *durabus.Bus[durabus.Event, durabus.Event], group string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s, err := pub.Stats(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, g := range s.Groups {
			if g.Name == group {
				return
			}
		}
		waitTick()
	}
	b.Fatalf("the publisher never heard of group %q", group)
}

// waitTick paces the polls above.
func waitTick() { <-time.After(2 * time.Millisecond) }

func testingProcs() int { return runtime.GOMAXPROCS(0) }
