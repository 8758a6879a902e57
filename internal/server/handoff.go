package server

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Closing an idle APISIX connection can never be made safe: APISIX may take
// it from its pool for the next call in the same instant, and that call
// then fails with 503. So during a reload the old runner does not close its
// connections; it hands them to the new runner. Each runner listens on a
// second socket, the handoff path (APISIX's path + ".handoff", mode 0600,
// claimed by rename like the main one). An old runner whose socket path
// has been taken dials it and sends each connection's file descriptor
// (SCM_RIGHTS), at a frame boundary: between two calls, before reading a
// byte of the next one. A call APISIX has already sent waits in the
// socket's buffer and the new runner reads it. The new runner does not know
// the old runner's conf tokens, so its first call on a connection answers
// "conf token not found" and APISIX prepares the conf again and retries, as
// it does after any runner restart.
//
// If the handoff cannot be used (no new runner listening, an older runner
// without it, a send error), connections are closed right after an answer
// instead (connServer.closeAfterCalls).

// handoffPath is the handoff socket of the runner that owns public.
func handoffPath(public string) string { return public + ".handoff" }

// handoffSendTimeout bounds one descriptor send to the new runner.
const handoffSendTimeout = 100 * time.Millisecond

// handoffSender sends connections to the runner listening on the handoff
// path.
type handoffSender struct {
	mu sync.Mutex
	c  *net.UnixConn
}

func dialHandoff(path string) (*handoffSender, error) {
	d := net.Dialer{Timeout: handoffSendTimeout}
	c, err := d.Dial("unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return &handoffSender{c: c.(*net.UnixConn)}, nil
}

// send passes c's descriptor to the new runner; c can be closed afterwards
// (the socket lives on in the new runner).
func (h *handoffSender) send(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.c.SetWriteDeadline(time.Now().Add(handoffSendTimeout)); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = h.c.WriteMsgUnix([]byte{1}, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("handoff: %w", werr)
	}
	return nil
}

func (h *handoffSender) close() error { return h.c.Close() }

// serveHandoff adopts the connections older runners send on ln until ln is
// closed.
func serveHandoff(ln *net.UnixListener, s *connServer) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		go receiveHandoff(c, s)
	}
}

// receiveHandoff adopts each descriptor received on c until the sender
// closes it.
func receiveHandoff(c *net.UnixConn, s *connServer) {
	defer c.Close()
	var b [1]byte
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		_, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
		if err != nil {
			return
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			s.m.event("handoff", "handoff failed", fmt.Errorf("handoff: %w", err))
			continue
		}
		for _, m := range msgs {
			fds, err := syscall.ParseUnixRights(&m)
			if err != nil {
				s.m.event("handoff", "handoff failed", fmt.Errorf("handoff: %w", err))
				continue
			}
			for _, fd := range fds {
				if err := s.adopt(fd); err != nil {
					s.m.event("handoff", "handoff failed", err)
				}
			}
		}
	}
}

// adopt serves a connection handed over by an older runner.
func (s *connServer) adopt(fd int) error {
	f := os.NewFile(uintptr(fd), "apisix-handoff")
	nc, err := net.FileConn(f) // dups fd
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("handoff: adopt: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		_ = nc.Close()
		return fmt.Errorf("handoff: adopt: got a %T, want a unix connection", nc)
	}
	s.add(uc, false)
	return nil
}
