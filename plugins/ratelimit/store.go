package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// slidingLog is the decision, atomic on the server: drop the entries that
// left the window, count, add this request if under the limit, and give
// the key the window as TTL, so that keys always expire (an allkeys-lru
// eviction can only cause a temporary undercount).
//
// KEYS[1] the counter (a sorted set of request ids scored by time in ms)
// ARGV[1] limit, ARGV[2] window in ms, ARGV[3] a member unique across
// runners and requests, ARGV[4] the time in ms or "" for Redis' own clock.
//
// It returns {allowed 0|1, entries in the window, ms until reset}: for
// an allowed request the whole window (the quota is fully back one window
// after the newest entry), for a rejected one the time until the oldest
// entry leaves the window and frees a slot (Retry-After). Only rejections
// pay for the ZRANGE.
//
// The time is Redis' (TIME) in production: every runner of every gateway
// node then judges a key against one clock, so runner clock skew can
// neither stretch nor shrink a window. Scripts may call TIME since Redis 5
// (effects replication), and a key lives on one server, so one clock per
// key also holds in Cluster. After a Sentinel failover the new master's
// clock takes over; NTP-level skew between them shifts at most the entries
// already in the window by that skew. ARGV[4] exists for tests, which move
// time instead of sleeping.
const slidingLogSrc = `
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, window)
local reset = window
if allowed == 0 then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then
    reset = tonumber(oldest[2]) + window - now
  end
end
return {allowed, count, reset}
`

var slidingLog = redis.NewScript(slidingLogSrc)

// verdict is Redis' answer for one request.
type verdict struct {
	allowed bool
	count   int64
	reset   time.Duration
}

func parseVerdict(v any) (verdict, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return verdict{}, fmt.Errorf("decode script reply: want 3 integers, got %T %v", v, v)
	}
	var n [3]int64
	for i := range a {
		x, ok := a[i].(int64)
		if !ok {
			return verdict{}, fmt.Errorf("decode script reply: element %d is %T", i, a[i])
		}
		n[i] = x
	}
	return verdict{allowed: n[0] == 1, count: n[1], reset: time.Duration(n[2]) * time.Millisecond}, nil
}

// newClient builds the go-redis client of the configured topology. It does
// not dial: connections are made by the pool in the background or on the
// first call.
func newClient(cfg Config) (redis.UniversalClient, error) {
	tlsConf, err := cfg.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("redis %w", err)
	}
	minIdle := cfg.MinIdleConns
	if minIdle < 0 {
		minIdle = 0
	}
	o := &redis.UniversalOptions{
		Addrs:            cfg.Addrs,
		DB:               cfg.DB,
		Username:         cfg.Username,
		Password:         cfg.Password,
		SentinelUsername: cfg.SentinelUsername,
		SentinelPassword: cfg.SentinelPassword,
		MasterName:       cfg.MasterName,
		ClientName:       "apisix-edge-ratelimit",
		// No retries: a request has one short deadline, and the breaker,
		// not a retry loop, decides when Redis is worth asking again.
		MaxRetries:    -1,
		DialerRetries: 1,
		DialTimeout:   cfg.DialTimeout.D(),
		ReadTimeout:   cfg.Timeout.D(),
		WriteTimeout:  cfg.Timeout.D(),
		// Each call's context deadline bounds the whole call.
		ContextTimeoutEnabled: true,
		PoolSize:              cfg.PoolSize,
		MinIdleConns:          minIdle,
		PoolTimeout:           cfg.Timeout.D(),
		TLSConfig:             tlsConf,
		// RESP2: nothing here uses RESP3 push notifications, and on RESP3
		// go-redis peeks the socket for pending pushes before commands (a
		// syscall and ~10% of the CPU of a decision when profiled).
		Protocol: 2,
		// CLIENT SETINFO and the maintenance-notification handshake are
		// extra round trips on every new connection, worth nothing here.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch cfg.Mode {
	case "cluster":
		return redis.NewClusterClient(o.Cluster()), nil
	case "sentinel":
		return redis.NewFailoverClient(o.Failover()), nil
	default:
		return redis.NewClient(o.Simple()), nil
	}
}

// isAvailabilityError tells whether err says something about Redis'
// health. A caller's cancellation does not, nor does a decision the
// batcher could not send while its workers were making progress (a local
// overload: a healthy Redis under saturation must not open the breaker).
func isAvailabilityError(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errOverloaded)
}
