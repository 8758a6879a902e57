// Package ratelimit is the L1 rate limiter of the gateway: a sliding log
// per key in Redis, decided by one atomic script per request, behind a
// circuit breaker. While Redis is healthy the limit is exact; while it is
// down, slow or out of memory each route's fail_mode decides (open, closed
// or local), without a Redis round trip once the breaker is open, and the
// limiter recovers by itself. See docs/ratelimit.md.
package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// PluginName is the name routes use in their ext-plugin conf.
const PluginName = "ratelimit"

// BackendName is the Redis entry in /status.
const BackendName = "redis"

// Response headers, named in Go's canonical form, which is also what goes
// on the wire (header names are case-insensitive: X-RateLimit-Limit and
// X-Ratelimit-Limit are the same header). They are written straight into
// the header map (see headerWriter).
const (
	hdrLimit       = "X-Ratelimit-Limit"
	hdrRemaining   = "X-Ratelimit-Remaining"
	hdrReset       = "X-Ratelimit-Reset"
	hdrStatus      = "X-Ratelimit-Status"
	hdrRetryAfter  = "Retry-After"
	hdrContentType = "Content-Type"
	statusDegrade  = "degraded"
)

// headerWriter sets headers whose names are already canonical, with one
// allocation for all their values. Header.Set canonicalizes the name on
// every call (an allocation for a mixed-case name) and allocates a slice
// per value: the profile of the over-limit path showed it as the plugin's
// largest cost.
type headerWriter struct {
	h    http.Header
	vals []string
}

func newHeaderWriter(h http.Header) headerWriter {
	return headerWriter{h: h, vals: make([]string, 0, 6)}
}

func (hw *headerWriter) set(name, value string) {
	hw.vals = append(hw.vals, value)
	n := len(hw.vals)
	hw.h[name] = hw.vals[n-1 : n : n]
}

// RateLimit is the ratelimit plugin. One per runner process; it owns the
// Redis client, the breaker and the in-memory caches.
type RateLimit struct {
	cfg    Config
	deps   core.Deps
	now    func() time.Time
	clock  bool // pass the runner's time to the script instead of Redis'
	client redis.UniversalClient
	batch  *batcher // nil with redis.pipeline false: one EVALSHA per decision
	cb     *gobreaker.CircuitBreaker[any]
	met    *metrics
	back   *core.Backend
	over   *overLimit
	local  *localLimiter
	tenant *overrides

	member  string // unique prefix of this runner's sliding-log members
	seq     atomic.Uint64
	brk     atomic.Int32 // breaker state as in the gauge: 0 closed, 1 half-open, 2 open
	base    time.Time    // origin of mono
	lastOK  atomic.Int64 // mono() of the last successful Redis call
	failing atomic.Bool  // the last Redis call failed
	started atomic.Bool
	counts  [numOutcomes]atomic.Int64 // by outcome
}

var _ plugin.Plugin = (*RateLimit)(nil)

// Option configures New.
type Option func(*RateLimit)

// WithClock makes the runner's clock now the time of every decision: the
// sliding log in Redis is scored by it instead of by Redis' TIME, and the
// local caches use it. For tests, which move time instead of sleeping.
func WithClock(now func() time.Time) Option {
	return func(r *RateLimit) { r.now, r.clock = now, true }
}

