package durabus

import (
	"context"
	"fmt"
	"reflect"
	"runtime/debug"

	"github.com/durabus/durabus/internal/engine"
	"github.com/durabus/durabus/internal/wire"
)

// Handle adds a handler for events of type E, which must be a type the bus
// consumes (S itself, or a type implementing S when S is an interface).
// Each received event is stored in the inbox, one entry per handler, before
// its receipt is acknowledged; workers then run the handlers.
//
// A handler that returns nil completes its entry. An error is retried with
// the bus's RetryPolicy (or the delay of RetryAfter) until MaxRetries, then
// the entry is DEAD; Unrecoverable makes it DEAD at once, and so does a
// payload that does not decode as E or fails its Validate method. A panic is
// an error with its stack. Handlers of one event keep separate entries: one
// failing never re-runs another.
//
// Handle is a function rather than a method because Go methods cannot have
// type parameters of their own.
func Handle[E Event, P, S Event](b *Bus[P, S], h func(ctx context.Context, env Envelope[E]) error, opts ...HandlerOption) error {
	if h == nil {
		return fmt.Errorf("durabus: Handle: handler is nil")
	}
	te, ts := reflect.TypeFor[E](), reflect.TypeFor[S]()
	if te != ts && (ts.Kind() != reflect.Interface || !te.Implements(ts)) {
		return fmt.Errorf("%w: %v is not %v; consume it with a bus whose S it implements", ErrEventType, te, ts)
	}
	var zero E
	name, err := eventName(zero)
	if err != nil {
		return fmt.Errorf("durabus: Handle %v: %w", te, err)
	}
	if _, canSubscribe := halves(b.cfg.PubSub); !canSubscribe {
		return fmt.Errorf("durabus: Handle %q: %w (the bus's PubSub is publish-only)", name, ErrNotSupported)
	}
	o := handlerOptions{name: name}
	for _, opt := range opts {
		opt(&o)
	}
	if err := wire.CheckName("handler name", o.name); err != nil {
		return fmt.Errorf("durabus: Handle %q: %v", name, err)
	}
	err = b.eng.AddHandler(engine.Handler{
		EventName: name,
		Name:      o.name,
		Run: func(ctx context.Context, msg []byte, decoded *wire.Envelope, attempt int) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = &PanicError{Value: r, Stack: debug.Stack()}
				}
			}()
			if decoded == nil {
				if decoded, err = wire.Decode(msg); err != nil {
					return Unrecoverable(err)
				}
			}
			env, err := typedEnvelope[E](decoded, attempt)
			if err != nil {
				return Unrecoverable(err)
			}
			return h(ctx, env)
		},
	})
	if err != nil {
		return fmt.Errorf("durabus: Handle %q: %w", name, err)
	}
	return nil
}
