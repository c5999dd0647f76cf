package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strings"
)

// The chart -svg writes: horizontal bars of events per second on a log
// scale (raw pub/sub is about ten times the rest), labelled with the values
// and the ratios to the naive loop, and a small latency panel. It is drawn
// with plain fmt from the run's own results, 800 px wide so that its text
// stays readable at the width of a GitHub README.

// Geometry of the chart, in px.
const (
	svgWidth   = 800
	svgLabelX  = 200 // right edge of the row labels
	svgBarX    = 210 // left edge of the bars
	svgBarMax  = 380 // length of a bar at the top of its scale
	svgRowH    = 30
	svgBarH    = 20
	svgLatRowH = 17
	svgLatBarH = 12
)

// Colours of the chart.
const (
	colorText     = "#1f2328"
	colorMuted    = "#59636e"
	colorGrid     = "#d8dee4"
	colorBaseline = "#9ea7b3"
	colorDurabus  = "#1f6feb"
	colorFailed   = "#cf222e"
)

// latencyShades colour p50, p99 and p999.
var latencyShades = [3]string{"#8cb8ff", "#1f6feb", "#0a3069"}

// logScale maps values in [lo, hi] to [0, svgBarMax] px.
type logScale struct{ lo, hi float64 }

// newLogScale returns the decades around the positive values vs.
func newLogScale(vs []float64) logScale {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		if v > 0 {
			lo, hi = min(lo, v), max(hi, v)
		}
	}
	if math.IsInf(lo, 1) {
		return logScale{1, 10}
	}
	s := logScale{math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))}
	if s.hi <= s.lo {
		s.hi = s.lo * 10
	}
	return s
}

// px is the length of a bar of value v, at least 2 px so that it shows.
func (s logScale) px(v float64) float64 {
	if v <= s.lo {
		return 2
	}
	return max(svgBarMax*math.Log10(v/s.lo)/math.Log10(s.hi/s.lo), 2)
}

// decades lists lo, 10·lo, …, hi.
func (s logScale) decades() []float64 {
	var ds []float64
	for d := s.lo; d <= s.hi*1.0001; d *= 10 {
		ds = append(ds, d)
	}
	return ds
}

// svgDoc accumulates the chart's elements.
type svgDoc struct {
	b bytes.Buffer
	y float64 // top of the next element
}

func (d *svgDoc) text(x, y float64, size int, color, anchor, weight, s string) {
	fmt.Fprintf(&d.b, `<text x="%.1f" y="%.1f" font-size="%d" fill="%s"`, x, y, size, color)
	if anchor != "" {
		fmt.Fprintf(&d.b, ` text-anchor="%s"`, anchor)
	}
	if weight != "" {
		fmt.Fprintf(&d.b, ` font-weight="%s"`, weight)
	}
	fmt.Fprintf(&d.b, ">%s</text>\n", esc(s))
}

func (d *svgDoc) rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&d.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" rx="2" fill="%s"/>`+"\n", x, y, w, h, fill)
}