// New builds the plugin from the runner's redis section. It does not dial:
// connections are made in the background (Start) or by the first requests.
func New(cfg Config, deps core.Deps, opts ...Option) (*RateLimit, error) {
	client, err := newClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("new ratelimit: %w", err)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	r := &RateLimit{
		cfg:    cfg,
		deps:   deps,
		now:    time.Now,
		client: client,
		met:    newMetrics(deps.Metrics),
		back:   deps.Status.Backend(BackendName),
		over:   newOverLimit(cfg.LocalMaxKeys),
		local:  newLocalLimiter(cfg.LocalMaxKeys),
		member: hex.EncodeToString(id) + ":",
	}
	r.base = time.Now()
	r.lastOK.Store(math.MinInt64 / 2) // no success yet: failures at start count at once
	// go-redis logs pool failures (one line per failed dial) on stderr,
	// which APISIX copies into error.log: fold them into the throttle.
	redis.SetLogger(goRedisLog{deps.Throttle})
	for _, o := range opts {
		o(r)
	}
	r.tenant = newOverrides(r, cfg.OverrideCacheSize, cfg.OverrideCacheTTL.D())
	b := cfg.Breaker
	r.cb = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Name:         BackendName,
		MaxRequests:  1,
		Interval:     b.Window.D(),
		BucketPeriod: b.Window.D() / 10,
		Timeout:      b.OpenTimeout.D(),
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if c.ConsecutiveFailures >= uint32(b.ConsecutiveFailures) &&
				time.Duration(r.mono()-r.lastOK.Load()) >= b.MinFailingTime.D() {
				return true
			}
			return c.Requests >= uint32(b.MinRequests) && float64(c.TotalFailures) >= b.FailureRatio*float64(c.Requests)
		},
		IsExcluded:    func(err error) bool { return err != nil && !isAvailabilityError(err) },
		OnStateChange: r.breakerChanged,
	})
	r.back.SetDetail("mode", cfg.Mode)
	r.back.SetDetail("addrs", cfg.Addrs)
	r.back.SetDetail("breaker", "closed")
	r.back.SetDetail("pipeline", cfg.PipelineOn())
	if cfg.PipelineOn() {
		// Goroutines only: they wait on the queue and dial nothing.
		r.batch = newBatcher(client, cfg.Timeout.D(), cfg.PipelineWorkers, cfg.PipelineMaxBatch, cfg.PipelineQueue, r.met)
	}
	deps.Status.Plugin(PluginName, r.statusCounters)
	return r, nil
}

// Name is the plugin name.
func (r *RateLimit) Name() string { return PluginName }

// FailPolicy is FailClosed: an invalid conf answers 500 rather than turn
// rate limiting off.
func (r *RateLimit) FailPolicy() core.FailPolicy { return core.FailClosed }

// ParseConf validates a route's conf; see Conf.
func (r *RateLimit) ParseConf(in []byte) (any, error) {
	c, err := ParseConf(in)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Start connects in the background: a PING and a SCRIPT LOAD, so that the
// first requests find a warm pool and a cached script. It returns at once.
func (r *RateLimit) Start(ctx context.Context) {
	if !r.started.CompareAndSwap(false, true) {
		return
	}
	go func() {
		wctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout.D()+time.Second)
		defer cancel()
		err := r.client.Ping(wctx).Err()
		if err == nil {
			err = r.loadScript(wctx)
		}
		if err != nil {
			r.deps.Throttle.Warn("ratelimit:redis", "ratelimit: redis not reachable at start: decisions follow each route's fail_mode until it is", err)
			r.back.Set(core.StateDown, fmt.Errorf("ratelimit start: %w", err))
			return
		}
		r.back.Set(core.StateOK, nil)
	}()
}

// loadScript caches the script on every node (every master in Cluster).
func (r *RateLimit) loadScript(ctx context.Context) error {
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return slidingLog.Load(ctx, c).Err()
		})
	}
	return slidingLog.Load(ctx, r.client).Err()
}

// Shutdown stops the batcher's workers (after their round trips, each
// bounded by redis.timeout) and closes the Redis client.
func (r *RateLimit) Shutdown(context.Context) error {
	if r.batch != nil {
		r.batch.close()
	}
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("shutdown ratelimit: %w", err)
	}
	return nil
}

// ResponseFilter does nothing: the limiter decides before the upstream.
func (r *RateLimit) ResponseFilter(any, pkgHTTP.Response) {}

