package engine

import (
	"context"
	"testing"
	"time"
)

// fill puts flowLimit bytes in flight as one event.
func fill(t *testing.T, f *flow, id string) {
	t.Helper()
	if err := f.acquire(context.Background(), []string{id}, []int{flowLimit}); err != nil {
		t.Fatal(err)
	}
}

func acquireAsync(f *flow, id string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- f.acquire(context.Background(), []string{id}, []int{1}) }()
	return done
}

func TestFlowWaitsForAcks(t *testing.T) {
	f := newFlow(time.Hour)
	fill(t, f, "a")
	done := acquireAsync(f, "b")
	select {
	case err := <-done:
		t.Fatalf("acquire returned (%v) while the window was full", err)
	default:
	}
	f.done("a")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f.bytes != 1 {
		t.Fatalf("%d bytes in flight, want 1", f.bytes)
	}
}

func TestFlowForgetsUnacknowledgedSendsAfterExpiry(t *testing.T) {
	f := newFlow(20 * time.Millisecond)
	fill(t, f, "lost")
	select {
	case err := <-acquireAsync(f, "next"):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a send whose ack never came kept the window shut")
	}
	if _, ok := f.byID["lost"]; ok {
		t.Fatal("the expired entry is still counted")
	}
}

func TestFlowAcquireEndsWithContext(t *testing.T) {
	f := newFlow(time.Hour)
	fill(t, f, "a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.acquire(ctx, []string{"b"}, []int{1}); err == nil {
		t.Fatal("acquire on a full window returned nil after its context ended")
	}
}

func TestFlowCountsAResendOnce(t *testing.T) {
	f := newFlow(time.Hour)
	for range 2 {
		if err := f.acquire(context.Background(), []string{"a"}, []int{10}); err != nil {
			t.Fatal(err)
		}
	}
	if f.bytes != 10 {
		t.Fatalf("%d bytes in flight, want 10", f.bytes)
	}
	f.done("a", "unknown")
	if f.bytes != 0 || len(f.byID) != 0 {
		t.Fatalf("%d bytes and %d entries left after the ack", f.bytes, len(f.byID))
	}
}
