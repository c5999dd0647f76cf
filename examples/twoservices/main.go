// Command twoservices runs two services, each with its own bus and its own
// SQLite file, that exchange events through Redis: orders publishes
// order.placed, billing handles it and publishes invoice.created, which
// orders handles. Acks travel back through Redis, so each publisher's
// outbox rows reach COMPLETED although the consumer keeps its own database.
//
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/twoservices
//
// Without REDIS_URL it starts an embedded Redis.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/durabus/durabus"
	"github.com/durabus/durabus/redispubsub"
)

// OrderPlaced is published by orders.
type OrderPlaced struct {
	OrderID string `json:"orderId"`
	Cents   int    `json:"cents"`
}

// EventName implements durabus.Event.
func (OrderPlaced) EventName() string { return "order.placed" }

// InvoiceCreated is published by billing.
type InvoiceCreated struct {
	OrderID   string `json:"orderId"`
	InvoiceID string `json:"invoiceId"`
}

// EventName implements durabus.Event.
func (InvoiceCreated) EventName() string { return "invoice.created" }

const orders = 5

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// service is one process's bus: what it publishes and what it consumes are
// its own types, checked by the compiler and by Handle.
type service[P, S durabus.Event] struct {
	bus *durabus.Bus[P, S]
	ps  *redispubsub.PubSub
}

func open[P, S durabus.Event](ctx context.Context, name, dir, url string) (*service[P, S], error) {
	ps, err := redispubsub.NewURL(url) // each service has its own connections
	if err != nil {
		return nil, err
	}
	bus, err := durabus.Open[P, S](ctx, durabus.Config{
		Name:         name,
		Path:         filepath.Join(dir, name+".db"),
		PubSub:       ps,
		PendingDelay: time.Second,
	})
	if err != nil {
		ps.Close()
		return nil, err
	}
	return &service[P, S]{bus: bus, ps: ps}, nil
}

func (s *service[P, S]) close(ctx context.Context) error {
	err := s.bus.Close(ctx)
	s.ps.Close()
	return err
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
	}
	dir, err := os.MkdirTemp("", "durabus-twoservices")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ordersSvc, err := open[OrderPlaced, InvoiceCreated](ctx, "orders", dir, url)
	if err != nil {
		return err
	}
	defer ordersSvc.close(ctx)
	billing, err := open[InvoiceCreated, OrderPlaced](ctx, "billing", dir, url)
	if err != nil {
		return err
	}
	defer billing.close(ctx)

	invoiced := make(chan string, orders)
	err = durabus.Handle(billing.bus, func(ctx context.Context, env durabus.Envelope[OrderPlaced]) error {
		_, err := billing.bus.Publish(ctx, InvoiceCreated{OrderID: env.Payload.OrderID, InvoiceID: "inv-" + env.Payload.OrderID},
			durabus.WithCorrelationID(string(env.EventID)))
		return err
	})
	if err != nil {
		return err
	}
	err = durabus.Handle(ordersSvc.bus, func(ctx context.Context, env durabus.Envelope[InvoiceCreated]) error {
		invoiced <- env.Payload.OrderID
		return nil
	})
	if err != nil {
		return err
	}

	for i := 1; i <= orders; i++ {
		if _, err := ordersSvc.bus.Publish(ctx, OrderPlaced{OrderID: fmt.Sprint(i), Cents: 100 * i}); err != nil {
			return err
		}
	}
	for range orders {
		select {
		case id := <-invoiced:
			fmt.Println("orders: order", id, "invoiced")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := waitCompleted(ctx, "orders", ordersSvc.bus.Stats); err != nil {
		return err
	}
	if err := waitCompleted(ctx, "billing", billing.bus.Stats); err != nil {
		return err
	}
	if err := billing.close(ctx); err != nil {
		return err
	}
	return ordersSvc.close(ctx)
}

// waitCompleted waits until every outbox row of a service is COMPLETED: its
// consumer, in the other service with another database, acknowledged it.
func waitCompleted(ctx context.Context, name string, stats func(context.Context) (durabus.Stats, error)) error {
	for {
		s, err := stats(ctx)
		if err != nil {
			return err
		}
		if s.Outbox.Completed == orders {
			fmt.Printf("%s: outbox %d COMPLETED (acknowledged by the other service)\n", name, s.Outbox.Completed)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: outbox rows not COMPLETED: %+v: %w", name, s.Outbox, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
