package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/common"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	flatbuffers "github.com/google/flatbuffers/go"
)

// Limits bound what one APISIX client (or anything else that can reach the
// socket, which nginx's workers need to be mode 0766) can make the runner
// hold.
type Limits struct {
	// FrameTimeout is how long a frame may take to arrive once its first
	// byte has, and how long a new connection may wait before its first
	// frame begins. Past it the connection is closed and counted.
	FrameTimeout time.Duration
	// MaxFrameMemory bounds the bytes held by frames still arriving, over
	// all connections (see frameBudget).
	MaxFrameMemory int64
	// MaxConnections caps the open connections; more are closed at once
	// and counted.
	MaxConnections int
}

// smallFrame is the largest frame read into a connection's own reusable
// buffer; larger frames get a buffer that grows with the bytes received,
// charged to the runner-wide budget, and dropped after the call.
const smallFrame = 16 << 10

var (
	// errLeave ends a connection on purpose (handed over, or closed idle
	// at shutdown).
	errLeave = errors.New("leave")
	// errBudget: a frame could not grow within MaxFrameMemory.
	errBudget = errors.New("frame memory budget exhausted")
	// errFrameTimeout: a started frame did not complete in time.
	errFrameTimeout = errors.New("frame timeout")
)

// connServer accepts APISIX's connections and serves each: one call at a
// time, frames read with the bounds of Limits. On shutdown it moves each
// connection, between two calls, to the runner that replaces it
// (handoff.go), or closes it there if no runner takes it, so that APISIX
// does not send its next call into a runner about to exit.
type connServer struct {
	ln     *net.UnixListener
	d      *dispatcher
	lim    Limits
	budget frameBudget
	m      *rpcMetrics

	closing atomic.Bool                   // set once: idle connections are closed from now on
	handoff atomic.Pointer[handoffSender] // if set, idle connections go there instead

	handedOver, closedIdle atomic.Int64

	mu    sync.Mutex
	conns map[*conn]struct{}
	done  chan struct{} // closed when closing and no connection is left
}

func newConnServer(ln *net.UnixListener, d *dispatcher, lim Limits, m *rpcMetrics) *connServer {
	s := &connServer{ln: ln, d: d, lim: lim, m: m,
		conns: make(map[*conn]struct{}), done: make(chan struct{})}
	s.budget.max = lim.MaxFrameMemory
	return s
}

// serve accepts until close is called.
func (s *connServer) serve() {
	for {
		nc, err := s.ln.AcceptUnix()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.m.event("accept", "accept failed", err) // EMFILE and the like: back off, keep serving
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if s.open() >= s.lim.MaxConnections {
			// counted before the close, which the client sees
			s.m.refused.WithLabelValues("connections").Inc()
			s.m.event("refused:connections", "connection refused: max_connections reached", nil)
			_ = nc.Close()
			continue
		}
		s.add(nc, true)
	}
}

