//go:build !linux

package clickhouselogger

import "syscall"

// reusePort does nothing off Linux: the ingest binds once the old runner's
// listener is closed (the bind is retried).
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }
