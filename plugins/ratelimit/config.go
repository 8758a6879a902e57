package ratelimit

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

// Config is the redis section, used by the ratelimit plugin. Every field
// documents its default; applyDefaults sets them and validate checks them,
// each problem naming its field as "redis.<key>".
type Config struct {
	// Mode is the topology: standalone, sentinel or cluster. If empty,
	// standalone.
	Mode string `yaml:"mode"`
	// Addrs are host:port addresses: the server (standalone, exactly one),
	// the sentinels (sentinel) or cluster seed nodes (cluster). If empty,
	// ["127.0.0.1:6379"]. In standalone mode the one address may instead be
	// a Unix socket, "unix:/path/to/redis.sock" (redis.conf's unixsocket),
	// for a Redis on the same host; TLS does not apply to it. The runner
	// needs write permission on the socket (unixsocketperm).
	Addrs []string `yaml:"addrs"`
	// MasterName is the name the sentinels monitor. Required in sentinel
	// mode, unused otherwise.
	MasterName string `yaml:"master_name"`
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// themselves (sentinel mode). If empty, no AUTH to the sentinels.
	SentinelUsername string `yaml:"sentinel_username"`
	SentinelPassword string `yaml:"sentinel_password"`
	// Username is the ACL user of the data nodes (Redis 6+). If empty, the
	// "default" user (with Password, a plain AUTH <password>).
	Username string `yaml:"username"`
	// Password authenticates to the data nodes. If empty, no AUTH. Pass it
	// as ${REDIS_PASSWORD} and list REDIS_PASSWORD under APISIX's
	// nginx_config.envs.
	Password string `yaml:"password"`
	// DB is the database number (standalone and sentinel; must be 0 in
	// cluster mode). If zero, 0.
	DB int `yaml:"db"`
	// TLS encrypts the connections to the data nodes and the sentinels.
	// Disabled by default.
	TLS core.TLS `yaml:"tls"`
	// KeyPrefix starts every key the plugin writes, so that the limiter can
	// share a Redis with other users. If empty, "edge:rl:".
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each Redis call of a request, queueing for a
	// connection included. If zero, 20ms: a healthy Redis in the same
	// network answers an EVALSHA in well under 1 ms (a few ms on a busy
	// host), while the L1 budget of the whole gateway decision is 50 ms at
	// p99. 20 ms absorbs hiccups yet lets a slow or frozen Redis cost each
	// request at most 20 ms until the breaker opens (peers wait 1 to 10 s).
	Timeout core.Duration `yaml:"timeout"`
	// DialTimeout bounds the TCP (and TLS) connect to a node, which happens
	// in the background pool or inside a request's Timeout. If zero, 250ms.
	DialTimeout core.Duration `yaml:"dial_timeout"`
	// PoolSize is the maximum number of connections per node. If zero, 64.
	PoolSize int `yaml:"pool_size"`
	// MinIdleConns is the number of connections per node kept open so that
	// requests do not pay for a dial. If zero, 4; -1 keeps none.
	MinIdleConns int `yaml:"min_idle_conns"`
	// Pipeline lets concurrent decisions share Redis round trips: the
	// plugin's batcher sends whatever decisions are queued at the moment
	// as one pipeline (a lone decision goes out at once, never waiting for
	// company). If false, each decision is its own EVALSHA on the
	// request's goroutine. If unset, true.
	Pipeline *bool `yaml:"pipeline"`
	// PipelineWorkers is the number of batcher goroutines, each with at
	// most one round trip in flight (per node in Cluster). If zero, 4.
	PipelineWorkers int `yaml:"pipeline_workers"`
	// PipelineMaxBatch caps the decisions in one round trip. If zero, 64.
	PipelineMaxBatch int `yaml:"pipeline_max_batch"`
	// PipelineQueue bounds the decisions waiting for a worker; when it is
	// full a decision fails at once (degraded, counted in
	// apisix_edge_ratelimit_batcher_dropped_total). If zero, 1024.
	PipelineQueue int `yaml:"pipeline_queue"`
	// Multiplex sends the batcher's decisions over one connection with many
	// requests in flight (standalone and sentinel mode; in sentinel mode to
	// the master the sentinels name, asked again at each dial, and redialed
	// when the server answers READONLY): a writer sends whatever
	// is queued without waiting for the previous replies, a reader hands
	// out the replies in order. It costs the runner and Redis a third to a
	// half of the CPU per decision of the pipelines on pooled connections
	// (docs/ratelimit.md). pipeline_workers, pool_size and min_idle_conns
	// do not apply to it; each decision still waits at most timeout, a
	// connection with no reply for 4×timeout (at least 100ms) is closed,
	// and while it is down decisions fail at once and it is redialed in
	// the background (20ms to 1s apart). If unset, true in standalone and
	// sentinel mode with pipeline on; false otherwise.
	Multiplex *bool `yaml:"multiplex"`
	// Breaker is the circuit breaker around Redis.
	Breaker BreakerConfig `yaml:"breaker"`
	// OverrideCacheTTL is how long a tenant's override (or its absence) read
	// from Redis is used before it is read again. Through a Redis outage the
	// last known value keeps being used. If zero, 10s.
	OverrideCacheTTL core.Duration `yaml:"override_cache_ttl"`
	// OverrideCacheSize bounds the number of tenants cached. If zero, 10000.
	OverrideCacheSize int `yaml:"override_cache_size"`
	// LocalMaxKeys bounds the number of keys the runner tracks in memory:
	// the per-runner limiter of fail_mode "local" and the cache of keys
	// known to be over their limit. Least recently used keys are dropped
	// first. If zero, 100000 (about 10 MB each at most).
	LocalMaxKeys int `yaml:"local_max_keys"`
	// Shadow puts every route in shadow mode (a dry run: decided and
	// counted, never rejected; see the conf's mode). If false, each
	// route's mode applies.
	Shadow bool `yaml:"shadow"`
	// NearLimitRatio is the share of a rule's limit at or above which an
	// allowed decision is counted in apisix_edge_ratelimit_near_limit_total
	// (envoy's near_limit). If zero, 0.8. Above 0 and at most 1.
	NearLimitRatio float64 `yaml:"near_limit_ratio"`
}

