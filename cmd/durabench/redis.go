package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is the Redis the benchmark runs against: the one REDIS_URL
// names, or a redis-server it started itself.
type redisServer struct {
	URL     string
	Version string
	Own     bool // started by the benchmark, stopped by Stop

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	output *tailBuffer   // the server's last output, for errors
}

// redisReadyTimeout bounds the wait for a Redis to answer PING.
const redisReadyTimeout = 10 * time.Second

// findRedis returns the Redis at url if it is not empty, else starts a
// redis-server from PATH on a free port without persistence. The caller
// stops it with Stop.
func findRedis(ctx context.Context, url string) (*redisServer, error) {
	if url != "" {
		version, err := pingRedis(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("redis at %s (REDIS_URL): %w", url, err)
		}
		return &redisServer{URL: url, Version: version}, nil
	}
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("no Redis: set REDIS_URL (e.g. redis://127.0.0.1:6379) or put redis-server on PATH")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &redisServer{
		URL:    "redis://127.0.0.1:" + strconv.Itoa(port),
		Own:    true,
		exited: make(chan struct{}),
		output: &tailBuffer{max: 4096},
	}
	r.cmd = exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no")
	r.cmd.Stdout, r.cmd.Stderr = r.output, r.output
	dieWithParent(r.cmd)
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	r.Version, err = r.waitReady(ctx)
	if err != nil {
		_ = r.Stop()
		return nil, fmt.Errorf("start %s on port %d: %w; its output: %s", path, port, err, r.output)
	}
	return r, nil
}

// waitReady polls the started server until it answers PING.
func (r *redisServer) waitReady(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, redisReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		version, err := pingRedis(ctx, r.URL)
		if err == nil {
			return version, nil
		}
		select {
		case <-r.exited:
			return "", errors.New("it exited")
		case <-ctx.Done():
			return "", fmt.Errorf("no answer to PING: %w", err)
		case <-tick.C:
		}
	}
}

// Stop shuts down a redis-server the benchmark started; it does nothing
// for a Redis given by URL.
func (r *redisServer) Stop() error {
	if r.cmd == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-r.exited:
		return nil
	case <-t.C:
		_ = r.cmd.Process.Kill()
		<-r.exited
		return errors.New("redis-server did not stop within 5s of SIGTERM; killed it")
	}
}

// pingRedis checks that url answers and returns its version.
func pingRedis(ctx context.Context, url string) (string, error) {
	c, err := newRedisClient(url)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "unknown", nil
}

// newRedisClient returns a client for url.
func newRedisClient(url string) (*redis.Client, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse Redis URL %q: %w", url, err)
	}
	return redis.NewClient(o), nil
}

// newRedisClientAt returns a client for url that connects to addr instead
// of the URL's host, keeping its other settings (for the drain's proxy).
func newRedisClientAt(url, addr string) (*redis.Client, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse Redis URL %q: %w", url, err)
	}
	o.Addr = addr
	return redis.NewClient(o), nil
}

// redisAddr is the host:port of url.
func redisAddr(url string) (string, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return "", fmt.Errorf("parse Redis URL %q: %w", url, err)
	}
	return o.Addr, nil
}

// freePort asks the kernel for a free TCP port on the loopback interface.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailBuffer keeps the last max bytes written to it; it is safe for
// concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if extra := t.buf.Len() - t.max; extra > 0 {
		t.buf.Next(extra)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(t.buf.String())
}
