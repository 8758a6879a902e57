package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// typeExtraInfo is the frame type of the runner's ExtraInfo questions in the
// middle of a call; every other frame the runner writes ends a call.
const typeExtraInfo = 3

// connServer accepts APISIX's connections and hands each to the framework's
// handler through a conn that knows whether a call is in progress. On
// shutdown it moves each connection, between two calls, to the runner that
// replaces it (handoff.go), or closes it there if no runner takes it, so
// that APISIX does not send its next call into a runner about to exit.
type connServer struct {
	ln     *net.UnixListener
	handle func(net.Conn)
	// onError reports an accept or handoff error (logged by the caller,
	// throttled).
	onError func(error)

	closing atomic.Bool                   // set once: idle connections are closed from now on
	handoff atomic.Pointer[handoffSender] // if set, idle connections go there instead

	handedOver, closedIdle atomic.Int64

	mu    sync.Mutex
	conns map[*conn]struct{}
	done  chan struct{} // closed when closing and no connection is left
}

func newConnServer(ln *net.UnixListener, handle func(net.Conn), onError func(error)) *connServer {
	return &connServer{ln: ln, handle: handle, onError: onError,
		conns: make(map[*conn]struct{}), done: make(chan struct{})}
}

// serve accepts until close is called.
func (s *connServer) serve() {
	for {
		nc, err := s.ln.AcceptUnix()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.onError(err) // EMFILE and the like: back off, keep serving
			time.Sleep(5 * time.Millisecond)
			continue
		}
		s.add(nc, true)
	}
}

// add serves nc. A fresh connection (just accepted) is never closed before
// its first call is answered: APISIX connects in order to send one.
func (s *connServer) add(nc *net.UnixConn, fresh bool) {
	c := &conn{UnixConn: nc, s: s, fresh: fresh}
	c.br = bufio.NewReaderSize(nc, 4096)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	go s.handle(c)
}

// open returns the number of open connections.
func (s *connServer) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// closeAfterCalls stops accepting and closes each connection right after it
// answers its next call (unless APISIX has already sent another): most
// often APISIX is still reading the answer then, and finds the EOF before
// it reuses the connection. Not always: a worker woken by the answer can
// send its next call before the close, and that call fails. So this is the
// fallback when no newer runner takes the connections (handOver). The
// returned channel is closed when no connection is left.
func (s *connServer) closeAfterCalls() <-chan struct{} {
	if s.closing.Swap(true) {
		return s.done
	}
	_ = s.ln.Close()
	s.mu.Lock()
	s.checkDoneLocked()
	s.mu.Unlock()
	return s.done
}

// handOver stops accepting and sends every connection to the runner that
// listens on path, each at its next frame boundary: at once for those
// between two calls, after their answer for the others. It fails if the
// handoff path cannot be dialed.
func (s *connServer) handOver(path string) (<-chan struct{}, error) {
	h, err := dialHandoff(path)
	if err != nil {
		return nil, err
	}
	s.handoff.Store(h)
	done := s.closeAfterCalls()
	s.wake()
	return done, nil
}

// wake interrupts every Read blocked between two calls, so it applies the
// shutdown rules (see conn.Read); a Read inside a call resumes.
func (s *connServer) wake() {
	s.mu.Lock()
	for c := range s.conns {
		_ = c.UnixConn.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
}

// stopHandoff closes the connection to the new runner, once no connection
// is left to send.
func (s *connServer) stopHandoff() {
	if h := s.handoff.Load(); h != nil {
		_ = h.close()
	}
}

// closeIdle also closes, at once, the connections waiting for a call (those
// APISIX's pool has not used since closeAfterCalls). A call APISIX sends on
// one in the same instant fails, so drain does this only at its deadline.
func (s *connServer) closeIdle() <-chan struct{} {
	done := s.closeAfterCalls()
	s.wake()
	return done
}

func (s *connServer) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.checkDoneLocked()
	s.mu.Unlock()
}

