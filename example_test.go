package durabus_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/mempubsub"
)

// OrderPlaced is an example event: a payload that names itself.
type OrderPlaced struct {
	OrderID string `json:"orderId"`
	Cents   int    `json:"cents"`
}

func (OrderPlaced) EventName() string { return "order.placed" }

// Validate runs on Publish and on receipt.
func (o OrderPlaced) Validate() error {
	if o.Cents <= 0 {
		return errors.New("cents must be positive")
	}
	return nil
}

// exampleDir returns a temporary directory for an example's database.
func exampleDir() (string, func()) {
	dir, err := os.MkdirTemp("", "durabus-example")
	if err != nil {
		log.Fatal(err)
	}
	return dir, func() { os.RemoveAll(dir) }
}

// exampleBus opens a bus named "orders" on an in-memory PubSub, with cfg's
// other fields, and returns it with what closes it all.
func exampleBus(cfg durabus.Config) (*durabus.Bus[durabus.Event, durabus.Event], func()) {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	ps := mempubsub.New()
	cfg.Name, cfg.Path, cfg.PubSub = "orders", filepath.Join(dir, "bus.db"), ps
	bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	return bus, func() {
		if err := bus.Close(ctx); err != nil {
			log.Fatal(err)
		}
		ps.Close()
		cleanup()
	}
}

// Publish an event and handle it on the same bus. In production the PubSub
// is redispubsub.New(client); here it is in memory.
func Example() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	ps := mempubsub.New()
	defer ps.Close()

	bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
		Name:   "orders",
		Path:   filepath.Join(dir, "bus.db"),
		PubSub: ps,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)

	done := make(chan struct{})
	err = durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[OrderPlaced]) error {
		fmt.Printf("%s from %s: order %s, %d cents\n", env.EventName, env.PublishedBy, env.Payload.OrderID, env.Payload.Cents)
		close(done)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := bus.Publish(ctx, OrderPlaced{OrderID: "42", Cents: 1999}); err != nil {
		log.Fatal(err)
	}
	<-done
	// Output: order.placed from orders: order 42, 1999 cents
}

// A payload that fails its Validate method is refused before anything is
// written.
func ExampleBus_Publish_validation() {
	ctx := context.Background()
	bus, closeAll := exampleBus(durabus.Config{})
	defer closeAll()

	_, err := bus.Publish(ctx, OrderPlaced{OrderID: "43"})
	fmt.Println(errors.Is(err, durabus.ErrInvalidPayload))
	fmt.Println(err)
	// Output:
	// true
	// durabus: invalid payload for "order.placed": cents must be positive
}

// PublishBatch stores many events with one commit: all of them, or none.
func ExampleBus_PublishBatch() {
	ctx := context.Background()
	bus, closeAll := exampleBus(durabus.Config{})
	defer closeAll()

	orders := []durabus.Event{OrderPlaced{OrderID: "1", Cents: 100}, OrderPlaced{OrderID: "2", Cents: 250}}
	ids, err := bus.PublishBatch(ctx, orders)
	fmt.Println(len(ids), err)

	_, err = bus.PublishBatch(ctx, []durabus.Event{OrderPlaced{OrderID: "3", Cents: 300}, OrderPlaced{OrderID: "4"}})
	fmt.Println(err)
	// Output:
	// 2 <nil>
	// durabus: invalid payload for "order.placed": cents must be positive (event 1 of the batch)
}

// PublishTx writes the event in the caller's transaction: it exists only if
// the transaction commits.
func ExampleBus_PublishTx() {
	ctx := context.Background()
	dir, cleanup := exampleDir()
	defer cleanup()
	ps := mempubsub.New()
	defer ps.Close()

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close() // the bus never closes a DB it was given
	if _, err := db.ExecContext(ctx, "CREATE TABLE orders (id TEXT PRIMARY KEY, cents INTEGER)"); err != nil {
		log.Fatal(err)
	}
	bus, err := durabus.Open[OrderPlaced, OrderPlaced](ctx, durabus.Config{Name: "orders", DB: db, PubSub: ps})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)
	done := make(chan string)
	if err := durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[OrderPlaced]) error {
		done <- env.Payload.OrderID
		return nil
	}); err != nil {
		log.Fatal(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO orders VALUES ('44', 500)"); err != nil {
		log.Fatal(err)
	}
	if _, err := bus.PublishTx(ctx, tx, OrderPlaced{OrderID: "44", Cents: 500}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("handled order", <-done)
	// Output: handled order 44
}

// A handler error is retried with backoff; Unrecoverable gives up at once
// and the entry is DEAD, reported to OnDead. RecallDead runs it again once
// the cause is fixed.
func ExampleUnrecoverable() {
	ctx := context.Background()
	dead := make(chan durabus.DeadLetter, 1)
	bus, closeAll := exampleBus(durabus.Config{
		OnDead: func(ctx context.Context, d durabus.DeadLetter) { dead <- d },
	})
	defer closeAll()

	fixed := make(chan struct{})
	completed := make(chan struct{})
	err := durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[OrderPlaced]) error {
		select {
		case <-fixed:
			close(completed)
			return nil
		default:
			return durabus.Unrecoverable(errors.New("unknown customer"))
		}
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := bus.Publish(ctx, OrderPlaced{OrderID: "45", Cents: 100}); err != nil {
		log.Fatal(err)
	}
	d := <-dead
	fmt.Printf("DEAD after %d attempt: %v\n", d.Attempts, d.Err)

	close(fixed)
	n, err := bus.RecallDead(ctx)
	if err != nil {
		log.Fatal(err)
	}
	<-completed
	fmt.Println("recalled", n, "and completed")
	// Output:
	// DEAD after 1 attempt: unrecoverable: unknown customer
	// recalled 1 and completed
}

// Replay re-delivers stored events, even completed ones, so that a group's
// handlers run again (after a bug fix, say). The envelope says it is a
// replay.
func ExampleBus_Replay() {
	ctx := context.Background()
	bus, closeAll := exampleBus(durabus.Config{})
	defer closeAll()

	runs := make(chan bool)
	if err := durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[OrderPlaced]) error {
		runs <- env.Replay
		return nil
	}); err != nil {
		log.Fatal(err)
	}
	if _, err := bus.Publish(ctx, OrderPlaced{OrderID: "46", Cents: 700}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("first run, replay:", <-runs)

	// Replay reaches the groups the bus heard of: here its own, whose hello
	// went out when the handler was added.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.After(10 * time.Second)
	for s, err := bus.Stats(ctx); len(s.Groups) == 0; s, err = bus.Stats(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		select {
		case <-poll.C:
		case <-deadline:
			log.Fatal("the bus never heard its own group")
		}
	}
	n, err := bus.Replay(ctx, durabus.ReplayFilter{EventNames: []string{"order.placed"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed", n)
	fmt.Println("second run, replay:", <-runs)
	// Output:
	// first run, replay: false
	// replayed 1
	// second run, replay: true
}
