package main

import (
	"fmt"
	"strings"
	"time"
)

// target is one of the goals durabus is measured against.
type target struct {
	Goal     string
	Measured string
	Met      bool
	// For a throughput goal: the CPU time per event that the goal's rate
	// leaves on this machine's cores (Budget), and what durabus used
	// (Used); 0 when not known.
	Budget, Used time.Duration
}

// budget is the CPU time per event that eps events per second leave on
// cpus cores.
func budget(cpus int, eps float64) time.Duration {
	if cpus <= 0 || eps <= 0 {
		return 0
	}
	return time.Duration(float64(cpus) / eps * float64(time.Second))
}

// perEvent is t's CPU time per event, this process and Redis; 0 when
// unknown.
func (t *throughput) perEvent() time.Duration {
	if t == nil || t.CPU == nil || t.N <= 0 {
		return 0
	}
	return t.CPU.Total() / time.Duration(t.N)
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
		out = append(out, target{Goal: goal, Measured: fmt.Sprintf("%.2f×", x), Met: x >= want,
			Budget: budget(r.CPUs, want*b.EPS()), Used: a.perEvent()})
	}
	ratio("end to end ≥ 1.5 × naive", r.E2E, r.Naive, 1.5)
	ratio("Publish ≥ 0.8 × insert ceiling", r.Publish, r.Insert, 0.8)
	for _, l := range r.Latency {
		limit := map[int]float64{1_000: 2, 10_000: 5}[l.Rate]
		if limit == 0 {
			continue
		}
		out = append(out, target{Goal: fmt.Sprintf("p99 at %s/s ≤ %g ms", commas(float64(l.Rate)), limit),
			Measured: fmt.Sprintf("%.2f ms", l.P99), Met: l.P99 <= limit})
	}
	if r.Drain != nil {
		out = append(out,
			target{Goal: "drain ≥ 50,000 events/s", Measured: commas(r.Drain.EPS()) + "/s", Met: r.Drain.EPS() >= 50_000,
				Budget: budget(r.CPUs, 50_000), Used: r.Drain.perEvent()},
			target{Goal: "drain peak RSS ≤ 200 MB", Measured: fmt.Sprintf("%.0f MB", r.DrainPeakRSSMB), Met: r.DrainPeakRSSMB <= 200})
	}
	return out
}

// writeTargets adds the targets to a table.
func writeTargets(b *strings.Builder, r *results) {
	ts := r.targets()
	if len(ts) == 0 {
		return
	}
	const f = "%-34s %11s  %-4s %15s %14s\n"
	b.WriteString("\n")
	fmt.Fprintf(b, f, "target", "measured", "met", "CPU/event goal", "CPU/event used")
	us := func(d time.Duration) string {
		if d <= 0 {
			return ""
		}
		return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/1e3)
	}
	for _, t := range ts {
		met := "no"
		if t.Met {
			met = "yes"
		}
		b.WriteString(strings.TrimRight(fmt.Sprintf(f, t.Goal, t.Measured, met, us(t.Budget), us(t.Used)), " \n") + "\n")
	}
	fmt.Fprintf(b, "CPU/event goal: the CPU time per event (process + Redis) that the goal's rate leaves on %d cores\n", r.CPUs)
}