// RequestFilter decides one request.
func (r *RateLimit) RequestFilter(conf any, w http.ResponseWriter, req pkgHTTP.Request) {
	c, ok := conf.(*Conf)
	if !ok {
		return // the guard answers invalid confs; nothing else reaches here
	}
	key, limit, window := r.identify(c, req)
	now := r.now()
	if until, ok := r.over.until(key, now); ok {
		// Redis said this key has no slot before until, so the answer is
		// exact; while Redis is failing (last call failed, or the breaker
		// is not closed) it is still marked degraded, so that every answer
		// during an outage carries the mark.
		r.count(outRejectedCached)
		r.reject(c, w, limit, 0, until.Sub(now), r.brk.Load() != 0 || r.failing.Load())
		return
	}
	v, err := r.eval(key, limit, window, now)
	if err != nil {
		r.degraded(c, w, req, key, limit, window, now, err)
		return
	}
	if !v.allowed {
		r.over.set(key, now.Add(v.reset))
		r.count(outRejected)
		r.reject(c, w, limit, 0, v.reset, false)
		return
	}
	r.count(outAllowed)
	r.allow(c, req, limit, int(int64(limit)-v.count), v.reset, false)
}

// Recovered answers a request after a panic in RequestFilter by the
// route's fail_mode, as if Redis could not decide.
func (r *RateLimit) Recovered(conf any, w http.ResponseWriter, req pkgHTTP.Request) {
	c, ok := conf.(*Conf)
	if !ok {
		return
	}
	switch c.failMode {
	case failClosed:
		r.count(outDegradedClosed)
		r.unavailable(c, w)
	default: // the local limiter is what may have panicked: allow
		r.count(outDegradedOpen)
		if c.show {
			h := newHeaderWriter(req.RespHeader())
			h.set(hdrStatus, statusDegrade)
		}
	}
}

// identify returns the counter key and the effective limit and window.
func (r *RateLimit) identify(c *Conf, req pkgHTTP.Request) (key string, limit int, window time.Duration) {
	kind, val := c.keyKind, ""
	switch c.keyKind {
	case keyHeader:
		val = req.Header().Get(c.keyName)
	case keyArg:
		val = req.Args().Get(c.keyName)
	case keyVar:
		if b, err := req.Var(c.keyName); err == nil {
			val = string(b)
		}
	case keyConsumer:
		val = req.Header().Get(core.ConsumerHeader)
	}
	if c.keyKind != keyAddr && val == "" {
		r.met.fallbacks.Inc()
	}
	if val == "" {
		kind = keyAddr
		if ip := req.SrcIP(); ip != nil {
			val = ip.String()
		} else {
			val = "unknown"
		}
	}
	limit, window = c.Limit, c.window
	tenant := ""
	if c.TenantHeader != "" {
		if t := req.Header().Get(c.TenantHeader); t != "" {
			tenant = boundKey(t)
			if tenant == t { // odd or huge tenant ids are hashed and never overridden
				if o, ok := r.tenant.get(c.Name, t); ok {
					limit = o.limit
					if o.window > 0 {
						window = o.window
					}
				}
			}
		}
	}
	return counterKey(r.cfg.KeyPrefix, c.ns, tenant, kind, boundKey(val)), limit, window
}

// eval runs the sliding-log script through the breaker, within the call
// timeout.
func (r *RateLimit) eval(key string, limit int, window time.Duration, now time.Time) (verdict, error) {
	nowArg := ""
	if r.clock {
		nowArg = strconv.FormatInt(now.UnixMilli(), 10)
	}
	member := r.member + strconv.FormatUint(r.seq.Add(1), 36)
	keys, args := []string{key}, []any{limit, window.Milliseconds(), member, nowArg}
	var res any
	var err error
	if r.batch != nil {
		// The batcher holds the deadline: each caller waits on its own timer.
		res, err = r.call(func() (any, error) { return r.batch.do(keys, args) })
	} else {
		res, err = r.callCtx(func(ctx context.Context) (any, error) {
			return slidingLog.Run(ctx, r.client, keys, args...).Result()
		})
	}
	if err != nil {
		return verdict{}, err
	}
	return parseVerdict(res)
}

