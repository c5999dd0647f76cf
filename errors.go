package durabus

import (
	"errors"
	"fmt"
	"time"

	"github.com/durabus/durabus/internal/engine"
	"github.com/durabus/durabus/internal/store"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrClosed is returned by calls made after Close started.
	ErrClosed = engine.ErrClosed
	// ErrInvalidConfig wraps every problem Open found in a Config.
	ErrInvalidConfig = errors.New("durabus: invalid config")
	// ErrInvalidEventName is returned when an event's name is empty, longer
	// than 255 bytes, not UTF-8 or holds control characters. Nothing is written.
	ErrInvalidEventName = errors.New("durabus: invalid event name")
	// ErrInvalidPayload is returned by Publish when the event's Validate
	// method fails or it cannot be encoded as JSON. Nothing is written.
	ErrInvalidPayload = errors.New("durabus: invalid payload")
	// ErrMessageTooLarge is returned by Publish when the encoded event is
	// larger than Config.MaxMessageBytes. Nothing is written.
	ErrMessageTooLarge = errors.New("durabus: message too large")
	// ErrEventType is returned by Handle when the handler's event type is not
	// one the bus consumes (its type parameter S).
	ErrEventType = errors.New("durabus: event type not consumed by this bus")
	// ErrNotSupported is returned when a call needs the half of the PubSub
	// that it lacks (see PublishOnly and SubscribeOnly).
	ErrNotSupported = errors.New("durabus: not supported by this PubSub")
	// ErrCorruptDatabase is returned when the file is not a SQLite database
	// or is corrupt.
	ErrCorruptDatabase = store.ErrNotDatabase
	// ErrDatabaseLocked is returned when SQLite stayed busy for longer than
	// Config.BusyTimeout.
	ErrDatabaseLocked = store.ErrLocked
	// ErrSchemaTooNew is returned by Open when the database was migrated by a
	// newer durabus.
	ErrSchemaTooNew = store.ErrTooNew
)

// PanicError is the error a handler's panic becomes. Its Error includes the
// stack, which the DEAD row keeps.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", e.Value, e.Stack) }

// ValidationError is a payload whose Validate method failed.
type ValidationError struct {
	EventName string
	Err       error
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("durabus: invalid payload for %q: %v", e.EventName, e.Err)
}

// Unwrap returns the validation error; errors.Is(err, ErrInvalidPayload) is true.
func (e *ValidationError) Unwrap() []error { return []error{ErrInvalidPayload, e.Err} }

// Unrecoverable wraps a handler error to say that retrying cannot help: the
// inbox entry becomes DEAD at once.
func Unrecoverable(err error) error {
	if err == nil {
		err = errors.New("unrecoverable")
	}
	return &unrecoverableError{err: err}
}

// RetryAfter wraps a handler error to ask for the next attempt after d
// instead of the retry policy's delay. The attempt still counts toward
// MaxRetries.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		err = fmt.Errorf("retry after %v", d)
	}
	return &retryAfterError{err: err, after: d}
}

type unrecoverableError struct{ err error }

func (e *unrecoverableError) Error() string { return "unrecoverable: " + e.err.Error() }
func (e *unrecoverableError) Unwrap() error { return e.err }

type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// classify tells the engine what a handler error asks for.
func classify(err error) (unrecoverable bool, after time.Duration) {
	var u *unrecoverableError
	if errors.As(err, &u) {
		return true, 0
	}
	var r *retryAfterError
	if errors.As(err, &r) {
		return false, r.after
	}
	return false, 0
}
