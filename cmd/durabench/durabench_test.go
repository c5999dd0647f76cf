package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/durabus/durabus"
)

// TestMain runs the drain workload's child when the smoke test re-runs this
// test binary as one, and otherwise the tests, checking for leaked
// goroutines.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		os.Exit(childMain(os.Args[2:]))
	}
	goleak.VerifyTestMain(m)
}

// jsonKeys are the keys -json must print, and only them.
var jsonKeys = []string{
	"raw_eps", "naive_eps", "insert_ceiling_eps", "e2e_eps", "publish_eps",
	"p99_ms_at_1k", "p99_ms_at_10k", "drain_eps", "drain_peak_rss_mb",
}

// needRedis skips the test without a Redis to run against.
func needRedis(t *testing.T) {
	t.Helper()
	if os.Getenv("REDIS_URL") != "" {
		return
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("no Redis: set REDIS_URL or put redis-server on PATH to run the benchmark's smoke test")
	}
}

// progress collects a run's progress lines and shows them when the test
// fails or runs with -v.
func progress(t *testing.T) io.Writer {
	t.Helper()
	if testing.Verbose() {
		return os.Stderr
	}
	var b tailBuffer
	b.max = 16 << 10
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("progress (last lines):\n%s", b.String())
		}
	})
	return &b
}

