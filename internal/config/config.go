// Package config loads the runner's YAML config file (conf/config.yaml):
// strict decoding (an unknown key is an error that names it), ${VAR}
// expansion for secrets, Go duration strings, and defaults applied in one
// place before validation.
package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/plugins/clickhouselogger"
	"github.com/apisix-edge/edge-runner/plugins/jwtcache"
	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
	"go.uber.org/zap/zapcore"
)

// DefaultPath is where `go-runner run` looks for its config when -c is not
// given: beside APISIX's own config in the official image.
const DefaultPath = "/usr/local/apisix/conf/go-runner.yaml"

// Config is the runner config.
type Config struct {
	// Log controls the runner's own log, which APISIX copies into its
	// error.log.
	Log Log `yaml:"log"`
	// Admin is the loopback HTTP listener for /metrics, /healthz, /status.
	Admin Admin `yaml:"admin"`
	// ShutdownTimeout bounds a graceful shutdown on SIGTERM: in-flight calls
	// finish, buffers flush, clients close. If zero, 3s (APISIX sends
	// SIGKILL about 1 s after SIGTERM on reload, so keep it short).
	ShutdownTimeout core.Duration `yaml:"shutdown_timeout"`
	// DrainTimeout is the first part of shutdown_timeout: how long, after
	// SIGTERM, the runner keeps serving the APISIX connections it already
	// has, with every plugin working, while it waits for a newer runner to
	// take the socket path (apisix reload). Each connection is closed when
	// it is idle and the path is no longer ours, so APISIX's keepalive pool
	// drops it and reconnects to the new runner. If zero, 300ms; it must
	// be below shutdown_timeout.
	DrainTimeout core.Duration `yaml:"drain_timeout"`
	// RPC bounds what clients of APISIX's socket can make the runner hold.
	RPC RPC `yaml:"rpc"`
	// Runtime tunes the Go runtime: its garbage collector and how many
	// threads run Go code at once.
	Runtime Runtime `yaml:"runtime"`
	// Redis is the ratelimit plugin's section (plugins/ratelimit.Config).
	Redis ratelimit.Config `yaml:"redis"`
	// ClickHouse is the clickhouselogger plugin's section
	// (plugins/clickhouselogger.Config).
	ClickHouse clickhouselogger.Config `yaml:"clickhouse"`
	// JWKS is the jwtcache plugin's section (plugins/jwtcache.Config).
	JWKS jwtcache.Config `yaml:"jwks"`
}

// Log is the log section.
type Log struct {
	// Level is debug, info, warn or error. If empty, warn: the runner's
	// output lands in APISIX's error.log.
	Level string `yaml:"level"`
	// SummaryInterval is how often repeated failures are summarized into
	// one line. If zero, 1m.
	SummaryInterval core.Duration `yaml:"summary_interval"`
}

// Admin is the admin listener section.
type Admin struct {
	// Listen is the host:port of the admin listener. If empty,
	// 127.0.0.1:9542. "off" disables it. Keep it on loopback: /status shows
	// backend errors.
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin listener,
	// for profiling the runner under real traffic. If false (the default),
	// it is not served.
	Pprof bool `yaml:"pprof"`
}

// RPC is the rpc section: the bounds of the ext-plugin socket. The socket
// must be mode 0766 so that nginx's workers (user nobody) can connect, so
// any local user can reach it too: these bounds keep a client that sends
// half frames, sends slowly or opens connections without end from
// exhausting the runner's memory (an out-of-memory kill means 503 on every
// route until APISIX respawns the runner).
type RPC struct {
	// FrameTimeout is how long a frame may take to arrive once its first
	// byte has, and how long a new connection may wait before its first
	// frame begins; past it the connection is closed and counted
	// (apisix_edge_rpc_frame_timeouts_total). APISIX writes each frame at
	// once and waits 60 s itself. If zero, 10s.
	FrameTimeout core.Duration `yaml:"frame_timeout"`
	// MaxFrameMemory bounds, over all connections, the bytes held by
	// frames larger than 16 KiB that are still arriving (buffers grow with
	// the bytes received, not with the announced length). A frame that
	// would exceed it is refused: its connection is closed and counted
	// (apisix_edge_rpc_refused_total{reason="frame_memory"}). If zero,
	// 268435456 (256 MiB).
	MaxFrameMemory int64 `yaml:"max_frame_memory"`
	// MaxConnections caps the open connections; more are closed at once and
	// counted (apisix_edge_rpc_refused_total{reason="connections"}). APISIX
	// opens up to 32 pooled connections per nginx worker plus one per
	// concurrent PrepareConf. If zero, 4096: 64 workers' pools and their
	// PrepareConf connections.
	MaxConnections int `yaml:"max_connections"`
	// MaxConfs caps the prepared confs (one per route phase and conf
	// version) kept; past it the least recently used is evicted, and APISIX
	// prepares it again when it next needs it. If zero, 65536.
	MaxConfs int `yaml:"max_confs"`
}

