package testbed

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// rconn is one connection to the runner.
type rconn struct {
	g         *Gateway
	c         net.Conn
	br        *bufio.Reader
	wbuf      []byte
	idleSince time.Time
	closed    bool
}

// deadline returns now+d, or the context's deadline if that comes first.
func deadline(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if cd, ok := ctx.Deadline(); ok && cd.Before(t) {
		return cd
	}
	return t
}

// send writes one frame with a single Write call, under the send timeout.
func (c *rconn) send(ctx context.Context, ty byte, payload []byte) error {
	n := headerLen + len(payload)
	if cap(c.wbuf) < n {
		c.wbuf = make([]byte, n)
	}
	buf := c.wbuf[:n]
	if err := putFrame(buf, ty, payload); err != nil {
		return err
	}
	if err := c.c.SetWriteDeadline(deadline(ctx, c.g.opts.SendTimeout)); err != nil {
		return err
	}
	_, err := c.c.Write(buf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil
	}
	return err
}

// recv reads one frame under the read timeout.
func (c *rconn) recv(ctx context.Context) (byte, []byte, error) {
	if err := c.c.SetReadDeadline(deadline(ctx, c.g.opts.ReadTimeout)); err != nil {
		return 0, nil, err
	}
	return ReadFrame(c.br)
}

func (c *rconn) close() {
	if c.closed {
		return
	}
	c.closed = true
	_ = c.c.Close()
	c.g.open.Add(-1)
}

// pool is nginx's cosocket keepalive pool for the runner's socket:
// setkeepalive(180 s, 32). Like nginx it is LIFO (get and put work on the
// head of the queue), evicts the oldest idle connection when full, and drops
// idle connections the peer has closed (nginx closes them as soon as it sees
// EOF; we check when we take them).
type pool struct {
	g    *Gateway
	mu   sync.Mutex
	idle []*rconn // idle[len-1] is the most recently used
}

func (p *pool) get(ctx context.Context) (*rconn, error) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if time.Since(c.idleSince) > p.g.opts.IdleTimeout || c.br.Buffered() > 0 || !connAlive(c.c) {
			c.close()
			continue
		}
		p.g.stats.reused.Add(1)
		return c, nil
	}
	return p.dial(ctx)
}

func (p *pool) dial(ctx context.Context) (*rconn, error) {
	g := p.g
	d := net.Dialer{Timeout: g.opts.ConnectTimeout}
	nc, err := d.DialContext(ctx, "unix", g.path)
	if err != nil {
		g.stats.dialErrors.Add(1)
		return nil, fmt.Errorf("failed to connect to the unix socket unix:%s: %w", g.path, err)
	}
	g.stats.dials.Add(1)
	open := g.open.Add(1)
	for {
		peak := g.peakOpen.Load()
		if open <= peak || g.peakOpen.CompareAndSwap(peak, open) {
			break
		}
	}
	return &rconn{g: g, c: nc, br: bufio.NewReaderSize(nc, 4096)}, nil
}

func (p *pool) put(c *rconn) {
	c.idleSince = time.Now()
	var evict *rconn
	p.mu.Lock()
	if len(p.idle) >= p.g.opts.PoolSize {
		evict = p.idle[0]
		copy(p.idle, p.idle[1:])
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
	}
	if p.g.opts.PoolSize > 0 {
		p.idle = append(p.idle, c)
	} else {
		evict = c
	}
	p.mu.Unlock()
	if evict != nil {
		evict.close()
	}
}

func (p *pool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}