// TestSmoke runs every workload at a tiny scale and checks that each one
// completed and verified its counts, and that the JSON report has exactly
// the nine keys, all positive numbers.
func TestSmoke(t *testing.T) {
	needRedis(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	cfg := config{
		RedisURL:     os.Getenv("REDIS_URL"),
		Scale:        0.002,
		LatencyPhase: 200 * time.Millisecond,
		Exe:          exe, // this test binary: TestMain runs the drain child
		Stderr:       progress(t),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := run(ctx, cfg)
	require.NoError(t, err)
	for name, err := range res.Errors {
		t.Errorf("workload %s failed: %v", name, err)
	}

	// Every workload moved (and, where it stores events, verified) the
	// scaled count of events; a workload whose counts do not add up fails.
	for _, row := range res.throughputRows() {
		if assert.NotNil(t, row.T, row.Key) {
			assert.Positive(t, row.T.EPS(), row.Key)
			// The measured part's CPU time: the drain's comes from its child.
			if assert.NotNil(t, row.T.CPU, row.Key) && runtime.GOOS == "linux" {
				assert.Positive(t, row.T.CPU.Process, row.Key)
				assert.GreaterOrEqual(t, row.T.CPU.Redis, time.Duration(0), row.Key)
			}
		}
	}
	assert.Equal(t, cfg.n(defaultRawN), res.Raw.N)
	assert.Equal(t, cfg.n(defaultNaiveN), res.Naive.N)
	assert.Equal(t, cfg.n(defaultE2EN), res.E2E.N)
	assert.Equal(t, cfg.n(defaultE2EN), res.E2EBatch.N)
	assert.Equal(t, cfg.n(defaultDrainN), res.Drain.N)
	for _, row := range []throughputRow{{Key: "naive", T: res.Naive}, {Key: "e2e", T: res.E2E}, {Key: "e2e-batch", T: res.E2EBatch}, {Key: "publish", T: res.Publish}, {Key: "drain", T: res.Drain}} {
		if row.T != nil {
			assert.Contains(t, row.T.Note, "verified", row.Key)
		}
	}
	require.Len(t, res.Latency, 2)
	require.NotNil(t, res.DiskFloor, "the latency workload measures the disk alone")
	for _, l := range append(res.Latency, *res.DiskFloor) {
		assert.Positive(t, l.Samples)
		assert.Positive(t, l.P50)
		assert.LessOrEqual(t, l.P50, l.P99)
		assert.LessOrEqual(t, l.P99, l.P999)
	}

	var out bytes.Buffer
	require.NoError(t, writeJSON(&out, res))
	got := decodeOneObject(t, out.Bytes())
	for _, k := range jsonKeys {
		assert.Positive(t, got[k], k)
	}
	var table bytes.Buffer
	require.NoError(t, writeTable(&table, res))
	t.Logf("\n%s", table.String())
}

// TestCLIJSON runs the command line with -json on two quick workloads: stdout
// must carry one JSON object and nothing else, the table goes to stderr.
func TestCLIJSON(t *testing.T) {
	needRedis(t)
	var stdout, stderr bytes.Buffer
	code := cli(context.Background(), []string{"-json", "-scale", "0.002", "-only", "raw, insert"}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr:\n%s", stderr.String())
	got := decodeOneObject(t, stdout.Bytes())
	assert.Positive(t, got["raw_eps"])
	assert.Positive(t, got["insert_ceiling_eps"])
	assert.Zero(t, got["e2e_eps"], "a workload that did not run reports 0")
	assert.Contains(t, stderr.String(), "raw Redis pub/sub")
	assert.NotContains(t, stderr.String(), "durabus end to end", "workloads not run are left out of the table")
}

// TestCLIRejectsBadFlags checks the flag errors that need no Redis.
func TestCLIRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-only", "raw,bogus"}, {"-scale", "0"}, {"-scale", "-1"}, {"extra"}} {
		var stdout, stderr bytes.Buffer
		assert.Equal(t, 2, cli(context.Background(), args, &stdout, &stderr), "%q", args)
		assert.Empty(t, stdout.String(), "%q", args)
	}
}

// decodeOneObject checks that b is exactly one JSON object with exactly the
// jsonKeys, all numbers, and returns it.
func decodeOneObject(t *testing.T, b []byte) map[string]float64 {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw map[string]any
	require.NoError(t, dec.Decode(&raw), "stdout: %s", b)
	var extra any
	require.ErrorIs(t, dec.Decode(&extra), io.EOF, "more than one JSON value on stdout: %s", b)
	keys := make([]string, 0, len(raw))
	got := map[string]float64{}
	for k, v := range raw {
		keys = append(keys, k)
		f, ok := v.(float64)
		assert.True(t, ok, "%s is %T, not a number", k, v)
		got[k] = f
	}
	assert.ElementsMatch(t, jsonKeys, keys)
	return got
}

// TestEventSize checks that durabus's envelope of a benchEvent, and the
// baselines' envelope, are eventSize bytes give or take a few.
func TestEventSize(t *testing.T) {
	ctx := context.Background()
	sent := make(chan []byte, 1)
	ps := capture(func(msg []byte) {
		select {
		case sent <- msg:
		default:
		}
	})
	b, err := durabus.Open[benchEvent, benchEvent](ctx, durabus.Config{
		Name: "bench-pub", Path: t.TempDir() + "/bus.db", PubSub: durabus.PublishOnly(ps),
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close(ctx)) }()
	_, err = b.Publish(ctx, newEvent(123456))
	require.NoError(t, err)
	var msg []byte
	select {
	case msg = <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the bus sent nothing within 10s")
	}
	assert.InDelta(t, eventSize, len(msg), 5, "durabus envelope: %s", msg)

	_, base, err := encodeEvent(123456)
	require.NoError(t, err)
	assert.InDelta(t, len(msg), len(base), 2, "baseline envelope %s\nvs durabus %s", base, msg)
	id, err := eventID(base)
	require.NoError(t, err)
	assert.Len(t, id, 36)
}

// capture is a Publisher that hands every message to fn.
type capture func(msg []byte)

func (c capture) Publish(_ context.Context, _ string, msg []byte) error {
	c(slices.Clone(msg))
	return nil
}

// sampleResults is a complete run with made-up numbers and one failure.
func sampleResults() *results {
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	return &results{
		Raw:    &throughput{N: 500_000, Elapsed: sec(1.25), Note: "raw note"},
		Naive:  &throughput{N: 200_000, Elapsed: sec(8), Note: "naive note"},
		Insert: &throughput{N: 200_000, Elapsed: sec(2), Note: "insert note"},
		E2E: &throughput{N: 200_000, Elapsed: sec(5), Note: "e2e note",
			CPU: &cpuUse{Process: sec(7), Redis: sec(0.5)}},
		Publish: &throughput{N: 200_000, Elapsed: sec(4), Note: "publish note"},
		Latency: []latencyResult{
			{Rate: 1000, Issued: 999.8, Samples: 4500, P50: 1.234, P99: 4.5678, P999: 9.1},
			{Rate: 10000, Issued: 6195.4, Samples: 45000, P50: 2.5, P99: 14.25, P999: 120},
		},
		DiskFloor: &latencyResult{Rate: 1000, Issued: 1000, Samples: 4500, P50: 0.18, P99: 0.35, P999: 0.69},
		Errors:    map[string]error{"drain": errors.New("the drain child failed: <boom> & more")},
		Redis:     "Redis 7.0.15", Scale: 1, CPUs: 2, GoVer: "go1.26.8",
		Total: 5*time.Minute + 12*time.Second, Finish: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
	}
}

// TestReport checks the table and the JSON of a known result.
func TestReport(t *testing.T) {
	r := sampleResults()
	var table bytes.Buffer
	require.NoError(t, writeTable(&table, r))
	s := table.String()
	for _, want := range []string{
		"raw Redis pub/sub", "400,000", "16.00×", // 500k in 1.25 s, 16 × naive's 25k/s
		"naive outbox + inbox", "25,000", "1.00×",
		"SQLite insert ceiling", "100,000", "4.00×",
		"durabus end to end", "40,000", "1.60×", "35.0 + 2.5", "1.50", // 7 s + 0.5 s of CPU over 200k events in 5 s
		"durabus Publish", "50,000", "2.00×",
		"durabus drain after outage", "FAILED",
		"at 1,000/s offered", "1.23", "4.57", "9.10", "issued 1,000/s",
		"at 10,000/s offered", "14.25", "120.00", "issued 6,195/s (saturated",
		"disk alone: write + fsync", "0.18", "0.35", "0.69", "16 KiB each, 1,000/s",
		"drain FAILED: the drain child failed: <boom> & more",
		"total 5m12s",
	} {
		assert.Contains(t, s, want)
	}
	assert.NotContains(t, s, "issued 1,000/s (saturated")

	var out bytes.Buffer
	require.NoError(t, writeJSON(&out, r))
	got := decodeOneObject(t, out.Bytes())
	assert.Equal(t, map[string]float64{
		"raw_eps": 400000, "naive_eps": 25000, "insert_ceiling_eps": 100000, "e2e_eps": 40000, "publish_eps": 50000,
		"p99_ms_at_1k": 4.568, "p99_ms_at_10k": 14.25, "drain_eps": 0, "drain_peak_rss_mb": 0,
	}, got)
}

// TestReportEmpty checks that a run of no workload still renders.
func TestReportEmpty(t *testing.T) {
	r := &results{Errors: map[string]error{}, Redis: "Redis 7", Scale: 0.5, CPUs: 1, GoVer: "go1"}
	var table, out bytes.Buffer
	require.NoError(t, writeTable(&table, r))
	assert.NotContains(t, table.String(), "FAILED")
	require.NoError(t, writeJSON(&out, r))
	for k, v := range decodeOneObject(t, out.Bytes()) {
		assert.Zero(t, v, k)
	}
	checkSVG(t, renderSVG(r))
}

// TestSVG checks that the chart is well-formed XML that shows the values,
// the ratios to naive, the failure and the latency panel.
func TestSVG(t *testing.T) {
	doc := renderSVG(sampleResults())
	texts := checkSVG(t, doc)
	all := strings.Join(texts, "\n")
	for _, want := range []string{
		"durabus benchmark", "Redis 7.0.15", "2026-11-25",
		"raw Redis pub/sub", "400,000/s · 16.00× naive",
		"25,000/s · baseline",
		"40,000/s · 1.60× naive",
		"failed: the drain child failed: <boom> & more",
		"1,000/s offered", "only 6,195/s issued", "p99.9", "1.23 ms", "4.57 ms", "9.10 ms", "14.2 ms", "120 ms",
		"10k", "100k", "1M",
	} {
		assert.Contains(t, all, want)
	}
	// Bars grow with their values on the log scale.
	s := newLogScale([]float64{25_000, 400_000})
	assert.Equal(t, logScale{10_000, 1_000_000}, s)
	assert.Less(t, s.px(25_000), s.px(40_000))
	assert.InDelta(t, svgBarMax, s.px(1_000_000), 0.001)
}

// checkSVG parses doc as XML, checks its size and that nothing drawn leaves
// it, and returns its text elements.
func checkSVG(t *testing.T, doc []byte) []string {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(doc))
	var texts []string
	var inText bool
	var width, height float64
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "%s", doc)
		switch tok := tok.(type) {
		case xml.StartElement:
			attrs := map[string]string{}
			for _, a := range tok.Attr {
				attrs[a.Name.Local] = a.Value
			}
			switch tok.Name.Local {
			case "svg":
				width, height = atof(t, attrs["width"]), atof(t, attrs["height"])
				assert.Equal(t, float64(svgWidth), width)
			case "text":
				inText = true
				assert.Less(t, atof(t, attrs["y"]), height, "text below the chart")
			case "rect":
				assert.LessOrEqual(t, atof(t, attrs["x"])+atof(t, attrs["width"]), width, "rect wider than the chart")
			}
		case xml.EndElement:
			inText = false
		case xml.CharData:
			if inText {
				texts = append(texts, string(tok))
			}
		}
	}
	return texts
}