// BreakerConfig is redis.breaker: when it opens, decisions take no Redis
// round trip at all and each route's fail_mode applies.
type BreakerConfig struct {
	// ConsecutiveFailures opens the breaker after this many Redis calls in
	// a row failed, provided none succeeded for MinFailingTime. If zero, 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// MinFailingTime keeps a short stall (a GC pause, a busy host) that
	// times out every call in flight at once from opening the breaker:
	// ConsecutiveFailures counts only once no call has succeeded for this
	// long. If zero, 100ms.
	MinFailingTime core.Duration `yaml:"min_failing_time"`
	// FailureRatio opens the breaker when at least this share of the calls
	// in the last Window failed (and there were MinRequests calls). If
	// zero, 0.5.
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests is the number of calls in Window below which
	// FailureRatio is not applied. If zero, 20.
	MinRequests int `yaml:"min_requests"`
	// Window is the rolling window over which FailureRatio is counted. If
	// zero, 2s.
	Window core.Duration `yaml:"window"`
	// OpenTimeout is how long the breaker stays open before it lets one
	// probe call through (half-open); a successful probe closes it. If
	// zero, 500ms: while Redis is down one request in each 500 ms pays the
	// call Timeout, and decisions resume within about 500 ms of Redis'
	// return.
	OpenTimeout core.Duration `yaml:"open_timeout"`
}

// RedisModes are the accepted values of redis.mode.
var Modes = []string{"standalone", "sentinel", "cluster"}

// keyPrefixRe keeps the key prefix printable and free of hash-tag braces
// (the plugin adds its own hash tags).
var keyPrefixRe = regexp.MustCompile(`^[A-Za-z0-9_.:\-/]{1,64}$`)

// PipelineOn reports whether decisions are batched into pipelines.
func (x *Config) PipelineOn() bool { return x.Pipeline == nil || *x.Pipeline }

// unixPrefix starts an address that names a Unix socket.
const unixPrefix = "unix:"

