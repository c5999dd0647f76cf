package durabus

import (
	"context"
	"time"
)

// PubSub moves messages between buses on named channels: an event's channel
// is its name (after Config.ChannelPrefix), and each bus has an ack channel.
// The redispubsub package adapts go-redis; mempubsub is in-memory.
type PubSub interface {
	// Publish sends msg on channel and returns once the broker accepted it.
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe calls fn with every message on channel until unsubscribe is
	// called. fn returns nil once the bus has stored the message; a durable
	// transport acknowledges only then and redelivers otherwise. fn may be
	// called concurrently. unsubscribe waits for fn calls in flight.
	Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (unsubscribe func() error, err error)
	// Close releases the PubSub's connections. The bus never calls it: close
	// the PubSub after the bus.
	Close() error
}

// BatchPublisher is an optional PubSub capability: publishing many messages
// in one round trip (a pipeline). The relay uses it when present.
type BatchPublisher interface {
	// PublishBatch sends msgs[i] on channels[i] and returns the first error.
	PublishBatch(ctx context.Context, channels []string, msgs [][]byte) error
}

// Claimer is an optional PubSub capability for replicas: several processes
// of one consumer group (the same Name), each with its own SQLite file.
// When the PubSub is a Claimer, the replicas race for each event with Claim
// and only the winner stores and handles it; if the winner dies before
// storing it, the claim expires after Config.ClaimTTL and the publisher's
// re-send reaches another replica. Without a Claimer every replica stores
// and handles every event (at least once, with duplicates). A bus claims
// under the id of its SQLite file, so a restarted replica still holds its
// claims. redispubsub implements it with SET NX PX.
type Claimer interface {
	// Claim takes key for owner, for ttl, and reports whether owner holds
	// it: it took it now, or held it already.
	Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error)
}

// BatchClaimer is an optional Claimer capability: claim many keys in one
// round trip (a pipeline). A bus receiving many events at once uses it when
// present; redispubsub implements it.
type BatchClaimer interface {
	// ClaimBatch is Claim for each of keys; held[i] answers keys[i].
	ClaimBatch(ctx context.Context, keys []string, owner string, ttl time.Duration) (held []bool, err error)
}

// Publisher is the publishing half of a PubSub.
type Publisher interface {
	Publish(ctx context.Context, channel string, msg []byte) error
}

// Subscriber is the subscribing half of a PubSub.
type Subscriber interface {
	Subscribe(ctx context.Context, channel string, fn func(ctx context.Context, msg []byte) error) (unsubscribe func() error, err error)
}

// PublishOnly makes a PubSub of a Publisher. A bus on it cannot Handle
// events (ErrNotSupported) and cannot hear acknowledgements, so its outbox
// rows become COMPLETED as soon as the broker accepted them.
func PublishOnly(p Publisher) PubSub { return publishOnly{p} }

// SubscribeOnly makes a PubSub of a Subscriber. A bus on it cannot Publish
// (ErrNotSupported) and does not send acknowledgements: publishers hear
// nothing from it and re-send until MaxRetries.
func SubscribeOnly(s Subscriber) PubSub { return subscribeOnly{s} }

type publishOnly struct{ Publisher }

func (publishOnly) Subscribe(context.Context, string, func(context.Context, []byte) error) (func() error, error) {
	return nil, ErrNotSupported
}
func (publishOnly) Close() error { return nil }

type subscribeOnly struct{ Subscriber }

func (subscribeOnly) Publish(context.Context, string, []byte) error { return ErrNotSupported }
func (subscribeOnly) Close() error                                  { return nil }

// halves reports which halves of ps work.
func halves(ps PubSub) (canPublish, canSubscribe bool) {
	switch ps.(type) {
	case publishOnly:
		return true, false
	case subscribeOnly:
		return false, true
	}
	return true, true
}