// Runtime is the runtime section: how often the garbage collector runs, and
// how many threads run Go code (max_procs, below).
// The runner's live heap is small (megabytes) while every request
// allocates a few kilobytes, so with Go's default (a collection each time
// the heap doubles) collections run tens of times a second under load:
// profiled under the hot-key limiter load, background marking and
// sweeping were 10% of the runner's CPU samples and the sweeper's yields
// into the scheduler 20% (5% and 2% at 400). A higher gc_percent trades
// memory for that CPU; memory_limit keeps the trade bounded. The
// environment variables GOGC and GOMEMLIMIT, when APISIX passes them
// (nginx_config.envs), win over these fields.
type Runtime struct {
	// GCPercent is Go's GOGC: a collection starts when the heap has grown
	// by this percentage of what the last one left live. -1 turns the
	// percentage off (collections then only keep memory_limit). If zero,
	// 400: about a fifth of the default's collection work, for a heap up to
	// five times the live one.
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimit is Go's GOMEMLIMIT, in bytes: a soft limit of the
	// runtime's memory, near which the collector runs as often as needed
	// (up to about half the CPU) whatever gc_percent says. If zero,
	// 1073741824 (1 GiB); -1 sets none. Keep it above what the configured
	// bounds can hold live (clickhouse.max_pending rows of about 1 KB each,
	// rpc.max_frame_memory) with room to spare.
	MemoryLimit int64 `yaml:"memory_limit"`
	// MaxProcs is Go's GOMAXPROCS: how many threads run Go code at once.
	// If zero, Go's own choice: the CPUs the process may use (its cgroup
	// quota included). APISIX passes no GOMAXPROCS to the runner unless
	// nginx_config.envs lists it, hence this field. The runner shares its
	// cores with nginx's workers and Redis; with more than one thread,
	// every hand-off between goroutines can wake an idle thread that spins
	// for work and sleeps again. Measured on a 2-core VM (edgeperf, README):
	// 1 cut the runner's CPU per Redis decision by 6-26% at c=64 and by
	// about a quarter at c=1, with the ratelimit ratios within noise; but
	// one thread also bounds the work that needs CPU in bursts: cold RS256
	// verifications (jwtcache misses) lost about a quarter of their
	// throughput at c=64, the log-phase ingest about 30% of its rows/s.
	MaxProcs int `yaml:"max_procs"`
}

// Apply sets the collector's percentage and memory limit and the number of
// threads, each unless its environment variable (GOGC, GOMEMLIMIT,
// GOMAXPROCS) is set.
func (r Runtime) Apply(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" && r.MaxProcs > 0 {
		runtime.GOMAXPROCS(r.MaxProcs)
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(r.GCPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		limit := r.MemoryLimit
		if limit < 0 {
			limit = math.MaxInt64
		}
		debug.SetMemoryLimit(limit)
	}
}

// ZapLevel returns the parsed log level.
func (l Log) ZapLevel() zapcore.Level {
	lvl, err := zapcore.ParseLevel(l.Level)
	if err != nil {
		return zapcore.WarnLevel
	}
	return lvl
}

