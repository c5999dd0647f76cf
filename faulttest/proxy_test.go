package faulttest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// tcpProxy forwards connections to a target, one io.Copy per direction. It
// can cut every connection (both ends see them close) and blackhole traffic:
// open connections and new ones (which it still accepts) swallow all bytes
// without closing, like peers behind a vanished network. heal ends the
// blackhole: the connections that lost bytes are closed, as their peers'
// TCP stacks would eventually do, and new connections work again.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu        sync.Mutex
	conns     map[*proxyConn]struct{}
	blackhole bool
	closed    bool

	wg sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn // server is nil for a connection accepted during a blackhole
	dropping       atomic.Bool
	once           sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		_ = c.client.Close()
		if c.server != nil {
			_ = c.server.Close()
		}
	})
}

// dropWriter writes to w unless its connection is blackholed.
type dropWriter struct {
	w net.Conn
	c *proxyConn
}

func (d dropWriter) Write(p []byte) (int, error) {
	if d.c.dropping.Load() {
		return len(p), nil
	}
	return d.w.Write(p)
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	p.wg.Go(p.acceptLoop)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }
func (p *tcpProxy) url() string  { return "redis://" + p.addr() }

func (p *tcpProxy) acceptLoop() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		blackhole := p.blackhole
		p.mu.Unlock()
		c := &proxyConn{client: client}
		if blackhole {
			c.dropping.Store(true)
		} else if c.server, err = net.Dial("tcp", p.target); err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close()
			return
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		done := func() {
			c.close()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}
		if c.server == nil {
			p.wg.Go(func() { _, _ = io.Copy(io.Discard, client); done() })
			continue
		}
		p.wg.Go(func() { _, _ = io.Copy(dropWriter{c.server, c}, client); done() })
		p.wg.Go(func() { _, _ = io.Copy(dropWriter{client, c}, c.server); done() })
	}
}

// cutAll closes every open connection.
func (p *tcpProxy) cutAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for c := range p.conns {
		c.close()
	}
	return n
}

// startBlackhole makes every open and future connection swallow its bytes.
func (p *tcpProxy) startBlackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = true
	for c := range p.conns {
		c.dropping.Store(true)
	}
}

// heal ends the blackhole and closes the connections that went through it.
func (p *tcpProxy) heal() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = false
	n := 0
	for c := range p.conns {
		if c.dropping.Load() {
			c.close()
			n++
		}
	}
	return n
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.cutAll()
	p.wg.Wait()
}
