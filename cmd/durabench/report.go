package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// jsonReport is the -json output: exactly these keys, all numbers. A
// workload that did not run, or failed, reports 0.
type jsonReport struct {
	RawEPS           float64 `json:"raw_eps"`
	NaiveEPS         float64 `json:"naive_eps"`
	InsertCeilingEPS float64 `json:"insert_ceiling_eps"`
	E2EEPS           float64 `json:"e2e_eps"`
	PublishEPS       float64 `json:"publish_eps"`
	P99MsAt1k        float64 `json:"p99_ms_at_1k"`
	P99MsAt10k       float64 `json:"p99_ms_at_10k"`
	DrainEPS         float64 `json:"drain_eps"`
	DrainPeakRSSMB   float64 `json:"drain_peak_rss_mb"`
}

// report returns the -json numbers of r.
func (r *results) report() jsonReport {
	p99 := func(rate int) float64 {
		if l := r.latencyAt(rate); l != nil {
			return round(l.P99, 3)
		}
		return 0
	}
	return jsonReport{
		RawEPS:           round(r.Raw.EPS(), 1),
		NaiveEPS:         round(r.Naive.EPS(), 1),
		InsertCeilingEPS: round(r.Insert.EPS(), 1),
		E2EEPS:           round(r.E2E.EPS(), 1),
		PublishEPS:       round(r.Publish.EPS(), 1),
		P99MsAt1k:        p99(1_000),
		P99MsAt10k:       p99(10_000),
		DrainEPS:         round(r.Drain.EPS(), 1),
		DrainPeakRSSMB:   round(r.DrainPeakRSSMB, 1),
	}
}

// round rounds x to digits decimals; NaN and infinities, which JSON cannot
// carry, become 0.
func round(x float64, digits int) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}

// writeJSON writes r's -json object on one line.
func writeJSON(w io.Writer, r *results) error {
	if err := json.NewEncoder(w).Encode(r.report()); err != nil {
		return fmt.Errorf("write the JSON report: %w", err)
	}
	return nil
}

// throughputRow is one line of the throughput table and chart.
type throughputRow struct {
	Key     string // the workload's -only name
	Label   string
	T       *throughput // nil: not run or failed
	Durabus bool        // durabus itself, rather than a baseline
}

// throughputRows lists the throughput results in display order.
func (r *results) throughputRows() []throughputRow {
	return []throughputRow{
		{"raw", "raw Redis pub/sub", r.Raw, false},
		{"naive", "naive outbox + inbox", r.Naive, false},
		{"insert", "SQLite insert ceiling", r.Insert, false},
		{"e2e", "durabus end to end", r.E2E, true},
		{"e2e-batch", "durabus end to end, PublishBatch", r.E2EBatch, true},
		{"publish", "durabus Publish", r.Publish, true},
		{"drain", "durabus drain after outage", r.Drain, true},
	}
}

// vsNaive is eps as a multiple of the naive baseline, or "" without one.
func (r *results) vsNaive(eps float64) string {
	naive := r.Naive.EPS()
	if naive <= 0 || eps <= 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×", eps/naive)
}

// writeTable prints r as a table for people.
func writeTable(w io.Writer, r *results) error {
	var b strings.Builder
	fmt.Fprintf(&b, "durabench: %d-byte events, SQLite WAL synchronous=FULL, %s, %d CPUs, %s, scale %g\n\n",
		eventSize, r.Redis, r.CPUs, r.GoVer, r.Scale)
	const rowFmt = "%-34s %11s %9s %14s %6s  %s\n"
	fmt.Fprintf(&b, rowFmt, "workload", "events/s", "vs naive", "CPU µs/event", "cores", "notes")
	for _, row := range r.throughputRows() {
		switch err := r.Errors[row.Key]; {
		case err != nil:
			fmt.Fprintf(&b, rowFmt, row.Label, "FAILED", "", "", "", oneLine(err.Error(), 100))
		case row.T != nil:
			perEvent, cores := row.T.cpuColumns()
			fmt.Fprintf(&b, rowFmt, row.Label, commas(row.T.EPS()), r.vsNaive(row.T.EPS()), perEvent, cores, row.T.Note)
		}
	}
	b.WriteString("CPU µs/event: this process + the Redis server, per event, over the measured part; cores: both over its wall time\n")
	if len(r.Latency) > 0 || r.Errors["latency"] != nil {
		const latFmt = "%-34s %8s %8s %8s  %s\n"
		b.WriteString("\n")
		fmt.Fprintf(&b, latFmt, "latency, Publish call to handler", "p50 ms", "p99 ms", "p999 ms", "notes")
		if err := r.Errors["latency"]; err != nil {
			fmt.Fprintf(&b, latFmt, "latency", "FAILED", "", "", oneLine(err.Error(), 100))
		}
		for _, l := range r.Latency {
			note := fmt.Sprintf("%d events after warm-up; issued %s/s", l.Samples, commas(l.Issued))
			if l.Saturated() {
				note += " (saturated: Publish could not keep up with the offered rate)"
			}
			fmt.Fprintf(&b, latFmt, "at "+commas(float64(l.Rate))+"/s offered",
				fmt.Sprintf("%.2f", l.P50), fmt.Sprintf("%.2f", l.P99), fmt.Sprintf("%.2f", l.P999), note)
		}
		if d := r.DiskFloor; d != nil {
			fmt.Fprintf(&b, latFmt, "disk alone: write + fsync",
				fmt.Sprintf("%.2f", d.P50), fmt.Sprintf("%.2f", d.P99), fmt.Sprintf("%.2f", d.P999),
				fmt.Sprintf("%d KiB each, %s/s, same disk: the floor under a Publish committed alone", diskFloorBytes>>10, commas(float64(d.Rate))))
		}
	}
	writeTargets(&b, r)
	if len(r.Errors) > 0 {
		b.WriteString("\n")
		for _, name := range workloadNames {
			if err := r.Errors[name]; err != nil {
				fmt.Fprintf(&b, "%s FAILED: %v\n", name, err)
			}
		}
	}
	fmt.Fprintf(&b, "\ntotal %s\n", r.Total.Round(time.Second))
	_, err := io.WriteString(w, b.String())
	return err
}

// cpuColumns formats t's CPU time per event (this process + Redis) and the
// cores it kept busy; empty when t has no CPU figures.
func (t *throughput) cpuColumns() (perEvent, cores string) {
	if t.CPU == nil || t.N <= 0 || t.Elapsed <= 0 {
		return "", ""
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(t.N) }
	return fmt.Sprintf("%.1f + %.1f", us(t.CPU.Process), us(t.CPU.Redis)),
		fmt.Sprintf("%.2f", t.CPU.Total().Seconds()/t.Elapsed.Seconds())
}

// commas formats x rounded to an integer, with thousands separators.
func commas(x float64) string {
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// oneLine keeps the first line of s, cut to max runes.
func oneLine(s string, max int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