// callCtx is call for a direct Redis call, given its own deadline.
func (r *RateLimit) callCtx(fn func(ctx context.Context) (any, error)) (any, error) {
	return r.call(func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout.D())
		defer cancel()
		return fn(ctx)
	})
}

// call runs one Redis call, which must return within redis.timeout,
// through the breaker and records its latency and the backend state.
func (r *RateLimit) call(fn func() (any, error)) (any, error) {
	var start time.Time
	res, err := r.cb.Execute(func() (any, error) {
		start = time.Now()
		v, err := fn()
		if err == redis.Nil {
			err = nil
		}
		return v, err
	})
	switch {
	case err == nil:
		r.lastOK.Store(r.mono())
		if r.failing.Load() {
			r.failing.Store(false)
		}
		r.met.redisOK.Observe(time.Since(start).Seconds())
		if r.brk.Load() == 0 { // a success in half-open has just closed it
			r.back.Set(core.StateOK, nil)
		}
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		// no Redis round trip was made
	case errors.Is(err, errOverloaded):
		// not sent: the runner, not Redis, was short of capacity
		r.deps.Throttle.Warn("ratelimit:batcher", "ratelimit: redis batcher overloaded: decisions follow each route's fail_mode", err)
	default:
		r.met.redisErr.Observe(time.Since(start).Seconds())
		r.failing.Store(true)
		r.deps.Throttle.Warn("ratelimit:redis", "ratelimit: redis call failed: decisions follow each route's fail_mode", err)
		// Only the breaker moves the /status state (closed ok, half-open
		// degraded, open down): single timeouts would make it flap and log
		// a line each. The error is recorded as the last error.
		r.back.SetError(err)
	}
	return res, err
}

// goRedisLog routes go-redis' own log lines into the log throttle.
type goRedisLog struct{ t *core.LogThrottle }

func (l goRedisLog) Printf(_ context.Context, format string, v ...any) {
	l.t.Warn("ratelimit:go-redis", "ratelimit: go-redis", fmt.Errorf(format, v...))
}

// mono is the monotonic time since New, in ns (the breaker uses the real
// clock: gobreaker has no clock to inject).
func (r *RateLimit) mono() int64 { return int64(time.Since(r.base)) }

// degraded answers a request Redis could not decide, by fail_mode.
func (r *RateLimit) degraded(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, key string, limit int, window time.Duration, now time.Time, err error) {
	r.deps.Throttle.Warn("ratelimit:degraded", "ratelimit FAILING OPEN/CLOSED/LOCAL per route fail_mode: redis cannot decide", err)
	switch c.failMode {
	case failClosed:
		r.count(outDegradedClosed)
		r.unavailable(c, w)
	case failLocal:
		allowed, remaining, reset := r.local.decide(key, limit, window, now)
		if !allowed {
			r.count(outLocalRejected)
			r.reject(c, w, limit, 0, reset, true)
			return
		}
		r.count(outLocalAllowed)
		r.allow(c, req, limit, remaining, reset, true)
	default:
		r.count(outDegradedOpen)
		if c.show {
			h := newHeaderWriter(req.RespHeader())
			h.set(hdrLimit, c.limitText(limit))
			h.set(hdrStatus, statusDegrade)
		}
	}
}

// allow adds the limit headers to the client's response; the request goes
// on to the upstream.
func (r *RateLimit) allow(c *Conf, req pkgHTTP.Request, limit, remaining int, reset time.Duration, degraded bool) {
	if !c.show {
		return
	}
	h := newHeaderWriter(req.RespHeader())
	h.set(hdrLimit, c.limitText(limit))
	h.set(hdrRemaining, strconv.Itoa(max(remaining, 0)))
	h.set(hdrReset, strconv.FormatInt(ceilSeconds(reset), 10))
	if degraded {
		h.set(hdrStatus, statusDegrade)
	}
}