// checkDoneLocked closes done once closing has begun and no connection is
// left. Both the last Close and closeAfterCalls get here, in either order.
func (s *connServer) checkDoneLocked() {
	if len(s.conns) > 0 || !s.closing.Load() {
		return
	}
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// conn is one APISIX connection as the framework's handler sees it.
//
// Read fills the whole buffer: the framework reads a frame's header and then
// its body with one Read each and drops the connection on a short read,
// which a large frame split by the kernel would otherwise cause.
//
// Write follows the frames the framework writes, to learn when a call ends:
// a frame that is not an ExtraInfo question is the call's answer. Only the
// handler's goroutine reads and writes, so the frame state needs no lock.
type conn struct {
	*net.UnixConn
	s *connServer

	busy      atomic.Bool // a call is in progress
	fresh     bool        // accepted, no call answered yet (handler goroutine only)
	closeOnce sync.Once

	// br reads a whole frame, header and body, in one syscall when APISIX
	// has sent it whole (it sends each frame with one write).
	br *bufio.Reader
	// A frame header the framework wrote, held to go out with its body in
	// one writev: the framework writes them with two calls.
	held    bool
	heldHdr [4]byte
	bufsArr [2][]byte
	bufs    net.Buffers

	hdr  [4]byte // header of the frame being written
	hdrN int
	left int // body bytes of that frame still to write
}

func (c *conn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if n == 0 && !c.busy.Load() && c.s.closing.Load() && c.leave() {
			return 0, io.EOF // the handler closes our descriptor
		}
		m, err := c.br.Read(p[n:])
		if m > 0 {
			c.busy.Store(true)
		}
		n += m
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && c.s.closing.Load() {
				// the shutdown's wake-up, not a real timeout: a call in
				// progress goes on, an idle connection ends above
				_ = c.UnixConn.SetReadDeadline(time.Time{})
				continue
			}
			return n, err
		}
	}
	return n, nil
}

// leave applies the shutdown rules to a connection between two calls: it
// hands it over to the new runner if there is one, or closes it unless it
// is fresh or APISIX has already sent its next call.
func (c *conn) leave() bool {
	if h := c.s.handoff.Load(); h != nil && c.br.Buffered() == 0 {
		// (a call already in our buffer is served here first: its bytes
		// are no longer in the socket)
		err := h.send(c.UnixConn)
		if err == nil {
			c.s.handedOver.Add(1)
			return true
		}
		c.s.onError(err)
	}
	if c.fresh || c.pending() {
		return false
	}
	c.s.closedIdle.Add(1)
	return true
}

func (c *conn) Write(p []byte) (int, error) {
	if !c.held && c.hdrN == 0 && len(p) == len(c.heldHdr) && p[1]|p[2]|p[3] != 0 {
		copy(c.heldHdr[:], p) // a frame header with a body to follow
		c.held = true
		return len(p), nil
	}
	if !c.held {
		n, err := c.UnixConn.Write(p)
		c.track(p[:n])
		return n, err
	}
	c.held = false
	c.bufsArr = [2][]byte{c.heldHdr[:], p}
	c.bufs = c.bufsArr[:]
	written, err := c.bufs.WriteTo(c.UnixConn)
	c.bufsArr = [2][]byte{} // keep no reference to the framework's buffer
	h := min(int(written), len(c.heldHdr))
	c.track(c.heldHdr[:h])
	n := int(written) - h
	c.track(p[:n])
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// track advances the frame state over b, the bytes just written: the end
// of an answer ends the call.
func (c *conn) track(b []byte) {
	for len(b) > 0 {
		if c.hdrN < len(c.hdr) {
			k := copy(c.hdr[c.hdrN:], b)
			c.hdrN += k
			b = b[k:]
			if c.hdrN < len(c.hdr) {
				return
			}
			c.left = int(c.hdr[1])<<16 | int(c.hdr[2])<<8 | int(c.hdr[3])
		} else {
			k := min(len(b), c.left)
			c.left -= k
			b = b[k:]
		}
		if c.left == 0 {
			if c.hdr[0] != typeExtraInfo {
				c.busy.Store(false)
				c.fresh = false
			}
			c.hdrN = 0
		}
	}
}

// pending reports, without blocking, whether APISIX has already sent more
// (a call to serve before closing) on an idle connection.
func (c *conn) pending() bool {
	if c.br.Buffered() > 0 {
		return true
	}
	rc, err := c.UnixConn.SyscallConn()
	if err != nil {
		return false
	}
	has := false
	_ = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		has = err == nil && n > 0
		return true
	})
	return has
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.UnixConn.Close()
		c.s.remove(c)
	})
	return err
}