func atof(t *testing.T, s string) float64 {
	t.Helper()
	var f float64
	_, err := fmt.Sscan(s, &f)
	require.NoError(t, err, "number %q", s)
	return f
}

// TestPercentiles checks the nearest-rank percentiles.
func TestPercentiles(t *testing.T) {
	lat := make([]atomic.Int64, 1000)
	for i := range lat {
		lat[len(lat)-1-i].Store(int64(i+1) * int64(time.Millisecond)) // 1..1000 ms, reversed
	}
	p := percentiles(lat)
	assert.Equal(t, latencyResult{Samples: 1000, P50: 500, P99: 990, P999: 999}, p)
	assert.Equal(t, latencyResult{}, percentiles(nil))
}

// TestCommas checks the thousands separators.
func TestCommas(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.6: "1,234,568", -45000: "-45,000"} {
		assert.Equal(t, want, commas(in), "%v", in)
	}
}

// TestTargets checks the comparison with the performance goals.
func TestTargets(t *testing.T) {
	r := sampleResults()
	// On 2 CPUs: 1.5 × naive's 25,000/s leaves 2 s / 37,500 = 53.3 µs per
	// event; 0.8 × the ceiling's 100,000/s leaves 25 µs. The e2e run used
	// 7.5 s over 200,000 events; Publish has no CPU figures.
	assert.Equal(t, []target{
		{Goal: "end to end ≥ 1.5 × naive", Measured: "1.60×", Met: true, Budget: 53333 * time.Nanosecond, Used: 37500 * time.Nanosecond},
		{Goal: "Publish ≥ 0.8 × insert ceiling", Measured: "0.50×", Met: false, Budget: 25 * time.Microsecond},
		{Goal: "p99 at 1,000/s ≤ 2 ms", Measured: "4.57 ms", Met: false},
		{Goal: "p99 at 10,000/s ≤ 5 ms", Measured: "14.25 ms", Met: false},
	}, r.targets(), "the drain failed, so its goals are left out")

	r.Drain = &throughput{N: 1_000_000, Elapsed: 10 * time.Second, CPU: &cpuUse{Process: 45 * time.Second, Redis: 5 * time.Second}}
	r.DrainPeakRSSMB = 120
	ts := r.targets()
	assert.Equal(t, target{Goal: "drain ≥ 50,000 events/s", Measured: "100,000/s", Met: true,
		Budget: 40 * time.Microsecond, Used: 50 * time.Microsecond}, ts[len(ts)-2])
	assert.Equal(t, target{Goal: "drain peak RSS ≤ 200 MB", Measured: "120 MB", Met: true}, ts[len(ts)-1])

	var table bytes.Buffer
	require.NoError(t, writeTable(&table, r))
	s := table.String()
	assert.Contains(t, s, "Publish ≥ 0.8 × insert ceiling           0.50×  no           25.0 µs")
	assert.Contains(t, s, "end to end ≥ 1.5 × naive                 1.60×  yes          53.3 µs        37.5 µs")
	assert.Contains(t, s, "drain ≥ 50,000 events/s              100,000/s  yes          40.0 µs        50.0 µs")
	assert.Contains(t, s, "leaves on 2 cores")
}

// TestParseRedisCPU reads the CPU time of the Redis server from INFO cpu.
func TestParseRedisCPU(t *testing.T) {
	info := "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\nused_cpu_sys_children:9.000000\r\n" +
		"used_cpu_user_children:9.000000\r\nused_cpu_sys_main_thread:1.000000\r\n"
	d, ok := parseRedisCPU(info)
	require.True(t, ok)
	assert.Equal(t, 3750*time.Millisecond, d, "the server's own user + sys, not its children's")

	for _, bad := range []string{"", "# CPU\r\nused_cpu_sys:1.0\r\n", "used_cpu_sys:x\r\nused_cpu_user:1\r\n"} {
		_, ok := parseRedisCPU(bad)
		assert.False(t, ok, "%q", bad)
	}
}

// TestStopwatchCountsCPU checks that a stopwatch sees CPU this process
// spends between its start and stop.
func TestStopwatchCountsCPU(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the CPU figures are read on Linux only")
	}
	watch := startWatch(context.Background(), nil)
	began := processCPU()
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for processCPU()-began < 20*time.Millisecond {
		require.True(t, time.Now().Before(deadline), "processCPU did not advance while spinning")
		for i := range 1_000_000 {
			x += i
		}
	}
	elapsed, cpu := watch.stop(context.Background())
	assert.GreaterOrEqual(t, cpu.Process, 20*time.Millisecond, "spun %d", x)
	assert.Zero(t, cpu.Redis, "no Redis client: Redis not counted")
	assert.Positive(t, elapsed)
}