// reject answers with the conf's rejection (a Stop: the upstream is not
// called).
func (r *RateLimit) reject(c *Conf, w http.ResponseWriter, limit, remaining int, reset time.Duration, degraded bool) {
	h := newHeaderWriter(w.Header())
	secs := strconv.FormatInt(ceilSeconds(reset), 10)
	h.set(hdrRetryAfter, secs)
	if c.show {
		h.set(hdrLimit, c.limitText(limit))
		h.set(hdrRemaining, strconv.Itoa(remaining))
		h.set(hdrReset, secs)
		if degraded {
			h.set(hdrStatus, statusDegrade)
		}
	}
	h.set(hdrContentType, "application/json")
	w.WriteHeader(c.RejectedCode)
	_, _ = w.Write(c.body)
}

// unavailable is fail_mode "closed": 503, retry once the breaker probes.
func (r *RateLimit) unavailable(c *Conf, w http.ResponseWriter) {
	h := newHeaderWriter(w.Header())
	h.set(hdrRetryAfter, strconv.FormatInt(ceilSeconds(r.cfg.Breaker.OpenTimeout.D()), 10))
	if c.show {
		h.set(hdrStatus, statusDegrade)
	}
	h.set(hdrContentType, "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(unavailableBody)
}

// ceilSeconds rounds d up to whole seconds, at least 1 (a Retry-After of 0
// invites an immediate retry storm).
func ceilSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

func (r *RateLimit) count(o outcome) {
	r.met.decisions[o].Inc()
	r.counts[o].Add(1)
}

// breakerChanged is gobreaker's state hook: metrics, /status and one log
// line per change (the periodic summaries come from the throttle).
func (r *RateLimit) breakerChanged(_ string, from, to gobreaker.State) {
	var label string
	switch to {
	case gobreaker.StateClosed:
		label = "closed"
		r.met.breaker.Set(0)
		r.brk.Store(0)
		r.back.Set(core.StateOK, nil)
		r.deps.Log.Warn("ratelimit: redis breaker closed: decisions are made by Redis again", zap.String("from", from.String()))
	case gobreaker.StateHalfOpen:
		label = "half_open"
		r.met.breaker.Set(1)
		r.brk.Store(1)
		r.back.Set(core.StateDegraded, nil)
	case gobreaker.StateOpen:
		label = "open"
		r.met.breaker.Set(2)
		r.brk.Store(2)
		r.back.Set(core.StateDown, errors.New("circuit breaker open"))
		if from == gobreaker.StateClosed {
			r.deps.Log.Error("ratelimit: redis breaker open: FAILING OPEN (routes with fail_mode closed answer 503, local limit per runner); no Redis calls until a probe succeeds",
				zap.Duration("probe_after", r.cfg.Breaker.OpenTimeout.D()))
		}
	}
	r.met.transitions.WithLabelValues(label).Inc()
	r.back.SetDetail("breaker", label)
}

// statusCounters are the plugin's facts in /status.
func (r *RateLimit) statusCounters() any {
	dec := make(map[string]int64, numOutcomes)
	for o, name := range outcomeNames {
		dec[name] = r.counts[o].Load()
	}
	return map[string]any{
		"decisions":         dec,
		"breaker":           r.cb.State().String(),
		"over_limit_cached": r.over.len(),
		"local_keys":        r.local.len(),
		"tenant_overrides":  r.tenant.len(),
		"batcher":           r.batcherCounters(),
	}
}

// batcherCounters are the batcher's facts in /status (nil when off).
func (r *RateLimit) batcherCounters() any {
	b := r.batch
	if b == nil {
		return nil
	}
	return map[string]int64{
		"round_trips":      b.stats.roundTrips.Load(),
		"decisions_sent":   b.stats.sent.Load(),
		"queue_full":       b.stats.queueFull.Load(),
		"queue_timeout":    b.stats.queueTimeout.Load(),
		"noscript_retries": b.stats.noscript.Load(),
		"queued":           int64(len(b.queue)),
	}
}
