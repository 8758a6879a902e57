package server

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

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
// These three names are the framework's unexported API. A release that renames
// them fails the build (the linker cannot resolve them), never the requests;
// go.mod pins the version they were read from. The conf cache's layout is
// checked at start (startTokensAt) and against the framework itself by
// TestConfTokensStartAtBase.

//go:linkname frameworkHandleConn github.com/apache/apisix-go-plugin-runner/internal/server.handleConn
func frameworkHandleConn(c net.Conn)

//go:linkname frameworkInitConfCache github.com/apache/apisix-go-plugin-runner/internal/plugin.InitConfCache
func frameworkInitConfCache(ttl time.Duration)

// frameworkConfCache is the framework's conf cache (internal/plugin.cache),
// seen through confCacheLayout.
//
//go:linkname frameworkConfCache github.com/apache/apisix-go-plugin-runner/internal/plugin.cache
var frameworkConfCache *confCacheLayout

// confCacheLayout mirrors the start of the framework's ConfCache (v0.5.0):
// a mutex, the two ttlcache pointers, then the counter the conf tokens are
// numbered from.
type confCacheLayout struct {
	lock         sync.Mutex
	tokenCache   unsafe.Pointer
	keyCache     unsafe.Pointer
	tokenCounter uint32
}

// startTokensAt makes the framework number this process's conf tokens from
// base+1 instead of 1. APISIX keeps the tokens it was given and sends them
// on any connection, so after a reload (or a handoff, or a respawn) a call
// can carry a token the old runner issued. With every runner numbering from
// 1, that token may name another conf in the new runner, which would then
// run the wrong plugins (no jwtcache, no ratelimit) for the call. From a
// random base, an old token is unknown to the new runner, which answers
// "conf token not found", and APISIX prepares the conf again. It must run
// right after frameworkInitConfCache. It reports false, changing nothing,
// if the cache does not look as mirrored.
func startTokensAt(base uint32) bool {
	c := frameworkConfCache
	if c == nil || c.tokenCache == nil || c.keyCache == nil || c.tokenCounter != 0 {
		return false
	}
	c.lock.Lock()
	c.tokenCounter = base
	c.lock.Unlock()
	return true
}

// tokenBase is a random start for the conf tokens, below 1<<31 so that a
// process never wraps to token 0.
func tokenBase() uint32 {
	return uint32(rand.Int64N(1<<31-1<<20)) + 1
}

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
