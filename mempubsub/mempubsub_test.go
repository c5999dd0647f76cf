package mempubsub_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/durabus/durabus/mempubsub"
	"github.com/durabus/durabus/pubsubtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestContract(t *testing.T) {
	pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
		return mempubsub.New()
	})
}

func TestContractSmallLimits(t *testing.T) {
	pubsubtest.Run(t, func(t *testing.T) pubsubtest.PubSubUnderTest {
		return mempubsub.New(mempubsub.WithQueueSize(1), mempubsub.WithMaxInFlight(1))
	})
}

// subscribeChan subscribes and returns the messages received.
func subscribeChan(t *testing.T, ps *mempubsub.PubSub, channel string) <-chan string {
	t.Helper()
	got := make(chan string, 100)
	unsubscribe, err := ps.Subscribe(t.Context(), channel, func(ctx context.Context, msg []byte) error {
		select {
		case got <- string(msg):
		case <-ctx.Done():
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unsubscribe() })
	return got
}

func next(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return ""
	}
}

func TestSetPublishError(t *testing.T) {
	ps := mempubsub.New()
	defer ps.Close()
	got := subscribeChan(t, ps, "c")

	boom := errors.New("boom")
	ps.SetPublishError(boom)
	if err := ps.Publish(t.Context(), "c", []byte("lost")); !errors.Is(err, boom) {
		t.Fatalf("Publish: got %v, want %v", err, boom)
	}
	if err := ps.PublishBatch(t.Context(), []string{"c"}, [][]byte{[]byte("lost")}); !errors.Is(err, boom) {
		t.Fatalf("PublishBatch: got %v, want %v", err, boom)
	}
	ps.SetPublishError(nil)
	if err := ps.Publish(t.Context(), "c", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, got); m != "ok" {
		t.Fatalf("got %q, want ok", m)
	}
	if n := ps.Published(); n != 1 {
		t.Fatalf("Published() = %d, want 1", n)
	}
}

func TestDropNext(t *testing.T) {
	ps := mempubsub.New(mempubsub.WithMaxInFlight(1)) // one fn at a time keeps the order
	defer ps.Close()
	got := subscribeChan(t, ps, "c")

	ps.DropNext(2)
	for _, m := range []string{"drop1", "drop2", "keep"} {
		if err := ps.Publish(t.Context(), "c", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if m := next(t, got); m != "keep" {
		t.Fatalf("got %q, want keep", m)
	}
	if n := ps.Published(); n != 3 {
		t.Fatalf("Published() = %d, want 3 (dropped messages count)", n)
	}
}

func TestPublishCopiesMessage(t *testing.T) {
	ps := mempubsub.New()
	defer ps.Close()
	got := subscribeChan(t, ps, "c")
	buf := []byte("original")
	if err := ps.Publish(t.Context(), "c", buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "CHANGED!")
	if m := next(t, got); m != "original" {
		t.Fatalf("got %q, want original", m)
	}
}

func TestPublishBlocksWhenQueueIsFull(t *testing.T) {
	ps := mempubsub.New(mempubsub.WithQueueSize(1), mempubsub.WithMaxInFlight(1))
	defer ps.Close()
	calls := make(chan string)
	release := make(chan struct{})
	unsubscribe, err := ps.Subscribe(t.Context(), "c", func(_ context.Context, msg []byte) error {
		calls <- string(msg)
		<-release
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unsubscribe()

	publish := func(ctx context.Context, m string) error { return ps.Publish(ctx, "c", []byte(m)) }
	if err := publish(t.Context(), "1"); err != nil {
		t.Fatal(err)
	}
	<-calls // fn holds "1"
	if err := publish(t.Context(), "2"); err != nil {
		t.Fatal(err)
	}
	// "2" fills the queue: a Publish with a done context cannot get in.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := publish(ctx, "3"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish on a full queue with a done context: got %v, want context.Canceled", err)
	}

	blocked := make(chan error, 1)
	go func() { blocked <- publish(t.Context(), "4") }()
	close(release)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2", "4"} {
		if m := <-calls; m != want {
			t.Fatalf("got %q, want %q", m, want)
		}
	}
}

func TestClosedErrors(t *testing.T) {
	ps := mempubsub.New()
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ps.Publish(t.Context(), "c", nil); !errors.Is(err, mempubsub.ErrClosed) {
		t.Fatalf("Publish: got %v, want ErrClosed", err)
	}
	if _, err := ps.Subscribe(t.Context(), "c", func(context.Context, []byte) error { return nil }); !errors.Is(err, mempubsub.ErrClosed) {
		t.Fatalf("Subscribe: got %v, want ErrClosed", err)
	}
}

func TestCloseCancelsAndWaitsForFn(t *testing.T) {
	ps := mempubsub.New()
	entered := make(chan struct{})
	returned := false
	_, err := ps.Subscribe(t.Context(), "c", func(ctx context.Context, _ []byte) error {
		close(entered)
		<-ctx.Done()
		returned = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Publish(t.Context(), "c", nil); err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
	if !returned { // the race detector also checks Close waited
		t.Fatal("Close returned before fn")
	}
}

func TestBatchLengthMismatch(t *testing.T) {
	ps := mempubsub.New()
	defer ps.Close()
	if err := ps.PublishBatch(t.Context(), []string{"a", "b"}, [][]byte{nil}); err == nil {
		t.Fatal("PublishBatch with 2 channels for 1 message succeeded")
	}
}
