package clickhouselogger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// errWriteStalled: a write to ClickHouse made no progress for read_timeout.
var errWriteStalled = errors.New("write stalled")

// dialer returns the DialContext of one server's pool: TCP, or TLS when
// tc is set, each connection wrapped in a boundedConn.
func dialer(timeout, writeTimeout time.Duration, tc *tls.Config) func(context.Context, string) (net.Conn, error) {
	nd := &net.Dialer{Timeout: timeout}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		var err error
		if tc != nil {
			conn, err = (&tls.Dialer{NetDialer: nd, Config: tc}).DialContext(ctx, "tcp", addr)
		} else {
			conn, err = nd.DialContext(ctx, "tcp", addr)
		}
		if err != nil {
			return nil, err
		}
		return &boundedConn{Conn: conn, timeout: writeTimeout}, nil
	}
}

// boundedConn gives every write its own deadline, and ends an unfinished
// INSERT with a reset.
//
// clickhouse-go bounds an INSERT's reads, and its last write (Batch.Send
// closes the connection when the context ends), but not the writes of the
// blocks before (Batch.Flush): a server that stops reading, frozen with its
// socket buffers full, would hold them, and the flusher, for ever. A write
// that times out breaks the connection for good: the writes after it fail
// at once, and the driver drops it on the error.
//
// An INSERT abandoned between two blocks (Batch.Abort) closes the
// connection where a packet ends, and ClickHouse (18.16 at least) takes
// that end of stream for the end of the data: it stores the blocks it had.
// So a connection closed while it owes the server more (written to, no
// answer read since) is reset instead (SO_LINGER 0; under TLS without the
// close_notify, which would end the stream as cleanly): the server sees an
// error and drops the INSERT.
type boundedConn struct {
	net.Conn
	timeout time.Duration
	broken  atomic.Bool
	owing   atomic.Bool // written to, no answer read since
}

func (c *boundedConn) Write(p []byte) (int, error) {
	if c.broken.Load() {
		return 0, fmt.Errorf("write: %w earlier", errWriteStalled)
	}
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.owing.Store(true)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.broken.Store(true)
		return n, fmt.Errorf("write: %w for %s: %w", errWriteStalled, c.timeout, err)
	}
	return n, err
}

func (c *boundedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.owing.Store(false)
	}
	return n, err
}

func (c *boundedConn) Close() error {
	if !c.owing.Load() {
		return c.Conn.Close()
	}
	raw := c.Conn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn() // no close_notify
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	return raw.Close()
}
