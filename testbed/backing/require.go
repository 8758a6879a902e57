package backing

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Names of the services accepted by Require. Each is also the name of the
// Debian package that provides the service's binary.
const (
	// RedisServer is the redis-server binary (Debian package redis-server).
	RedisServer = "redis-server"
	// RedisSentinel is the redis-sentinel binary (Debian package redis-sentinel).
	RedisSentinel = "redis-sentinel"
	// ClickHouseServer is the clickhouse-server binary (Debian package
	// clickhouse-server).
	ClickHouseServer = "clickhouse-server"
)

// binaryEnv maps each service to the environment variable that may point at
// an alternative binary.
var binaryEnv = map[string]string{
	RedisServer:      "BACKING_REDIS_SERVER",
	RedisSentinel:    "BACKING_REDIS_SENTINEL",
	ClickHouseServer: "BACKING_CLICKHOUSE_SERVER",
}

// ErrMissingBinary is wrapped by the errors of Require and of the start
// functions when a server binary cannot be found.
var ErrMissingBinary = errors.New("server binary not found")

// FreePort returns a TCP port on 127.0.0.1 that was free at the time of the
// call. Another process may take it before it is used; the start functions
// therefore retry with a new port when a server fails to bind.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Require checks that the binaries of the named services (RedisServer,
// RedisSentinel, ClickHouseServer) are installed. The error names every
// missing Debian package and the apt-get command that installs them. With no
// names it checks all services.
func Require(names ...string) error {
	if len(names) == 0 {
		names = []string{RedisServer, RedisSentinel, ClickHouseServer}
	}
	var missing []string
	for _, n := range names {
		if _, ok := binaryEnv[n]; !ok {
			return fmt.Errorf("require: unknown service %q (want %s, %s or %s)",
				n, RedisServer, RedisSentinel, ClickHouseServer)
		}
		if _, err := lookBinary(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	return fmt.Errorf("require: %w: %s (install the Debian package(s) with: apt-get install %s)",
		ErrMissingBinary, strings.Join(missing, ", "), strings.Join(missing, " "))
}

// lookBinary finds the binary of a service: the path in its environment
// variable, then $PATH, then /usr/bin and /usr/sbin (which may be missing
// from a non-root $PATH).
func lookBinary(name string) (string, error) {
	if p := os.Getenv(binaryEnv[name]); p != "" {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", binaryEnv[name], p)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// binary resolves the binary of a service for the operation op, returning
// the Require error when it is missing.
func binary(op, name string) (string, error) {
	p, err := lookBinary(name)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, Require(name))
	}
	return p, nil
}
