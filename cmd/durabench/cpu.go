package main

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every workload here is bound by the cores that the buses, SQLite and
// Redis share on one machine, so each throughput workload also records the
// CPU time its measured part used: in this process and in the Redis
// server. The table shows it per event and as cores kept busy, and the
// targets show the CPU per event each throughput goal leaves on this
// machine's cores.

// cpuUse is the CPU time a measured part of a workload used.
type cpuUse struct {
	Process time.Duration // this process, user and system
	Redis   time.Duration // the Redis server, user and system; 0 if unknown
}

// Total is the process's and Redis's CPU time together.
func (c *cpuUse) Total() time.Duration { return c.Process + c.Redis }

// cpuMark is a reading of the CPU clocks, to subtract from a later one.
type cpuMark struct {
	process time.Duration
	redis   time.Duration
	redisOK bool
}

// markCPU reads this process's CPU time and, through c, Redis's.
func markCPU(ctx context.Context, c *redis.Client) cpuMark {
	m := cpuMark{process: processCPU()}
	if c != nil {
		m.redis, m.redisOK = redisCPU(ctx, c)
	}
	return m
}

// since is the CPU time used from m until now. Redis's share is 0 when
// either reading of it failed.
func (m cpuMark) since(ctx context.Context, c *redis.Client) *cpuUse {
	now := markCPU(ctx, c)
	u := &cpuUse{Process: now.process - m.process}
	if m.redisOK && now.redisOK {
		u.Redis = now.redis - m.redis
	}
	return u
}

// redisCPU is the CPU time of the Redis server's own process
// (used_cpu_user + used_cpu_sys of INFO cpu).
func redisCPU(ctx context.Context, c *redis.Client) (time.Duration, bool) {
	info, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, false
	}
	return parseRedisCPU(info)
}

// parseRedisCPU reads used_cpu_user + used_cpu_sys from the text of INFO
// cpu; false when either is missing or not a number.
func parseRedisCPU(info string) (time.Duration, bool) {
	var total float64
	found := 0
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || (k != "used_cpu_user" && k != "used_cpu_sys") {
			continue
		}
		s, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, false
		}
		total += s
		found++
	}
	if found != 2 {
		return 0, false
	}
	return time.Duration(total * float64(time.Second)), true
}

// stopwatch times the measured part of a workload: wall clock and CPU.
type stopwatch struct {
	began  time.Time
	cpu    cpuMark
	client *redis.Client
}

// startWatch starts a stopwatch that reads Redis's CPU through c (nil:
// this process's alone).
func startWatch(ctx context.Context, c *redis.Client) *stopwatch {
	return &stopwatch{cpu: markCPU(ctx, c), began: time.Now(), client: c}
}

// stop returns the time and the CPU used since the stopwatch started.
func (s *stopwatch) stop(ctx context.Context) (time.Duration, *cpuUse) {
	elapsed := time.Since(s.began)
	return elapsed, s.cpu.since(ctx, s.client)
}
