// Command quickstart publishes a few events on a durabus bus, handles them
// and prints every state transition. It uses the Redis at REDIS_URL, or an
// embedded Redis (miniredis) when REDIS_URL is unset, so it runs on a
// machine with only Go:
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/redispubsub"
)

// UserCreated is an event. Its name is its channel and its identity on the
// wire.
type UserCreated struct {
	ID    string `json:"id"`
	Email string `json:"email"`
}

// EventName implements durabus.Event.
func (UserCreated) EventName() string { return "user.created" }

// Validate is called when the event is published and when it is received.
func (u UserCreated) Validate() error {
	if u.ID == "" {
		return errors.New("id is required")
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	url := os.Getenv("REDIS_URL")
	if url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
		fmt.Println("REDIS_URL is unset: using an embedded Redis at", mr.Addr())
	}
	ps, err := redispubsub.NewURL(url)
	if err != nil {
		return err
	}
	defer ps.Close() // after the bus: the bus never closes a PubSub

	dir, err := os.MkdirTemp("", "durabus-quickstart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
		Name:         "quickstart",
		Path:         filepath.Join(dir, "bus.db"),
		PubSub:       ps,
		PendingDelay: time.Second,
		RetryPolicy:  durabus.ExponentialBackoff{Base: 50 * time.Millisecond},
	})
	if err != nil {
		return err
	}

	const events = 3
	var failedOnce atomic.Bool
	err = durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[UserCreated]) error {
		fmt.Printf("handler: %s attempt %d, welcome %s\n", env.Payload.ID, env.Attempt, env.Payload.Email)
		if env.Payload.ID == "u2" && failedOnce.CompareAndSwap(false, true) {
			return errors.New("mail server busy") // retried with backoff
		}
		return nil
	})
	if err != nil {
		return err
	}

	for i := 1; i <= events; i++ {
		u := UserCreated{ID: fmt.Sprintf("u%d", i), Email: fmt.Sprintf("user%d@example.com", i)}
		id, err := bus.Publish(ctx, u)
		if err != nil {
			return err
		}
		fmt.Printf("published %s as event %s (committed to the outbox)\n", u.ID, id)
	}

	// Watch the rows move through their states until every outbox row is
	// COMPLETED: the consumer's acks travel back through Redis.
	var last string
	for {
		s, err := bus.Stats(ctx)
		if err != nil {
			return err
		}
		now := fmt.Sprintf("outbox PENDING=%d PROCESSING=%d COMPLETED=%d DEAD=%d | inbox PROCESSING=%d COMPLETED=%d DEAD=%d",
			s.Outbox.Pending, s.Outbox.Processing, s.Outbox.Completed, s.Outbox.Dead,
			s.Inbox.Processing, s.Inbox.Completed, s.Inbox.Dead)
		if now != last {
			fmt.Println(now)
			last = now
		}
		if s.Outbox.Completed == events && s.Inbox.Completed == events {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("events did not complete: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return bus.Close(ctx)
}
