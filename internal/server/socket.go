package server

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// The framework (apisix-go-plugin-runner v0.5.0) removes its socket path
// unconditionally, at start and on exit. During `apisix reload` a new runner
// starts on the same path before the old one exits, so the old one deletes
// the new one's socket and APISIX gets 503 until someone kills the runner
// (APISIX issue 11347). We listen ourselves (see framework.go): on a private
// path in the same directory, with the framework's mode 0766 so nginx's
// workers can connect, then we rename the socket onto APISIX's path. We
// remove APISIX's path on exit only while it is still our socket (same
// device and inode).

// ownedSocket is a socket path (APISIX's, or the handoff's) while we hold it.
type ownedSocket struct {
	public string
	dev    uint64
	ino    uint64
}

// privatePath returns the path we listen on before the rename.
func privatePath(public string, pid int) string {
	p := fmt.Sprintf("%s.%d.tmp", public, pid)
	if len(p) < 104 { // sun_path is 108 bytes on Linux, 104 on BSD
		return p
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(public))
	return filepath.Join(filepath.Dir(public), fmt.Sprintf(".gr%d-%08x.sock", pid, h.Sum32()))
}

// listenSocket listens for APISIX: a stream socket with the framework's
// mode 0766, so nginx's workers can connect.
func listenSocket(public string, pid int) (*net.UnixListener, *ownedSocket, error) {
	return listenRenamed("unix", public, pid, 0o766)
}

// listenRenamed listens on a private path, sets mode and renames the socket
// onto public. rename(2) replaces whatever is at public atomically, so a
// client never sees a missing socket nor one it may not connect to.
func listenRenamed(network, public string, pid int, mode os.FileMode) (*net.UnixListener, *ownedSocket, error) {
	private := privatePath(public, pid)
	if err := os.Remove(private); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("listen socket: %w", err)
	}
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: private, Net: network})
	if err != nil {
		return nil, nil, fmt.Errorf("listen socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the path is public's, released by release
	fail := func(err error) (*net.UnixListener, *ownedSocket, error) {
		_ = ln.Close()
		_ = os.Remove(private)
		return nil, nil, fmt.Errorf("listen socket: %w", err)
	}
	if err := os.Chmod(private, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(private, public); err != nil {
		return fail(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(public, &st); err != nil {
		return fail(err)
	}
	return ln, &ownedSocket{public: public, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// ours reports whether public is still our socket.
func (o *ownedSocket) ours() bool {
	var st syscall.Stat_t
	return syscall.Stat(o.public, &st) == nil && uint64(st.Dev) == o.dev && st.Ino == o.ino
}

// release removes the public path if it is still our socket. It reports
// whether it removed it.
func (o *ownedSocket) release() (bool, error) {
	if !o.ours() {
		return false, nil // gone, or a newer runner owns the path now
	}
	if err := os.Remove(o.public); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("release socket: %w", err)
	}
	return true, nil
}
