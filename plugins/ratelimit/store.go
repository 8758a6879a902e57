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
// ARGV[1] is the time in ms or "" for Redis' own clock (sliding_log), ARGV[2]
// a member unique across runners and requests (sliding_log), then five per
// rule: algorithm ("l" sliding_log, "s" sliding_window, "f" fixed_window),
// limit, window in ms, cost, and the ms elapsed in the current window
// (O(1) rules; 0 for sliding_log). KEYS: one per rule, in order, and two
// for sliding_window (the current window's counter, then the previous
// one's). All keys of one request share a Cluster hash tag.
//
// Per algorithm:
//   - l: a sorted set of request ids scored by Redis' time in ms; entries
//     older than the window are dropped, the rest counted; a request of cost
//     c adds c entries. On a rejection, the time until enough entries leave
//     is read with one ZRANGE.
//   - f: an integer counter per window (its index, on the runner's clock,
//     is in the key name), expiring at the window's end.
//   - s: the same counters; the estimate is previous × (share of the sliding
//     window still over the previous window) + current. A counter expires
//     one window after its own ends (it is then the previous one).
//
// One O(1) rule alone takes a fast path: INCRBY first (PEXPIRE when the
// counter is new, GET of the previous counter for s) and DECRBY back when
// the request does not fit: one Redis call for most fixed_window decisions
// instead of a read and a write. It applies while limit + cost < 2^53, so
// that every count stays exact in a Lua number.
//
// It returns {allowed 0|1, then per rule: fits 0|1, remaining, ms until
// reset}. For a rule with room, reset is when the quota is fully back; for
// one without, when the request's cost would fit (Retry-After).
const decideSrc = `
local nargs = #ARGV
local n = (nargs - 2) / 5
local now = tonumber(ARGV[1])
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  end
  return now
end
if n == 1 and ARGV[3] ~= 'l' and tonumber(ARGV[4]) + tonumber(ARGV[6]) < 9007199254740992 then
  local alg = ARGV[3]
  local limit = tonumber(ARGV[4])
  local window = tonumber(ARGV[5])
  local cost = tonumber(ARGV[6])
  local el = tonumber(ARGV[7])
  local p = 0
  local ttl = window - el
  if alg == 's' then
    p = tonumber(redis.call('GET', KEYS[2]) or 0)
    ttl = ttl + window
  end
  local c = redis.call('INCRBY', KEYS[1], cost)
  if c == cost then redis.call('PEXPIRE', KEYS[1], ttl) end
  local before = c - cost
  local est = before
  if alg == 's' then est = p * (window - el) / window + before end
  if cost <= limit - est then
    return {1, 1, math.floor(limit - est - cost), ttl}
  end
  redis.call('DECRBY', KEYS[1], cost)
  local reset = window - el
  if alg == 's' then
    local need = limit - cost - before
    if cost > limit then
      reset = window
    elseif need >= 0 then
      reset = math.ceil(window - need * window / p) - el
    else
      reset = window - el + math.ceil(window - (limit - cost) * window / before)
    end
    if reset < 1 then reset = 1 end
  end
  local rem = math.floor(limit - est)
  if rem < 0 then rem = 0 end
  return {0, 0, rem, reset}
end
local out = {1}
local k = 1
local cur = {}
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local alg = ARGV[b + 1]
  local limit = tonumber(ARGV[b + 2])
  local window = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local key = KEYS[k]
  local fits, rem, reset
  if alg == 'l' then
    local t = clock()
    redis.call('ZREMRANGEBYSCORE', key, '-inf', t - window)
    local c = redis.call('ZCARD', key)
    fits = cost <= limit - c
    reset = window
    if fits then
      rem = limit - c - cost
    else
      rem = limit - c
      if cost <= limit then
        local j = c + cost - limit - 1
        local o = redis.call('ZRANGE', key, j, j, 'WITHSCORES')
        if o[2] then reset = o[2] + window - t end
      end
    end
    k = k + 1
  else
    local el = tonumber(ARGV[b + 5])
    local c, p = 0, 0
    if alg == 'f' then
      c = tonumber(redis.call('GET', key) or 0)
      k = k + 1
      fits = cost <= limit - c
      reset = window - el
      if fits then rem = limit - c - cost else rem = limit - c end
    else
      local v = redis.call('MGET', key, KEYS[k + 1])
      c, p = tonumber(v[1] or 0), tonumber(v[2] or 0)
      k = k + 2
      local est = p * (window - el) / window + c
      fits = cost <= limit - est
      if fits then
        rem = math.floor(limit - est - cost)
        reset = 2 * window - el
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
  k = 1
  for i = 1, n do
    local b = 2 + (i - 1) * 5
    local alg = ARGV[b + 1]
    local cost = tonumber(ARGV[b + 4])
    local key = KEYS[k]
    if alg == 'l' then
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
      redis.call('PEXPIRE', key, ARGV[b + 3])
      k = k + 1
    else
      local window = tonumber(ARGV[b + 3])
      local ttl = window - tonumber(ARGV[b + 5])
      if alg == 's' then ttl = ttl + window end
      if redis.call('INCRBY', key, cost) == cost then redis.call('PEXPIRE', key, ttl) end
      if alg == 's' then k = k + 2 else k = k + 1 end
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
		so := o.Simple()
		so.Network, so.Addr = cfg.Dial()
		return redis.NewClient(so), nil
	}
}

// isAvailabilityError tells whether err says something about Redis'
// health. A caller's cancellation does not, nor does a decision the
// batcher could not send while its workers were making progress (a local
// overload: a healthy Redis under saturation must not open the breaker).
func isAvailabilityError(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errOverloaded)
}
