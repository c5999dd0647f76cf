package main

import (
	"fmt"
	"strings"
)

// target is one of the goals durabus is measured against.
type target struct {
	Goal     string
	Measured string
	Met      bool
}

// targets compares r with the project's performance goals; a goal whose
// workloads did not run is left out.
func (r *results) targets() []target {
	var out []target
	ratio := func(goal string, a, b *throughput, want float64) {
		if a == nil || b == nil || b.EPS() == 0 {
			return
		}
		x := a.EPS() / b.EPS()
		out = append(out, target{goal, fmt.Sprintf("%.2f×", x), x >= want})
	}
	ratio("end to end ≥ 1.5 × naive", r.E2E, r.Naive, 1.5)
	ratio("Publish ≥ 0.8 × insert ceiling", r.Publish, r.Insert, 0.8)
	for _, l := range r.Latency {
		limit := map[int]float64{1_000: 2, 10_000: 5}[l.Rate]
		if limit == 0 {
			continue
		}
		out = append(out, target{fmt.Sprintf("p99 at %s/s ≤ %g ms", commas(float64(l.Rate)), limit),
			fmt.Sprintf("%.2f ms", l.P99), l.P99 <= limit})
	}
	if r.Drain != nil {
		out = append(out,
			target{"drain ≥ 50,000 events/s", commas(r.Drain.EPS()) + "/s", r.Drain.EPS() >= 50_000},
			target{"drain peak RSS ≤ 200 MB", fmt.Sprintf("%.0f MB", r.DrainPeakRSSMB), r.DrainPeakRSSMB <= 200})
	}
	return out
}

// writeTargets adds the targets to a table.
func writeTargets(b *strings.Builder, r *results) {
	ts := r.targets()
	if len(ts) == 0 {
		return
	}
	const f = "%-34s %11s  %s\n"
	b.WriteString("\n")
	fmt.Fprintf(b, f, "target", "measured", "met")
	for _, t := range ts {
		met := "no"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(b, f, t.Goal, t.Measured, met)
	}
}