// add serves nc. A fresh connection (just accepted) is never closed idle at
// shutdown before its first call is answered: APISIX connects in order to
// send one.
func (s *connServer) add(nc *net.UnixConn, fresh bool) {
	c := &conn{nc: nc, s: s, fresh: fresh}
	c.br = bufio.NewReaderSize(nc, 4096)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	go c.serve()
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

// wake interrupts every read blocked between two calls, so it applies the
// shutdown rules (see conn.waitFrame); a read inside a frame resumes.
func (s *connServer) wake() {
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.SetReadDeadline(time.Now())
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
// left. Both the last close and closeAfterCalls get here, in either order.
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

// conn is one APISIX connection. Only its own goroutine reads and writes.
type conn struct {
	nc *net.UnixConn
	s  *connServer
	// br reads a whole frame, header and body, in one syscall when APISIX
	// has sent it whole (it sends each frame with one write).
	br *bufio.Reader

	fresh     bool // accepted, no call answered yet
	closeOnce sync.Once

	small []byte // reusable buffer for frames up to smallFrame
	out   []byte // reusable buffer for answers
	// frameEnd is when the frame being read must be complete (zero between
	// frames); wdl the write deadline set last.
	frameEnd, wdl time.Time

	req  request
	resp response
	w    stopWriter
}

func (c *conn) close() {
	c.closeOnce.Do(func() {
		_ = c.nc.Close()
		c.s.remove(c)
	})
}

// serve reads calls and answers them until the connection ends.
func (c *conn) serve() {
	defer c.close()
	if c.fresh {
		// a new connection must start its first frame in time
		c.frameEnd = time.Now().Add(c.s.lim.FrameTimeout)
		_ = c.nc.SetReadDeadline(c.frameEnd)
	}
	for {
		typ, body, charged, err := c.readFrame(true)
		if err != nil {
			c.s.m.readEnded(err)
			return
		}
		ansTyp, b := c.s.d.dispatch(c, typ, body)
		c.s.budget.give(charged)
		err = c.writeFrame(ansTyp, b.FinishedBytes())
		putBuilder(b)
		c.fresh = false
		if err != nil {
			c.s.m.connError("write", err)
			return
		}
	}
}

// waitFrame waits, between two calls, for the first byte of the next
// frame, applying the shutdown rules while it waits.
func (c *conn) waitFrame() error {
	for {
		if c.s.closing.Load() && c.leave() {
			return errLeave
		}
		_, err := c.br.Peek(1)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		if !c.frameEnd.IsZero() && !time.Now().Before(c.frameEnd) {
			return errFrameTimeout // a fresh connection that never sent
		}
		if !c.s.closing.Load() {
			return err
		}
		// the shutdown's wake-up: apply the rules above, then wait on
		_ = c.nc.SetReadDeadline(c.frameEnd)
	}
}

// leave applies the shutdown rules to a connection between two calls: it
// hands it over to the new runner if there is one, or closes it unless it
// is fresh or APISIX has already sent its next call.
func (c *conn) leave() bool {
	if h := c.s.handoff.Load(); h != nil && c.br.Buffered() == 0 {
		// (a call already in our buffer is served here first: its bytes
		// are no longer in the socket)
		err := h.send(c.nc)
		if err == nil {
			c.s.handedOver.Add(1)
			return true
		}
		c.s.m.event("handoff", "handoff failed", err)
	}
	if c.fresh || c.pending() {
		return false
	}
	c.s.closedIdle.Add(1)
	return true
}

// pending reports, without blocking, whether APISIX has already sent more
// (a call to serve before closing) on an idle connection.
func (c *conn) pending() bool {
	if c.br.Buffered() > 0 {
		return true
	}
	rc, err := c.nc.SyscallConn()
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

// readFrame reads one whole frame. Between calls it first waits for the
// frame to begin, and a body up to smallFrame lands in the connection's
// reusable buffer; inside a call (an ExtraInfo answer) the body gets its
// own. From its first byte a frame must complete within FrameTimeout. A
// body over smallFrame goes into a buffer that grows with the bytes
// received, each growth charged to the budget (charged is what the caller
// gives back once done with body).
func (c *conn) readFrame(between bool) (typ byte, body []byte, charged int64, err error) {
	if between {
		if err = c.waitFrame(); err != nil {
			return 0, nil, 0, err
		}
	}
	c.startFrame(frameHeaderLen)
	hdr, err := c.peek(frameHeaderLen)
	if err != nil {
		return 0, nil, 0, err
	}
	typ = hdr[0]
	n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	_, _ = c.br.Discard(frameHeaderLen)
	if n <= smallFrame {
		if !between {
			body = make([]byte, n)
		} else {
			if cap(c.small) < n {
				c.small = make([]byte, max(n, 1024))
			}
			body = c.small[:n]
		}
		c.startFrame(n)
		if err = c.readFull(body); err != nil {
			return 0, nil, 0, err
		}
		c.endFrame()
		return typ, body, 0, nil
	}
	body, charged, err = c.readLarge(n)
	if err != nil {
		return 0, nil, 0, err
	}
	c.endFrame()
	return typ, body, charged, nil
}

// readLarge reads an n-byte body into chunks taken from the budget as
// bytes arrive, then, once whole, copies it into one contiguous buffer
// (charged is its size, for the caller to give back) and returns the
// chunks to the free list.
func (c *conn) readLarge(n int) ([]byte, int64, error) {
	c.startFrame(n)
	var chunks [][]byte
	defer func() { c.s.budget.putChunks(chunks) }()
	for got := 0; got < n; {
		ch, ok := c.s.budget.chunk()
		if !ok {
			return nil, 0, c.refuseMemory()
		}
		chunks = append(chunks, ch)
		want := min(chunkSize, n-got)
		if err := c.readFull(ch[:want]); err != nil {
			return nil, 0, err
		}
		got += want
	}
	if !c.s.budget.take(int64(n)) {
		return nil, 0, c.refuseMemory()
	}
	buf := make([]byte, 0, n)
	for _, ch := range chunks {
		buf = append(buf, ch[:min(chunkSize, n-len(buf))]...)
	}
	return buf, int64(n), nil
}

func (c *conn) refuseMemory() error {
	c.s.m.refused.WithLabelValues("frame_memory").Inc()
	c.s.m.event("refused:frame_memory", "frame refused: max_frame_memory reached, connection closed", nil)
	return errBudget
}

// startFrame arms the frame deadline unless the next need bytes are
// already buffered (the common case: APISIX writes a frame at once).
func (c *conn) startFrame(need int) {
	if c.br.Buffered() >= need || !c.frameEnd.IsZero() {
		return
	}
	c.frameEnd = time.Now().Add(c.s.lim.FrameTimeout)
	_ = c.nc.SetReadDeadline(c.frameEnd)
}

func (c *conn) endFrame() {
	if !c.frameEnd.IsZero() {
		c.frameEnd = time.Time{}
		_ = c.nc.SetReadDeadline(time.Time{})
	}
}

// retry reports whether a read error is only the shutdown's wake-up in the
// middle of a frame; the frame's own deadline is armed again.
func (c *conn) retry(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || !c.s.closing.Load() {
		return false
	}
	if !c.frameEnd.IsZero() && !time.Now().Before(c.frameEnd) {
		return false
	}
	_ = c.nc.SetReadDeadline(c.frameEnd)
	return true
}

// frameErr names a read error inside a frame: a timeout is the frame's,
// and an EOF there cuts the frame short.
func (c *conn) frameErr(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errFrameTimeout
	case errors.Is(err, io.EOF):
		return io.ErrUnexpectedEOF
	}
	return err
}

func (c *conn) peek(n int) ([]byte, error) {
	for {
		b, err := c.br.Peek(n)
		if err == nil {
			return b, nil
		}
		if !c.retry(err) {
			return nil, c.frameErr(err)
		}
	}
}

func (c *conn) read(p []byte) (int, error) {
	for {
		k, err := c.br.Read(p)
		if err == nil || k > 0 {
			return k, nil
		}
		if !c.retry(err) {
			return k, c.frameErr(err)
		}
	}
}

func (c *conn) readFull(p []byte) error {
	for len(p) > 0 {
		k, err := c.read(p)
		if err != nil {
			return err
		}
		p = p[k:]
	}
	return nil
}

// writeFrame sends one frame with a single write. The write deadline is
// refreshed at most every half FrameTimeout, so a peer that stops reading
// cannot hold the connection's goroutine for longer than that.
func (c *conn) writeFrame(typ byte, body []byte) error {
	if len(body) > maxFrameLen {
		return fmt.Errorf("write frame: answer of %d bytes is over the protocol's %d", len(body), maxFrameLen)
	}
	now := time.Now()
	if c.wdl.Sub(now) < c.s.lim.FrameTimeout/2 {
		c.wdl = now.Add(c.s.lim.FrameTimeout)
		_ = c.nc.SetWriteDeadline(c.wdl)
	}
	n := len(body)
	hdr := [frameHeaderLen]byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}
	if n > smallFrame {
		bufs := net.Buffers{hdr[:], body}
		_, err := bufs.WriteTo(c.nc)
		return err
	}
	c.out = append(append(c.out[:0], hdr[:]...), body...)
	_, err := c.nc.Write(c.out)
	return err
}

// ask sends an ExtraInfo question during a call and reads APISIX's answer,
// which must come within FrameTimeout. The answer's bytes are a fresh
// allocation the plugin may keep.
func (c *conn) ask(info ei.Info, build func(*flatbuffers.Builder) flatbuffers.UOffsetT) ([]byte, error) {
	b := getBuilder()
	defer putBuilder(b)
	off := build(b)
	ei.ReqStart(b)
	ei.ReqAddInfoType(b, info)
	ei.ReqAddInfo(b, off)
	b.Finish(ei.ReqEnd(b))
	if err := c.writeFrame(typeExtraInfo, b.FinishedBytes()); err != nil {
		return nil, c.askFailed(err)
	}
	c.frameEnd = time.Now().Add(c.s.lim.FrameTimeout)
	_ = c.nc.SetReadDeadline(c.frameEnd)
	typ, body, charged, err := c.readFrame(false)
	defer c.s.budget.give(charged)
	if err != nil {
		return nil, c.askFailed(err)
	}
	if typ != typeExtraInfo {
		_ = c.nc.Close() // out of step: the connection cannot be trusted
		return nil, c.askFailed(fmt.Errorf("got a frame of type %d, want %d", typ, typeExtraInfo))
	}
	res, err := extraInfoResult(body)
	if err != nil {
		_ = c.nc.Close()
		return nil, c.askFailed(err)
	}
	return res, nil
}

func (c *conn) askFailed(err error) error {
	c.s.m.connError("extra_info", err)
	return fmt.Errorf("ask extra info: %w: %w", common.ErrConnClosed, err)
}

// extraInfoResult copies the result out of an ExtraInfo answer, which may
// be malformed.
func extraInfoResult(body []byte) (res []byte, err error) {
	defer func() {
		if recover() != nil {
			res, err = nil, errors.New("malformed extra info answer")
		}
	}()
	if len(body) < 4 {
		return nil, errors.New("malformed extra info answer")
	}
	r := ei.GetRootAsResp(body, 0)
	out := r.ResultBytes()
	if out == nil {
		return nil, nil
	}
	return append([]byte{}, out...), nil
}
