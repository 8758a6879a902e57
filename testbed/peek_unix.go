//go:build linux || darwin || freebsd || netbsd || openbsd

package testbed

import (
	"errors"
	"net"
	"syscall"
)

// connAlive peeks at an idle connection without blocking: EOF or unexpected
// data means nginx would already have closed it.
func connAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == nil:
			alive = false // EOF (n == 0) or unexpected data (n > 0)
			_ = n
		case errors.Is(rerr, syscall.EAGAIN), errors.Is(rerr, syscall.EWOULDBLOCK), errors.Is(rerr, syscall.EINTR):
		default:
			alive = false
		}
		return true
	})
	return alive && err == nil
}
