package durabus

import "time"

// WithClock returns cfg with its clock replaced by now, so that tests can
// check due times, ages and retention exactly.
func WithClock(cfg Config, now func() time.Time) Config {
	cfg.now = now
	return cfg
}
