// Package durabus is a durable, typed event bus for Go services that run
// Redis.
//
// Every event is committed to a local SQLite outbox before it touches the
// network, and every received event is committed to the consumer's own
// SQLite inbox before its receipt is acknowledged. Retries, dead letters,
// de-duplication and crash recovery therefore live in SQLite, not in the
// broker; Redis pub/sub only carries messages, and a lost message is sent
// again.
//
// # Events
//
// An event is a Go type that names itself:
//
//	type UserCreated struct{ ID string `json:"id"` }
//
//	func (UserCreated) EventName() string { return "user.created" }
//
// The name is the event's channel and its identity on the wire; the payload
// travels as JSON. A type with a Validate() error method is validated when
// it is published and when it is received.
//
// # Opening a bus
//
// A Bus[P, S] publishes events of type P and consumes events of type S,
// usually interfaces (durabus.Event, or your own):
//
//	bus, err := durabus.Open[durabus.Event, durabus.Event](ctx, durabus.Config{
//		Name:   "order-service",                  // publisher name and consumer group
//		Path:   "/var/lib/orders/bus.db",         // or DB: an open *sql.DB
//		PubSub: redispubsub.New(redisClient),
//	})
//
// # Publishing
//
// Publish returns once the event is committed; a background relay sends it
// and re-sends it until a consumer acknowledges receipt. PublishTx writes
// the event in your own transaction on the same database (the
// transactional outbox): it exists if and only if you commit.
//
// # Handling
//
// Handle adds a handler for one event type:
//
//	durabus.Handle(bus, func(ctx context.Context, env durabus.Envelope[UserCreated]) error {
//		return sendWelcomeMail(ctx, env.Payload)
//	})
//
// Each received event is stored in the inbox, one entry per handler, before
// its receipt is acknowledged; a pool of workers runs the handlers.
//
// # Retries, dead letters, recall
//
// A handler error is retried with the RetryPolicy (capped exponential
// backoff with jitter) up to Config.MaxRetries, then the entry is DEAD and
// Config.OnDead is called. RetryAfter asks for a specific delay and
// Unrecoverable for none; a panic is an error with its stack. RecallOutgoing
// re-sends unfinished outbox rows, RecallDead gives DEAD rows another run,
// and PerishDead deletes old DEAD rows. Stats counts rows by state.
//
// # Consumer groups and replay
//
// A bus's Name is its consumer group. Consumers announce their group and
// events (hello); publishers track each event per group and re-send to a
// group that was offline when it comes back, on the group's own channel.
// Replicas of one group share events through a Claimer (redispubsub has
// one). Replay re-delivers stored events, even completed ones, so that a
// group's handlers run again.
//
// # Closing
//
// Close stops intake, lets running handlers finish until its context ends,
// then cancels them, writes what is pending and closes what the bus opened.
// Close the PubSub after the bus.
package durabus