// maxSocketPath is the longest Unix socket path Linux accepts (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// Dial returns the network and address of the standalone server (mode
// standalone): "unix" and the socket's path for a "unix:" address, else
// "tcp" and host:port.
func (x *Config) Dial() (network, addr string) {
	if len(x.Addrs) == 0 {
		return "tcp", ""
	}
	if p, ok := strings.CutPrefix(x.Addrs[0], unixPrefix); ok && (x.Mode == "standalone" || x.Mode == "") {
		return "unix", p
	}
	return "tcp", x.Addrs[0]
}

// MultiplexOn reports whether the batcher uses the multiplexed connection.
func (x *Config) MultiplexOn() bool {
	return x.PipelineOn() && x.Mode != "cluster" && (x.Multiplex == nil || *x.Multiplex)
}

func (x *Config) ApplyDefaults() {
	if x.Mode == "" {
		x.Mode = "standalone"
	}
	if len(x.Addrs) == 0 {
		x.Addrs = []string{"127.0.0.1:6379"}
	}
	if x.KeyPrefix == "" {
		x.KeyPrefix = "edge:rl:"
	}
	if x.Timeout == 0 {
		x.Timeout = core.Duration(20 * time.Millisecond)
	}
	if x.DialTimeout == 0 {
		x.DialTimeout = core.Duration(250 * time.Millisecond)
	}
	if x.PoolSize == 0 {
		x.PoolSize = 64
	}
	if x.MinIdleConns == 0 {
		x.MinIdleConns = 4
	}
	if x.PipelineWorkers == 0 {
		x.PipelineWorkers = 4
	}
	if x.PipelineMaxBatch == 0 {
		x.PipelineMaxBatch = 64
	}
	if x.PipelineQueue == 0 {
		x.PipelineQueue = 1024
	}
	b := &x.Breaker
	if b.ConsecutiveFailures == 0 {
		b.ConsecutiveFailures = 5
	}
	if b.MinFailingTime == 0 {
		b.MinFailingTime = core.Duration(100 * time.Millisecond)
	}
	if b.FailureRatio == 0 {
		b.FailureRatio = 0.5
	}
	if b.MinRequests == 0 {
		b.MinRequests = 20
	}
	if b.Window == 0 {
		b.Window = core.Duration(2 * time.Second)
	}
	if b.OpenTimeout == 0 {
		b.OpenTimeout = core.Duration(500 * time.Millisecond)
	}
	if x.OverrideCacheTTL == 0 {
		x.OverrideCacheTTL = core.Duration(10 * time.Second)
	}
	if x.OverrideCacheSize == 0 {
		x.OverrideCacheSize = 10000
	}
	if x.LocalMaxKeys == 0 {
		x.LocalMaxKeys = 100000
	}
	if x.NearLimitRatio == 0 {
		x.NearLimitRatio = 0.8
	}
}

