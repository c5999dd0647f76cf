package durabus

import (
	"math/rand/v2"
	"time"
)

// RetryPolicy decides how long to wait before the next attempt of a failed
// handler, and before the relay re-sends an event no one acknowledged.
type RetryPolicy interface {
	// NextRetry returns the delay after the given attempt (1 for the first)
	// failed.
	NextRetry(attempt int) time.Duration
}

// Default retry policy values.
const (
	DefaultRetryBase = time.Second
	DefaultRetryCap  = 60 * time.Second
)

// ExponentialBackoff doubles the delay after each attempt, from Base up to
// Cap, and spreads it by Jitter so that failures do not retry in lockstep.
type ExponentialBackoff struct {
	// Base is the delay after the first attempt. Defaults to 1 s.
	Base time.Duration
	// Cap bounds the delay. Defaults to 60 s.
	Cap time.Duration
	// Jitter is the fraction by which a delay may randomly shrink or grow,
	// in [0, 1]. Defaults to 0.2; negative disables it.
	Jitter float64
}

// NextRetry implements RetryPolicy.
func (p ExponentialBackoff) NextRetry(attempt int) time.Duration {
	base := p.Base
	if base <= 0 {
		base = DefaultRetryBase
	}
	limit := p.Cap
	if limit <= 0 {
		limit = DefaultRetryCap
	}
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	jitter := p.Jitter
	switch {
	case jitter == 0:
		jitter = 0.2
	case jitter < 0:
		return d
	}
	jitter = min(jitter, 1)
	spread := (rand.Float64()*2 - 1) * jitter // in [-jitter, jitter)
	return min(time.Duration(float64(d)*(1+spread)), limit)
}