// Default returns the config used when no file exists: every default.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "warn"
	}
	if c.Log.SummaryInterval == 0 {
		c.Log.SummaryInterval = core.Duration(time.Minute)
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:9542"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = core.Duration(3 * time.Second)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = core.Duration(300 * time.Millisecond)
	}
	if c.RPC.FrameTimeout == 0 {
		c.RPC.FrameTimeout = core.Duration(10 * time.Second)
	}
	if c.RPC.MaxFrameMemory == 0 {
		c.RPC.MaxFrameMemory = 256 << 20
	}
	if c.RPC.MaxConnections == 0 {
		c.RPC.MaxConnections = 4096
	}
	if c.RPC.MaxConfs == 0 {
		c.RPC.MaxConfs = 65536
	}
	if c.Runtime.GCPercent == 0 {
		c.Runtime.GCPercent = 400
	}
	if c.Runtime.MemoryLimit == 0 {
		c.Runtime.MemoryLimit = 1 << 30
	}
	c.Redis.ApplyDefaults()
	c.ClickHouse.ApplyDefaults()
	c.JWKS.ApplyDefaults()
}

// Validate checks every field and returns all problems, each naming its
// field and rule.
func (c *Config) Validate() error {
	var errs []error
	if _, err := zapcore.ParseLevel(c.Log.Level); err != nil {
		errs = append(errs, core.Fieldf("log.level", "must be one of debug, info, warn, error, got %q", c.Log.Level))
	}
	if c.Log.SummaryInterval < 0 {
		errs = append(errs, core.Fieldf("log.summary_interval", "must be > 0"))
	}
	if c.Admin.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			errs = append(errs, core.Fieldf("admin.listen", "must be host:port or \"off\", got %q", c.Admin.Listen))
		}
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, core.Fieldf("shutdown_timeout", "must be > 0"))
	}
	if c.DrainTimeout < 0 || c.DrainTimeout >= c.ShutdownTimeout {
		errs = append(errs, core.Fieldf("drain_timeout", "must be > 0 and below shutdown_timeout (%v), got %v", c.ShutdownTimeout.D(), c.DrainTimeout.D()))
	}
	if c.RPC.FrameTimeout < 0 || c.RPC.FrameTimeout.D() >= 60*time.Second {
		errs = append(errs, core.Fieldf("rpc.frame_timeout", "must be > 0 and below APISIX's own 60s, got %v", c.RPC.FrameTimeout.D()))
	}
	if c.RPC.MaxFrameMemory < 1<<20 {
		errs = append(errs, core.Fieldf("rpc.max_frame_memory", "must be at least 1048576 (1 MiB), got %d", c.RPC.MaxFrameMemory))
	}
	if c.RPC.MaxConnections < 16 {
		errs = append(errs, core.Fieldf("rpc.max_connections", "must be at least 16, got %d", c.RPC.MaxConnections))
	}
	if c.RPC.MaxConfs < 16 {
		errs = append(errs, core.Fieldf("rpc.max_confs", "must be at least 16, got %d", c.RPC.MaxConfs))
	}
	if c.Runtime.GCPercent < -1 || c.Runtime.GCPercent > 10000 {
		errs = append(errs, core.Fieldf("runtime.gc_percent", "must be -1 (off) or between 1 and 10000, got %d", c.Runtime.GCPercent))
	}
	if c.Runtime.MemoryLimit != -1 && c.Runtime.MemoryLimit < 64<<20 {
		errs = append(errs, core.Fieldf("runtime.memory_limit", "must be -1 (none) or at least 67108864 (64 MiB), got %d", c.Runtime.MemoryLimit))
	}
	if c.Runtime.MaxProcs < 0 || c.Runtime.MaxProcs > 1024 {
		errs = append(errs, core.Fieldf("runtime.max_procs", "must be 0 (Go's choice) or between 1 and 1024, got %d", c.Runtime.MaxProcs))
	}
	if c.Runtime.GCPercent == -1 && c.Runtime.MemoryLimit == -1 {
		errs = append(errs, core.Fieldf("runtime.gc_percent", "-1 (off) needs a runtime.memory_limit, or the heap grows without a collection"))
	}
	errs = append(errs, c.Redis.Validate()...)
	errs = append(errs, c.ClickHouse.Validate()...)
	if in := c.ClickHouse.Ingest.Listen; in != "off" && in == c.Admin.Listen {
		errs = append(errs, core.Fieldf("clickhouse.ingest.listen", "must differ from admin.listen, got %q for both", in))
	}
	errs = append(errs, c.JWKS.Validate()...)
	return errors.Join(errs...)
}

// Load reads, expands, decodes, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a config document. lookup resolves ${VAR} references.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	c := &Config{}
	if err := core.DecodeYAML(data, lookup, c); err != nil {
		return nil, err
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
