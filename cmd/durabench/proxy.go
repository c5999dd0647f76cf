package main

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// proxy is a TCP proxy in front of Redis that can be down: while it is
// down it accepts connections and closes them at once, so that a client
// behind it sees Redis as unreachable; while it is up it relays bytes both
// ways. It starts down.
type proxy struct {
	ln     net.Listener
	target string
	up     atomic.Bool

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // open connections, both sides

	wg sync.WaitGroup // the accept loop and every relay
}

// startProxy listens on a free loopback port for target (host:port).
func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listen: %w", err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is where clients connect.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

// SetUp brings the proxy up (true) or down (false). Going down cuts the
// connections it relays.
func (p *proxy) SetUp(up bool) {
	p.up.Store(up)
	if !up {
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
	}
}

// Close stops listening, cuts every connection and waits for the relays.
func (p *proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.up.Load() {
			_ = c.Close()
			continue
		}
		p.wg.Go(func() { p.relay(c) })
	}
}

// relay connects c to the target and copies both ways until either side
// ends, then closes both.
func (p *proxy) relay(c net.Conn) {
	t, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	if !p.track(c, t) {
		return
	}
	defer p.untrack(c, t)
	var done sync.WaitGroup
	copyAndClose := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	done.Go(func() { copyAndClose(t, c) })
	copyAndClose(c, t)
	done.Wait()
}

// track records a relayed pair, or closes it if the proxy closed or went
// down meanwhile.
func (p *proxy) track(c, t net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !p.up.Load() {
		_ = c.Close()
		_ = t.Close()
		return false
	}
	p.conns[c], p.conns[t] = struct{}{}, struct{}{}
	return true
}

func (p *proxy) untrack(c, t net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	delete(p.conns, t)
}
