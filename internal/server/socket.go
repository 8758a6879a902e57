package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The framework (apisix-go-plugin-runner v0.5.0) removes its socket path
// unconditionally, at start and on exit. During `apisix reload` a new runner
// starts on the same path before the old one exits, so the old one deletes
// the new one's socket and APISIX gets 503 until someone kills the runner
// (APISIX issue 11347). We give the framework a private path in the same
// directory, wait until it listens there with its final mode, and rename the
// socket onto APISIX's path. The framework then only ever removes its
// private path, and we remove APISIX's path on exit only while it is still
// our socket (same device and inode).

// ownedSocket is APISIX's socket path while we hold it.
type ownedSocket struct {
	public string
	dev    uint64
	ino    uint64
}

// privatePath returns the path the framework listens on before the rename.
func privatePath(public string, pid int) string {
	p := fmt.Sprintf("%s.%d.tmp", public, pid)
	if len(p) < 104 { // sun_path is 108 bytes on Linux, 104 on BSD
		return p
	}
	return filepath.Join(filepath.Dir(public), fmt.Sprintf(".gr%d.sock", pid))
}

// claimSocket waits until the framework listens on private with mode 0766,
// then renames it onto public. rename(2) replaces whatever is at public
// atomically, so APISIX never sees a missing socket.
func claimSocket(private, public string, timeout time.Duration) (*ownedSocket, error) {
	deadline := time.Now().Add(timeout)
	for {
		fi, err := os.Stat(private)
		if err == nil && fi.Mode()&os.ModeSocket != 0 && fi.Mode().Perm() == 0o766 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("claim socket: %s did not appear within %v", private, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	if err := os.Rename(private, public); err != nil {
		return nil, fmt.Errorf("claim socket: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(public, &st); err != nil {
		return nil, fmt.Errorf("claim socket: %w", err)
	}
	return &ownedSocket{public: public, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// release removes the public path if it is still our socket. It reports
// whether it removed it.
func (o *ownedSocket) release() (bool, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(o.public, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("release socket: %w", err)
	}
	if uint64(st.Dev) != o.dev || st.Ino != o.ino {
		return false, nil // a newer runner owns it now
	}
	if err := os.Remove(o.public); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("release socket: %w", err)
	}
	return true, nil
}
