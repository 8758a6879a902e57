package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// decideSrc is the decision of every rule of one request, atomic on the
// server: each rule is judged first, and only if all of them have room for
// the request's cost is it counted, so a request rejected by one rule
// consumes nothing from the others. Keys always get a TTL, so that an
// allkeys-lru eviction can only cause a temporary undercount.
//
// KEYS[i] is rule i's counter; all keys of one request share a Cluster
// hash tag. ARGV[1] is the time in ms or "" for Redis' own clock, ARGV[2]
// a member unique across runners and requests (sliding_log), then four
// per rule: algorithm ("l" sliding_log, "s" sliding_window, "f"
// fixed_window), limit, window in ms, cost.
//
// Per algorithm:
//   - l: a sorted set of request ids scored by time in ms; entries older
//     than the window are dropped, the rest counted; a request of cost c
//     adds c entries. On a rejection, the time until enough entries leave
//     is read with one ZRANGE.
//   - f: a string "<window index> <count>", windows aligned to the epoch
//     (index = floor(now / window)); it expires at the window's end.
//   - s: a string "<window index> <count> <previous window's count>"; the
//     estimate is previous × (share of the sliding window still over the
//     previous fixed window) + count. It expires one window after the
//     current one ends (it is then the previous window).
//
// It returns {allowed 0|1, then per rule: fits 0|1, remaining, ms until
// reset}. For a rule with room, reset is when the quota is fully back; for
// one without, when the request's cost would fit (Retry-After).
//
// The time is Redis' (TIME) in production: every runner of every gateway
// node then judges a key against one clock, so runner clock skew can
// neither stretch nor shrink a window. Scripts may call TIME since Redis 5
// (effects replication), and the keys of one request live on one server,
// so one clock per request also holds in Cluster. ARGV[1] exists for
// tests, which move time instead of sleeping.
const decideSrc = `
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
end
local n = #KEYS
local out = {1}
local putv, putt
for i = 1, n do
  local key = KEYS[i]
  local b = (i - 1) * 4
  local alg = ARGV[b + 3]
  local limit = tonumber(ARGV[b + 4])
  local window = tonumber(ARGV[b + 5])
  local cost = tonumber(ARGV[b + 6])
  local fits, rem, reset
  if alg == 'l' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local c = redis.call('ZCARD', key)
    fits = cost <= limit - c
    reset = window
    if fits then
      rem = limit - c - cost
    else
      rem = limit - c
      if cost <= limit then
        local k = c + cost - limit - 1
        local o = redis.call('ZRANGE', key, k, k, 'WITHSCORES')
        if o[2] then reset = o[2] + window - now end
      end
    end
  else
    local idx = math.floor(now / window)
    local el = now - idx * window
    local c, p = 0, 0
    local v = redis.call('GET', key)
    if v then
      local sp1 = string.find(v, ' ', 1, true)
      local si = tonumber(string.sub(v, 1, sp1 - 1))
      local sp2 = string.find(v, ' ', sp1 + 1, true)
      if si == idx then
        if sp2 then
          c = tonumber(string.sub(v, sp1 + 1, sp2 - 1))
          p = tonumber(string.sub(v, sp2 + 1))
        else
          c = tonumber(string.sub(v, sp1 + 1))
        end
      elseif si == idx - 1 then
        if sp2 then p = tonumber(string.sub(v, sp1 + 1, sp2 - 1)) else p = tonumber(string.sub(v, sp1 + 1)) end
      end
    end
    if alg == 'f' then
      fits = cost <= limit - c
      reset = window - el
      if fits then
        rem = limit - c - cost
        if not putv then putv, putt = {}, {} end
        local nc = c + cost
        if nc < 1e14 then putv[i] = idx .. ' ' .. nc else putv[i] = string.format('%d %d', idx, nc) end
        putt[i] = window - el
      else
        rem = limit - c
      end
    else
      local est = p * (window - el) / window + c
      fits = cost <= limit - est
      if fits then
        rem = math.floor(limit - est - cost)
        reset = 2 * window - el
        if not putv then putv, putt = {}, {} end
        local nc = c + cost
        if nc < 1e14 and p < 1e14 then putv[i] = idx .. ' ' .. nc .. ' ' .. p else putv[i] = string.format('%d %d %d', idx, nc, p) end
        putt[i] = 2 * window - el
      else
        rem = math.floor(limit - est)
        local need = limit - cost - c
        if cost > limit then
          reset = window
        elseif need >= 0 then
          reset = math.ceil(window - need * window / p) - el
        else
          reset = window - el + math.ceil(window - (limit - cost) * window / c)
        end
        if reset < 1 then reset = 1 end
      end
    end
  end
  if rem < 0 then rem = 0 end
  local o = 3 * i - 1
  if fits then out[o] = 1 else out[o] = 0; out[1] = 0 end
  out[o + 1] = rem
  out[o + 2] = reset
end
if out[1] == 1 then
  for i = 1, n do
    local key = KEYS[i]
    local b = (i - 1) * 4
    if ARGV[b + 3] == 'l' then
      local cost = tonumber(ARGV[b + 6])
      if cost == 1 then
        redis.call('ZADD', key, now, ARGV[2])
      else
        local m = {}
        for j = 1, cost do
          m[2 * j - 1] = now
          m[2 * j] = ARGV[2] .. '.' .. j
        end
        redis.call('ZADD', key, unpack(m))
      end
      redis.call('PEXPIRE', key, ARGV[b + 5])
    else
      redis.call('SET', key, putv[i], 'PX', putt[i])
    end
  end
end
return out
`

var decideScript = redis.NewScript(decideSrc)

// ruleVerdict is Redis' answer for one rule.
type ruleVerdict struct {
	fits      bool
	remaining int64
	reset     time.Duration
}

// parseVerdict decodes the script's reply for n rules into v.
func parseVerdict(reply any, v []ruleVerdict) (allowed bool, err error) {
	a, ok := reply.([]any)
	if !ok || len(a) != 1+3*len(v) {
		return false, fmt.Errorf("decode script reply: want %d integers, got %T %.100v", 1+3*len(v), reply, reply)
	}
	for i := range a {
		if _, ok := a[i].(int64); !ok {
			return false, fmt.Errorf("decode script reply: element %d is %T", i, a[i])
		}
	}
	for i := range v {
		b := 1 + 3*i
		v[i] = ruleVerdict{fits: a[b].(int64) == 1, remaining: a[b+1].(int64), reset: time.Duration(a[b+2].(int64)) * time.Millisecond}
	}
	return a[0].(int64) == 1, nil
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
