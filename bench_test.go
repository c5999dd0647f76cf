package durabus_test

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

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

// BenchmarkEndToEnd measures Publish → relay → in-memory PubSub → inbox →
// handler → COMPLETED on one bus, until every handler ran.
func BenchmarkEndToEnd(b *testing.B) {
	bus, _ := openBench(b, durabus.SyncFull)
	ctx := context.Background()
	var handled atomic.Int64
	done := make(chan struct{})
	target := int64(b.N)
	if err := durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[benchEvent]) error {
		if handled.Add(1) == target {
			close(done)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	b.SetParallelism(64 / max(1, testingProcs()))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := bus.Publish(ctx, benchEvent{N: int(next.Add(1)), Body: benchBody}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	<-done
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