func (d *svgDoc) vline(x, y1, y2 float64) {
	fmt.Fprintf(&d.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1"/>`+"\n", x, y1, x, y2, colorGrid)
}

// legend draws colour swatches with their names, right-aligned at x.
func (d *svgDoc) legend(x, y float64, items [][2]string) {
	for i := len(items) - 1; i >= 0; i-- {
		name := items[i][1]
		x -= float64(len(name))*6.5 + 4
		d.text(x, y, 12, colorMuted, "", "", name)
		x -= 16
		d.rect(x, y-10, 12, 12, items[i][0])
		x -= 14
	}
}

// grid draws the decade lines of s from y1 to y2 and their labels below.
func (d *svgDoc) grid(s logScale, y1, y2 float64, label func(float64) string) {
	for _, v := range s.decades() {
		x := svgBarX + s.px(v)
		if v <= s.lo {
			x = svgBarX
		}
		d.vline(x, y1, y2)
		d.text(x, y2+13, 11, colorMuted, "middle", "", label(v))
	}
}

// renderSVG draws r as an SVG document.
func renderSVG(r *results) []byte {
	d := &svgDoc{y: 30}
	d.text(20, d.y, 18, colorText, "", "600", "durabus benchmark")
	d.y += 20
	sub := fmt.Sprintf("%d-byte events · SQLite WAL, synchronous=FULL · %s · %d CPUs · %s", eventSize, r.Redis, r.CPUs, r.GoVer)
	if r.Scale != 1 {
		sub += fmt.Sprintf(" · scale %g", r.Scale)
	}
	if !r.Finish.IsZero() {
		sub += " · " + r.Finish.Format("2006-01-02")
	}
	d.text(20, d.y, 12, colorMuted, "", "", sub)
	d.y += 32

	d.throughputPanel(r)
	if len(r.Latency) > 0 {
		d.y += 28
		d.latencyPanel(r)
	}

	d.y += 30
	notes := []string{
		"raw: Redis pub/sub alone, nothing stored. naive: outbox transaction then PUBLISH pipeline; inbox insert + update",
		"transaction; 1000 events per batch. insert ceiling: SQLite inserts alone. durabus: default settings, 64 Publish callers",
		"(256 end to end, which runs until every outbox row is COMPLETED); drain: a backlog published while Redis was down.",
	}
	for _, n := range notes {
		d.text(20, d.y, 11, colorMuted, "", "", n)
		d.y += 15
	}
	height := math.Ceil(d.y + 5)

	var out bytes.Buffer
	fmt.Fprintf(&out, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" `+
		`font-family="-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&out, `<rect x="0.5" y="0.5" width="%d" height="%.0f" rx="6" fill="#ffffff" stroke="%s"/>`+"\n",
		svgWidth-1, height-1, colorGrid)
	out.Write(d.b.Bytes())
	out.WriteString("</svg>\n")
	return out.Bytes()
}

// throughputPanel draws one bar per throughput workload that ran or failed.
func (d *svgDoc) throughputPanel(r *results) {
	d.text(20, d.y, 13, colorText, "", "600", "Throughput, events per second (log scale)")
	d.legend(svgWidth-20, d.y, [][2]string{{colorBaseline, "baselines"}, {colorDurabus, "durabus"}})
	d.y += 14
	var vs []float64
	var rows []throughputRow
	for _, row := range r.throughputRows() {
		if row.T != nil || r.Errors[row.Key] != nil {
			rows = append(rows, row)
			vs = append(vs, row.T.EPS())
		}
	}
	s := newLogScale(vs)
	top := d.y
	bottom := top + float64(len(rows))*svgRowH
	d.grid(s, top, bottom, func(v float64) string { return shortNumber(v) })
	for _, row := range rows {
		y := d.y + (svgRowH-svgBarH)/2
		d.text(svgLabelX, y+14.5, 13, colorText, "end", "", row.Label)
		if row.T == nil {
			d.text(svgBarX+4, y+14.5, 12, colorFailed, "", "600", "failed: "+oneLine(r.Errors[row.Key].Error(), 70))
			d.y += svgRowH
			continue
		}
		eps := row.T.EPS()
		color := colorBaseline
		if row.Durabus {
			color = colorDurabus
		}
		w := s.px(eps)
		d.rect(svgBarX, y, w, svgBarH, color)
		label := commas(eps) + "/s"
		switch ratio := r.vsNaive(eps); {
		case row.Key == "naive":
			label += " · baseline"
		case ratio != "":
			label += " · " + ratio + " naive"
		}
		d.text(svgBarX+w+6, y+14.5, 12, colorText, "", "", label)
		d.y += svgRowH
	}
	d.y = bottom + 18
}

// latencyPanel draws p50, p99 and p999 of each latency phase.
func (d *svgDoc) latencyPanel(r *results) {
	d.text(20, d.y, 13, colorText, "", "600", "Latency, Publish call to handler, ms (log scale)")
	d.y += 14
	var vs []float64
	for _, l := range r.Latency {
		vs = append(vs, l.P50, l.P99, l.P999)
	}
	s := newLogScale(vs)
	top := d.y
	groupGap := 8.0
	bottom := top + float64(len(r.Latency))*(3*svgLatRowH+groupGap) - groupGap
	d.grid(s, top, bottom, func(v float64) string { return trimFloat(v) })
	for _, l := range r.Latency {
		for i, p := range []struct {
			name string
			v    float64
		}{{"p50", l.P50}, {"p99", l.P99}, {"p99.9", l.P999}} {
			y := d.y + (svgLatRowH-svgLatBarH)/2
			switch {
			case i == 0:
				d.text(20, y+10, 12, colorText, "", "", commas(float64(l.Rate))+"/s offered")
			case i == 1 && l.Saturated():
				d.text(20, y+10, 11, colorMuted, "", "", "only "+commas(l.Issued)+"/s issued")
			}
			d.text(svgLabelX, y+10, 12, colorMuted, "end", "", p.name)
			w := s.px(p.v)
			d.rect(svgBarX, y, w, svgLatBarH, latencyShades[i])
			d.text(svgBarX+w+6, y+10, 11, colorText, "", "", millis(p.v)+" ms")
			d.y += svgLatRowH
		}
		d.y += groupGap
	}
	d.y = bottom + 18
}

// millis writes a latency in ms with three significant digits or so.
func millis(v float64) string {
	switch {
	case v >= 100:
		return commas(v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// shortNumber writes a decade such as 1000 as 1k.
func shortNumber(v float64) string {
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}

// trimFloat writes v without trailing zeros.
func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// esc escapes s for XML text.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // writing to a strings.Builder cannot fail
	return b.String()
}
