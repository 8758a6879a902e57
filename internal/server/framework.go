package server

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
	_ "unsafe" // go:linkname

	// The framework's handlers and conf cache live in its internal packages;
	// importing pkg/runner links them in.
	_ "github.com/apache/apisix-go-plugin-runner/pkg/runner"
)

// The framework (apisix-go-plugin-runner v0.5.0, pinned in go.mod) owns its
// listener: it accepts on APISIX's path, serves each connection until it
// breaks, and on SIGTERM only stops accepting. It offers no way to learn
// which connections are idle, so a runner built on runner.Run cannot close
// APISIX's pooled connections between two calls, and every call still in
// flight when the process exits fails with a 503 (the apisix reload race of
// issue 7). We run the accept loop ourselves (conns.go) and hand each
// connection to the framework's own per-connection handler, so the wire
// protocol, the conf cache and the plugin dispatch stay the framework's.
//
// These two names are the framework's unexported API. A release that renames
// them fails the build (the linker cannot resolve them), never the requests;
// go.mod pins the version they were read from.

//go:linkname frameworkHandleConn github.com/apache/apisix-go-plugin-runner/internal/server.handleConn
func frameworkHandleConn(c net.Conn)

//go:linkname frameworkInitConfCache github.com/apache/apisix-go-plugin-runner/internal/plugin.InitConfCache
func frameworkInitConfCache(ttl time.Duration)

// confCacheTTL is how long the framework keeps a prepared conf: APISIX's
// APISIX_CONF_EXPIRE_TIME (seconds, default 3600) times 1.2, so a conf
// outlives APISIX's own token by a margin, as runner.Run computes it.
func confCacheTTL() (time.Duration, error) {
	v := os.Getenv("APISIX_CONF_EXPIRE_TIME")
	if v == "" {
		v = "3600"
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("run: APISIX_CONF_EXPIRE_TIME must be a positive number of seconds, got %q", v)
	}
	return time.Duration(n) * 1200 * time.Millisecond, nil
}