func (x *Config) Validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, core.Fieldf("redis."+field, format, args...))
	}
	switch x.Mode {
	case "standalone":
		if len(x.Addrs) != 1 {
			bad("addrs", "must hold exactly one address in standalone mode, got %d", len(x.Addrs))
		}
	case "sentinel":
		if x.MasterName == "" {
			bad("master_name", "is required in sentinel mode")
		}
	case "cluster":
		if x.DB != 0 {
			bad("db", "must be 0 in cluster mode (Config Cluster has only database 0), got %d", x.DB)
		}
	default:
		bad("mode", "must be one of %s, got %q", strings.Join(Modes, ", "), x.Mode)
	}
	if network, path := x.Dial(); network == "unix" {
		switch {
		case !filepath.IsAbs(path):
			bad("addrs[0]", "a Unix socket must be an absolute path (unix:/path/to/redis.sock), got %q", x.Addrs[0])
		case len(path) > maxSocketPath:
			bad("addrs[0]", "a Unix socket path must be at most %d bytes (the kernel's limit), got %d", maxSocketPath, len(path))
		case x.TLS.Enabled:
			bad("tls.enabled", "must be false with a Unix socket address (Redis serves TLS on TCP ports only)")
		}
	} else {
		for i, a := range x.Addrs {
			if strings.HasPrefix(a, unixPrefix) {
				bad(fmt.Sprintf("addrs[%d]", i), "a Unix socket is only allowed in standalone mode, got %q in %s mode", a, x.Mode)
			}
		}
		errs = append(errs, core.CheckAddrs("redis", x.Addrs)...)
	}
	if x.Multiplex != nil && *x.Multiplex {
		if x.Mode == "cluster" {
			bad("multiplex", "is not available in cluster mode")
		} else if !x.PipelineOn() {
			bad("multiplex", "needs pipeline on")
		}
	}
	if x.Mode != "sentinel" && (x.SentinelUsername != "" || x.SentinelPassword != "") {
		bad("sentinel_password", "is only used in sentinel mode")
	}
	if x.DB < 0 || x.DB > 15 {
		bad("db", "must be between 0 and 15, got %d", x.DB)
	}
	if x.Username != "" && x.Password == "" {
		bad("password", "is required when username is set")
	}
	errs = append(errs, x.TLS.Validate("redis")...)
	if !keyPrefixRe.MatchString(x.KeyPrefix) {
		bad("key_prefix", "must be 1 to 64 characters of A-Z a-z 0-9 _ . : - /, got %q", x.KeyPrefix)
	}
	if x.Timeout < core.Duration(time.Millisecond) || x.Timeout > core.Duration(time.Second) {
		bad("timeout", "must be between 1ms and 1s (it is paid by requests while Redis is slow), got %s", x.Timeout)
	}
	if x.DialTimeout < core.Duration(time.Millisecond) || x.DialTimeout > core.Duration(30*time.Second) {
		bad("dial_timeout", "must be between 1ms and 30s, got %s", x.DialTimeout)
	}
	if x.PoolSize < 1 || x.PoolSize > 10000 {
		bad("pool_size", "must be between 1 and 10000, got %d", x.PoolSize)
	}
	if x.MinIdleConns < -1 || x.MinIdleConns > x.PoolSize {
		bad("min_idle_conns", "must be -1 (none) or between 1 and pool_size (%d), got %d", x.PoolSize, x.MinIdleConns)
	}
	if x.PipelineWorkers < 1 || x.PipelineWorkers > 256 {
		bad("pipeline_workers", "must be between 1 and 256, got %d", x.PipelineWorkers)
	}
	if x.PipelineMaxBatch < 1 || x.PipelineMaxBatch > 1024 {
		bad("pipeline_max_batch", "must be between 1 and 1024, got %d", x.PipelineMaxBatch)
	}
	if x.PipelineQueue < 1 || x.PipelineQueue > 1000000 {
		bad("pipeline_queue", "must be between 1 and 1000000, got %d", x.PipelineQueue)
	}
	b := x.Breaker
	if b.ConsecutiveFailures < 1 {
		bad("breaker.consecutive_failures", "must be >= 1, got %d", b.ConsecutiveFailures)
	}
	if b.MinFailingTime < 0 || b.MinFailingTime > core.Duration(time.Minute) {
		bad("breaker.min_failing_time", "must be between 0s and 1m, got %s", b.MinFailingTime)
	}
	if b.FailureRatio <= 0 || b.FailureRatio > 1 {
		bad("breaker.failure_ratio", "must be > 0 and <= 1, got %v", b.FailureRatio)
	}
	if b.MinRequests < 1 {
		bad("breaker.min_requests", "must be >= 1, got %d", b.MinRequests)
	}
	if b.Window < core.Duration(10*time.Millisecond) {
		bad("breaker.window", "must be >= 10ms, got %s", b.Window)
	}
	if b.OpenTimeout < core.Duration(10*time.Millisecond) || b.OpenTimeout > core.Duration(time.Minute) {
		bad("breaker.open_timeout", "must be between 10ms and 1m, got %s", b.OpenTimeout)
	}
	if x.OverrideCacheTTL < core.Duration(100*time.Millisecond) {
		bad("override_cache_ttl", "must be >= 100ms, got %s", x.OverrideCacheTTL)
	}
	if x.OverrideCacheSize < 1 {
		bad("override_cache_size", "must be >= 1, got %d", x.OverrideCacheSize)
	}
	if x.LocalMaxKeys < 1 {
		bad("local_max_keys", "must be >= 1, got %d", x.LocalMaxKeys)
	}
	if x.NearLimitRatio <= 0 || x.NearLimitRatio > 1 {
		bad("near_limit_ratio", "must be > 0 and <= 1, got %v", x.NearLimitRatio)
	}
	return errs
}
