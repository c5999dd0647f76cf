//go:build race

package faulttest

// raceEnabled: the test binary, and so every helper process, is built with
// the race detector.
const raceEnabled = true
