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
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
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
	hdrPolicy      = "Ratelimit-Policy" // draft-ietf-httpapi-ratelimit-headers
	hdrRateLimit   = "Ratelimit"
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
	return headerWriter{h: h, vals: make([]string, 0, 8)}
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
	// counters: every master runs Redis 7.0 or later, so a lone O(1) rule
	// is decided by plain commands instead of the script (evalCounter).
	// Off until Start (or the first recovery) has checked the versions.
	counters  atomic.Bool
	versioned atomic.Bool // the versions were read
	hzWarned  atomic.Bool // the low-hz warning was logged (once a process)
	// Redis' clock for the sliding log by commands (evalLog): the offset
	// of Redis' TIME from this process' clock, read once a second.
	offset   atomic.Int64 // ns
	synced   atomic.Bool  // offset holds a reading
	stopSync chan struct{}
	stopOnce sync.Once
	cluster  bool // the client is a Cluster client

	syncMu   sync.Mutex
	syncers  map[time.Duration]*syncer // delayed sync, by interval (a new map on each change)
	syncView atomic.Pointer[map[time.Duration]*syncer]
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

// New builds the plugin from the runner's redis section. It does not wait
// on Redis: connections are made in the background (go-redis' pool opens
// min_idle_conns at once, the multiplexed connection is dialed, Start
// probes) or by the first requests.
func New(cfg Config, deps core.Deps, opts ...Option) (*RateLimit, error) {
	// go-redis logs pool failures (one line per failed dial) on stderr,
	// which APISIX copies into error.log: fold them into the throttle,
	// before the client's pool makes its first dials.
	redis.SetLogger(goRedisLog{deps.Throttle})
	client, err := newClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("new ratelimit: %w", err)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	r := &RateLimit{
		cfg:      cfg,
		deps:     deps,
		now:      time.Now,
		client:   client,
		met:      newMetrics(deps.Metrics),
		back:     deps.Status.Backend(BackendName),
		over:     newOverLimit(cfg.LocalMaxKeys),
		local:    newLocalLimiter(cfg.LocalMaxKeys),
		member:   hex.EncodeToString(id) + ":",
		stopSync: make(chan struct{}),
	}
	_, r.cluster = client.(*redis.ClusterClient)
	r.base = time.Now()
	r.lastOK.Store(math.MinInt64 / 2) // no success yet: failures at start count at once
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
	r.back.SetDetail("multiplex", cfg.MultiplexOn())
	if cfg.PipelineOn() {
		// Goroutines: the workers wait on the queue and dial nothing; the
		// multiplexed connection's dialer starts at once, in the background.
		var dialer *muxDialer
		if cfg.MultiplexOn() {
			if dialer, err = newMuxDialer(cfg); err != nil {
				return nil, err
			}
		}
		r.batch = newBatcher(client, dialer, cfg.Timeout.D(), cfg.PipelineWorkers, cfg.PipelineMaxBatch, cfg.PipelineQueue, r.met)
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
		if err == nil {
			r.checkVersions(wctx)
		}
		if !r.clock && !r.cluster { // in Cluster the script decides the sliding log
			go r.readRedisClock()
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
			if err := decideScript.Load(ctx, c).Err(); err != nil {
				return err
			}
			return syncScript.Load(ctx, c).Err()
		})
	}
	if err := decideScript.Load(ctx, r.client).Err(); err != nil {
		return err
	}
	return syncScript.Load(ctx, r.client).Err()
}

// readRedisClock reads Redis' TIME once a second until Shutdown and keeps
// its offset from this process' clock, taking the middle of the round
// trip as the moment Redis read it (so within half a round trip, and a
// reading whose round trip took over 5 ms is not kept unless none is
// held). The sliding log by commands stamps its entries with it, so that
// every runner stamps on the one clock the script reads (Redis TIME),
// whatever their hosts' clocks say.
func (r *RateLimit) readRedisClock() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout.D())
		t0 := time.Now()
		rt, err := r.client.Time(ctx).Result()
		t1 := time.Now()
		cancel()
		if err == nil && (t1.Sub(t0) < 5*time.Millisecond || !r.synced.Load()) {
			mid := t0.Add(t1.Sub(t0) / 2)
			r.offset.Store(int64(rt.Sub(mid)))
			r.synced.Store(true)
		}
		select {
		case <-t.C:
		case <-r.stopSync:
			return
		}
	}
}

// checkVersions turns the counter commands on when every master runs
// Redis 7.0 or later (PEXPIRE NX). An error leaves them off and the
// versions unread, to be tried again when the breaker next closes.
func (r *RateLimit) checkVersions(ctx context.Context) {
	ok := true
	minHz := 0
	check := func(ctx context.Context, c redis.UniversalClient) error {
		s, err := c.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		ok = ok && redisAtLeast7(s)
		if hz := redisHz(s); hz > 0 && (minHz == 0 || hz < minHz) {
			minHz = hz
		}
		return nil
	}
	var err error
	if cc, isCluster := r.client.(*redis.ClusterClient); isCluster {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return check(ctx, c)
		})
	} else {
		err = check(ctx, r.client)
	}
	if err != nil {
		return
	}
	r.counters.Store(ok)
	r.versioned.Store(true)
	r.back.SetDetail("counter_commands", ok)
	if minHz > 0 {
		r.back.SetDetail("redis_hz", minHz)
		if stall := expireCycleCap(minHz); stall > r.cfg.Timeout.D() && r.hzWarned.CompareAndSwap(false, true) {
			r.deps.Log.Warn("ratelimit: redis hz is low for redis.timeout: one expire cycle may stall Redis past the timeout (a mass key expiry, e.g. a fixed_window boundary over many client keys), and every decision in flight then answers degraded; set hz 100 on Redis (docs/ratelimit.md, Redis settings)",
				zap.Int("hz", minHz), zap.Duration("expire_cycle_cap", stall), zap.Duration("timeout", r.cfg.Timeout.D()))
		}
	}
}

// redisHz reads configured_hz (hz on servers without it) from an INFO
// server reply; 0 if there is none.
func redisHz(info string) int {
	for _, field := range []string{"\nconfigured_hz:", "\nhz:"} {
		if _, v, found := strings.Cut(info, field); found {
			v, _, _ = strings.Cut(v, "\n")
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// expireCycleCap is the longest one active-expire cycle of Redis may run
// at hz (a quarter of each 1/hz second at the default
// active-expire-effort): the longest Redis answers nobody while it deletes
// a mass of expired keys.
func expireCycleCap(hz int) time.Duration { return time.Second / time.Duration(4*hz) }

// redisAtLeast7 reads redis_version from an INFO server reply.
func redisAtLeast7(info string) bool {
	_, v, found := strings.Cut(info, "redis_version:")
	if !found {
		return false
	}
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 7
}

// Shutdown flushes the delayed-sync increments, stops the batcher's workers (after their round trips, each
// bounded by redis.timeout) and closes the Redis client.
func (r *RateLimit) Shutdown(context.Context) error {
	r.stopOnce.Do(func() { close(r.stopSync) })
	r.closeSyncers()
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

// decision is one request's rules as judged: keys, effective limits and
// windows, costs, and Redis' verdicts.
type decision struct {
	n         int
	keys      [maxRules]string
	limit     [maxRules]int64
	window    [maxRules]time.Duration
	cost      [maxRules]int64
	v         [maxRules]ruleVerdict
	args      [2 + 5*maxRules]any
	skeys     [2 * maxRules]string // the script's keys: one per rule, two for sliding_window
	override  bool                 // rule 0's limit or window comes from a tenant override
	unlimited bool                 // a tenant override says "unlimited"
}

// RequestFilter decides one request.
func (r *RateLimit) RequestFilter(conf any, w http.ResponseWriter, req pkgHTTP.Request) {
	c, ok := conf.(*Conf)
	if !ok {
		return // the guard answers invalid confs; nothing else reaches here
	}
	var local decision
	d := &local
	r.identify(c, req, d)
	if d.unlimited {
		r.count(outUnlimited)
		return
	}
	shadow := c.shadow || r.cfg.Shadow
	now := r.now()
	if c.SyncInterval != 0 {
		r.syncDecide(c, w, req, d, now, shadow)
		return
	}
	// A key Redis said is full rejects without a Redis trip until it
	// frees: exact, as a rejection adds nothing. While Redis is failing
	// (last call failed, or the breaker is not closed) it is still marked
	// degraded, so that every answer during an outage carries the mark.
	worst, wait := -1, time.Duration(0)
	for i := 0; i < d.n; i++ {
		if until, ok := r.over.until(d.keys[i], now); ok && until.Sub(now) > wait {
			worst, wait = i, until.Sub(now)
		}
	}
	if worst >= 0 {
		if shadow {
			r.count(outShadowRejected)
			return
		}
		r.count(outRejectedCached)
		d.v[worst] = ruleVerdict{reset: wait}
		r.reject(c, w, d, worst, r.brk.Load() != 0 || r.failing.Load())
		return
	}
	// Only a Redis decision needs the decision on the heap (the batcher's
	// request refers to it): the local ones above keep it on the stack.
	r.decideRemote(c, w, req, onHeap(d), now, shadow)
}

// decideRemote decides d by Redis (RequestFilter's last step).
func (r *RateLimit) decideRemote(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, d *decision, now time.Time, shadow bool) {
	allowed, err := r.eval(c, d, now)
	if err != nil {
		r.degraded(c, w, req, d, now, err, shadow)
		return
	}
	if !allowed {
		worst := -1
		for i := 0; i < d.n; i++ {
			v := d.v[i]
			if v.fits {
				continue
			}
			if d.cost[i] == 1 {
				r.over.set(d.keys[i], now.Add(v.reset))
			}
			if worst < 0 || v.reset > d.v[worst].reset {
				worst = i
			}
		}
		if shadow {
			r.count(outShadowRejected)
			return
		}
		r.count(outRejected)
		r.reject(c, w, d, worst, false)
		return
	}
	r.count(outAllowed)
	r.nearLimit(d)
	if !shadow {
		r.allow(c, req, d, false)
	}
}

// nearLimit counts a decision that left a rule at or above the near-limit
// ratio of its limit (once per decision).
func (r *RateLimit) nearLimit(d *decision) {
	for i := 0; i < d.n; i++ {
		if float64(d.limit[i]-d.v[i].remaining) >= r.cfg.NearLimitRatio*float64(d.limit[i]) {
			r.met.nearLimit.Inc()
			return
		}
	}
}

// Recovered answers a request after a panic in RequestFilter by the
// route's fail_mode, as if Redis could not decide.
func (r *RateLimit) Recovered(conf any, w http.ResponseWriter, req pkgHTTP.Request) {
	c, ok := conf.(*Conf)
	if !ok {
		return
	}
	switch {
	case c.failMode == failClosed && !c.shadow && !r.cfg.Shadow:
		r.count(outDegradedClosed)
		r.unavailable(c, w)
	default: // the local limiter is what may have panicked: allow
		r.count(outDegradedOpen)
		if c.show && !c.shadow && !r.cfg.Shadow {
			h := newHeaderWriter(req.RespHeader())
			h.set(hdrStatus, statusDegrade)
		}
	}
}

// identify fills d with the request's counter keys and the effective
// limits, windows and costs of its rules.
func (r *RateLimit) identify(c *Conf, req pkgHTTP.Request, d *decision) {
	var vals [maxRules * maxKeyParts]string
	var fellBack bool
	addr := ""
	for i, p := range c.parts {
		v := ""
		switch p.kind {
		case keyHeader:
			v = req.Header().Get(p.name)
		case keyArg:
			v = req.Args().Get(p.name)
		case keyVar, keyRoute:
			if b, err := req.Var(p.name); err == nil {
				v = string(b)
			}
		case keyConsumer:
			// Only the identity an earlier plugin verified for this very
			// call: never a header, which a client could send itself.
			v, _ = core.VerifiedConsumer(req)
		case keyConst:
			vals[i] = "k:" + p.name
			continue
		}
		if v == "" {
			fellBack = fellBack || p.kind != keyAddr
			if addr == "" {
				addr = addrPart(req.SrcIP())
			}
			vals[i] = addr
			continue
		}
		vals[i] = string(p.kind) + ":" + boundKey(v)
	}
	if fellBack {
		r.met.fallbacks.Inc()
	}
	tenant := ""
	var o override
	var haveO bool
	if c.TenantHeader != "" {
		if t := req.Header().Get(c.TenantHeader); t != "" {
			tenant = boundKey(t)
			if tenant == t { // odd or huge tenant ids are hashed and never overridden
				o, haveO = r.tenant.get(c.Name, t)
			}
		}
	}
	if haveO && o.unlimited {
		d.unlimited = true
		return
	}
	// The hash tag {ns|tenant|common parts}, then each rule's suffix and
	// parts of its own. A lone rule's key is built in one string (the
	// common case: one allocation instead of two).
	n := len(r.cfg.KeyPrefix) + len(c.ns) + len(tenant) + 4
	for _, i := range c.common {
		n += len(vals[i]) + 1
	}
	lone := len(c.rules) == 1
	if lone {
		n += len(c.rules[0].suffix)
		for _, p := range c.rules[0].rest {
			n += len(vals[p]) + 1
		}
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(r.cfg.KeyPrefix)
	b.WriteByte('{')
	b.WriteString(c.ns)
	b.WriteByte('|')
	b.WriteString(tenant)
	b.WriteByte('|')
	for j, i := range c.common {
		if j > 0 {
			b.WriteByte('|')
		}
		b.WriteString(vals[i])
	}
	b.WriteByte('}')
	tagLen := b.Len()
	if lone {
		writeRuleKey(&b, &c.rules[0], &vals)
	}
	built := b.String()
	tag := built[:tagLen]
	var costs costMemo
	d.n = len(c.rules)
	for i := range c.rules {
		ru := &c.rules[i]
		key := tag
		if lone {
			key = built
		} else if ru.suffix != "" || len(ru.rest) > 0 {
			var kb strings.Builder
			kb.Grow(len(tag) + len(ru.suffix) + 32)
			kb.WriteString(tag)
			writeRuleKey(&kb, ru, &vals)
			key = kb.String()
		}
		d.keys[i] = key
		d.limit[i], d.window[i] = ru.limit, ru.window
		d.cost[i] = r.cost(c, ru, req, &costs)
	}
	if haveO {
		ru := &c.rules[0]
		maxL, maxW := int64(maxLimitO1), maxWindowO1
		if ru.alg == algSlidingLog {
			maxL, maxW = maxLimit, maxWindow
		}
		if o.limit > maxL || o.window > maxW {
			r.deps.Throttle.Warn("ratelimit:override", "ratelimit: tenant override ignored: beyond the bounds of the rule's algorithm",
				fmt.Errorf("override limit %d window %s for %s", o.limit, o.window, algName(ru.alg)))
			return
		}
		d.limit[0], d.override = o.limit, true
		if o.window > 0 {
			d.window[0] = o.window
		}
	}
}

// onHeap returns a heap copy of d.
func onHeap(d *decision) *decision {
	h := new(decision)
	*h = *d
	return h
}

// writeRuleKey writes what follows the hash tag in rule ru's key: its
// suffix and the key parts of its own.
func writeRuleKey(b *strings.Builder, ru *rule, vals *[maxRules * maxKeyParts]string) {
	b.WriteString(ru.suffix)
	for _, p := range ru.rest {
		b.WriteByte('|')
		b.WriteString(vals[p])
	}
}

// addrPart is the key part of a client address: "a:" and the address
// (IPv4 dotted, IPv6 in its RFC 5952 form, as net.IP.String writes them),
// in one allocation; "a:unknown" without one.
func addrPart(ip net.IP) string {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return "a:unknown"
	}
	var buf [2 + 39]byte
	return string(a.Unmap().AppendTo(append(buf[:0], "a:"...)))
}

// costMemo keeps the last cost source read for one request, so that rules
// sharing a source read it once (a variable is an ExtraInfo round trip).
type costMemo struct {
	src costSrc
	v   int64
	ok  bool
}

// cost is what the request consumes from rule ru.
func (r *RateLimit) cost(c *Conf, ru *rule, req pkgHTTP.Request, m *costMemo) int64 {
	if ru.cost.fixed > 0 {
		return ru.cost.fixed
	}
	if m.ok && m.src == ru.cost {
		return m.v
	}
	s := ""
	if ru.cost.kind == 'h' {
		s = req.Header().Get(ru.cost.name)
	} else if b, err := req.Var(ru.cost.name); err == nil {
		s = string(b)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	switch {
	case err != nil || n < 1:
		// Missing or invalid: one unit, as a request without cost.
		r.met.costFallback.Inc()
		n = 1
	case n > c.MaxCost:
		n = c.MaxCost
	}
	*m = costMemo{src: ru.cost, v: n, ok: true}
	return n
}

func algName(a algo) string {
	for n, x := range algoNames {
		if x == a {
			return n
		}
	}
	return string(a)
}

// eval runs the decision script for every rule of d through the breaker,
// within the call timeout, and fills d.v.
func (r *RateLimit) eval(c *Conf, d *decision, now time.Time) (bool, error) {
	if d.n == 1 && r.counters.Load() {
		switch {
		case c.rules[0].alg != algSlidingLog && d.limit[0]+d.cost[0] < 1<<53:
			return r.evalCounter(c.rules[0].alg == algSlidingWindow, d, now)
		case c.rules[0].alg == algSlidingLog && !r.cluster && (r.clock || r.synced.Load()):
			return r.evalLog(d, now)
		}
	}
	nowArg := ""
	if r.clock {
		nowArg = strconv.FormatInt(now.UnixMilli(), 10)
	}
	member := ""
	if c.anyLog {
		member = r.member + strconv.FormatUint(r.seq.Add(1), 36)
	}
	args := d.args[:0]
	args = append(args, nowArg, member)
	keys := d.skeys[:0]
	ms := now.UnixMilli()
	for i := 0; i < d.n; i++ {
		ru := &c.rules[i]
		limit, window, cost := ru.argLimit, ru.argWindow, ru.argCost
		if i == 0 && d.override {
			limit, window = d.limit[0], d.window[0].Milliseconds()
		}
		if cost == nil {
			cost = d.cost[i]
		}
		if ru.alg == algSlidingLog {
			keys = append(keys, d.keys[i])
			args = append(args, ru.argAlg, limit, window, cost, argZero)
			continue
		}
		// The O(1) algorithms count in one key per window, named by the
		// window's index on the runner's clock (see windowKey).
		wms := d.window[i].Milliseconds()
		idx := ms / wms
		keys = append(keys, windowKey(d.keys[i], idx))
		if ru.alg == algSlidingWindow {
			keys = append(keys, windowKey(d.keys[i], idx-1))
		}
		args = append(args, ru.argAlg, limit, window, cost, ms%wms)
	}
	var res any
	var err error
	if r.batch != nil {
		// The batcher holds the deadline: each caller waits on its own timer.
		res, err = r.call(func() (any, error) { return r.batch.do(keys, args) })
	} else {
		res, err = r.callCtx(func(ctx context.Context) (any, error) {
			return decideScript.Run(ctx, r.client, keys, args...).Result()
		})
	}
	if err != nil {
		return false, err
	}
	return parseVerdict(res, d.v[:d.n])
}

// evalCounter decides one O(1) rule with plain commands instead of the
// script, in one round trip: INCRBY of the window's counter by the cost,
// PEXPIRE ... NX of it (the first request of a window sets its expiry; no
// counter is ever left without one unless the connection drops between
// the two commands, sent in one write), and for sliding_window GET of the
// previous window's counter. The verdict is computed here, by the same
// rules as the script. A request that does not fit is given back with
// DECRBY right after, off its own path.
//
// Redis runs no script, so a decision costs it a few µs instead of a
// script call (measured in BenchmarkRequestFilter, redis_us/call). The
// price is that the counter holds a rejected request's cost for the one
// round trip until its DECRBY lands (sent before the rejection is
// answered: the rejected client's next request sees it): a concurrent
// request on the same key may meanwhile be rejected though it fits. With cost 1 on fixed_window that
// never changes a verdict (a request is only rejected when the counter
// was already at the limit); with weights, or with sliding_window's
// shrinking weight of the previous window, it can reject early, never
// admit over the limit.
func (r *RateLimit) evalCounter(sliding bool, d *decision, now time.Time) (bool, error) {
	limit, cost := d.limit[0], d.cost[0]
	window := d.window[0].Milliseconds()
	ms := now.UnixMilli()
	idx, el := ms/window, ms%window
	keys := append(d.skeys[:0], windowKey(d.keys[0], idx))
	ttl := window - el
	if sliding {
		keys = append(keys, windowKey(d.keys[0], idx-1))
		ttl += window
	}
	res, err := r.decidePlain(&evalReq{kind: kindCounter, keys: keys, cost: cost, ttl: ttl})
	if err != nil {
		if errors.Is(err, errPExpireNX) {
			// A master without PEXPIRE NX (a failover to an older Redis):
			// back to the script, and the counter just made gets its expiry.
			r.counters.Store(false)
			r.deps.Throttle.Warn("ratelimit:counters", "ratelimit: redis refused PEXPIRE NX: back to the script for every decision", err)
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout.D())
			r.client.PExpire(ctx, keys[0], time.Duration(ttl)*time.Millisecond)
			cancel()
		}
		return false, err
	}
	v, fits := counterVerdict(sliding, limit, window, el, cost, res.count, res.prev)
	d.v[0] = v
	if !fits {
		r.refund(&evalReq{kind: kindRefund, keys: keys[:1], cost: cost})
	}
	return fits, nil
}

// evalLog decides one sliding_log rule with plain commands instead of the
// script, in one round trip: MULTI, ZREMRANGEBYSCORE of the entries out
// of the window, ZADD of the request's (one per unit of cost), ZCARD,
// PEXPIRE, ZRANGE of the entry at -(limit+1) with its score, EXEC. The
// verdict is the script's: the request fits if the count with its entries
// is within the limit; if not, its entries are removed again (ZREM, a
// second round trip before the rejection is answered) and Retry-After is
// when that entry leaves the window. As with the counters, the entries of
// a rejected request are there for that one round trip: a concurrent
// request may meanwhile be rejected though it fits (never with cost 1,
// which is only rejected when the log was already full), never admitted
// over the limit.
//
// The time is Redis' clock as read by readRedisClock (the script reads
// TIME itself); until a first reading, or in Cluster (where a transaction
// spans one node, which the batcher's pipeline does not ensure), the
// script decides.
func (r *RateLimit) evalLog(d *decision, now time.Time) (bool, error) {
	limit, cost, window := d.limit[0], d.cost[0], d.window[0].Milliseconds()
	if !r.clock {
		now = time.Now().Add(time.Duration(r.offset.Load()))
	}
	ms := now.UnixMilli()
	member := r.member + strconv.FormatUint(r.seq.Add(1), 36)
	members := make([]any, 0, 2*cost)
	if cost == 1 {
		members = append(members, ms, member)
	} else {
		for j := int64(1); j <= cost; j++ {
			members = append(members, ms, member+"."+strconv.FormatInt(j, 10))
		}
	}
	key := d.keys[0]
	res, err := r.decidePlain(&evalReq{kind: kindLog, keys: []string{key}, now: ms, ttl: window, limit: limit, members: members})
	if err != nil {
		return false, err
	}
	if res.count <= limit {
		d.v[0] = ruleVerdict{fits: true, remaining: limit - res.count, reset: time.Duration(window) * time.Millisecond}
		return true, nil
	}
	reset := window
	if cost <= limit && res.score >= 0 {
		reset = res.score + window - ms
	}
	d.v[0] = ruleVerdict{remaining: max(limit-(res.count-cost), 0), reset: time.Duration(reset) * time.Millisecond}
	names := make([]any, 0, cost)
	for j := 1; j < len(members); j += 2 {
		names = append(names, members[j])
	}
	r.refund(&evalReq{kind: kindRefund, keys: []string{key}, members: names})
	return false, nil
}

// decidePlain makes the round trip of a decision by plain commands
// (kindCounter, kindLog) through the breaker (see call).
func (r *RateLimit) decidePlain(req *evalReq) (evalResult, error) {
	var res evalResult
	_, err := r.call(func() (any, error) {
		res = r.sendPlain(req)
		return nil, res.err
	})
	return res, err
}

// refund gives back what a rejected decision by plain commands added
// (kindRefund: DECRBY, or ZREM of its entries), before the rejection is
// answered, so that the client's next request sees it. It goes around the
// breaker, like the decision's own bookkeeping; a failed refund is counted
// (the counter stays over by the cost until its window ends, an undercount
// of that much).
func (r *RateLimit) refund(req *evalReq) {
	if res := r.sendPlain(req); res.err != nil && r.batch != nil {
		r.batch.stats.refundsLost.Add(1)
	}
}

// sendPlain sends req through the batcher, which holds the deadline, or,
// with the batcher off, as a pipeline on the request's goroutine within
// redis.timeout.
func (r *RateLimit) sendPlain(req *evalReq) evalResult {
	if r.batch != nil {
		return r.batch.wait(req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout.D())
	defer cancel()
	pipe := r.client.Pipeline()
	req.queueOn(ctx, pipe, "", false)
	_, _ = pipe.Exec(ctx)
	return req.result()
}

// counterVerdict is the verdict of one O(1) rule from its counter after
// INCRBY (count, this request's cost included) and, for sliding_window,
// the previous window's counter (prev), el ms into a window of window ms.
// It follows the script's arithmetic (float64, as Lua numbers) exactly.
func counterVerdict(sliding bool, limit, window, el, cost, count, prev int64) (ruleVerdict, bool) {
	before := float64(count - cost)
	est := before
	ttl := window - el
	if sliding {
		est = float64(prev)*float64(window-el)/float64(window) + before
		ttl += window
	}
	lim, c := float64(limit), float64(cost)
	if c <= lim-est {
		return ruleVerdict{fits: true, remaining: int64(math.Floor(lim - est - c)), reset: time.Duration(ttl) * time.Millisecond}, true
	}
	reset := window - el
	if sliding {
		w := float64(window)
		need := lim - c - before
		switch {
		case cost > limit:
			reset = window
		case need >= 0:
			reset = int64(math.Ceil(w-need*w/float64(prev))) - el
		default:
			reset = window - el + int64(math.Ceil(w-(lim-c)*w/before))
		}
		reset = max(reset, 1)
	}
	rem := max(int64(math.Floor(lim-est)), 0)
	return ruleVerdict{remaining: rem, reset: time.Duration(reset) * time.Millisecond}, false
}

// argZero is the elapsed-time argument of a sliding_log rule (unused).
var argZero any = int64(0)

// windowKey is the counter of one window of an O(1) rule: the rule's key
// and the window's index since the epoch (UTC), so a 24h window starts at
// midnight UTC.
func windowKey(key string, idx int64) string {
	var num [20]byte
	var b strings.Builder
	b.Grow(len(key) + 21)
	b.WriteString(key)
	b.WriteByte(':')
	b.Write(strconv.AppendInt(num[:0], idx, 10))
	return b.String() // one allocation
}

// algArg is each algorithm as the script's argument.
var algArg = map[algo]any{algSlidingLog: "l", algSlidingWindow: "s", algFixedWindow: "f"}

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
func (r *RateLimit) degraded(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, d *decision, now time.Time, err error, shadow bool) {
	r.deps.Throttle.Warn("ratelimit:degraded", "ratelimit FAILING OPEN/CLOSED/LOCAL per route fail_mode: redis cannot decide", err)
	switch c.failMode {
	case failClosed:
		r.count(outDegradedClosed)
		if !shadow {
			r.unavailable(c, w)
		}
	case failLocal:
		if !r.localDecide(d, now) {
			worst := 0
			for i := 0; i < d.n; i++ {
				if !d.v[i].fits && (d.v[worst].fits || d.v[i].reset > d.v[worst].reset) {
					worst = i
				}
			}
			if shadow {
				r.count(outShadowRejected)
				return
			}
			r.count(outLocalRejected)
			r.reject(c, w, d, worst, true)
			return
		}
		r.count(outLocalAllowed)
		if !shadow {
			r.allow(c, req, d, true)
		}
	default:
		r.count(outDegradedOpen)
		if c.show && !shadow {
			h := newHeaderWriter(req.RespHeader())
			if c.hdrX {
				h.set(hdrLimit, r.limitText(c, d, 0))
			}
			h.set(hdrStatus, statusDegrade)
		}
	}
}

// localDecide is fail_mode local: every rule in the runner's memory; the
// request is counted only if every rule has room.
func (r *RateLimit) localDecide(d *decision, now time.Time) bool {
	ok := true
	for i := 0; i < d.n; i++ {
		fits, rem, reset := r.local.decide(d.keys[i], d.limit[i], d.window[i], d.cost[i], now, false)
		d.v[i] = ruleVerdict{fits: fits, remaining: rem, reset: reset}
		ok = ok && fits
	}
	if !ok {
		return false
	}
	for i := 0; i < d.n; i++ {
		fits, rem, reset := r.local.decide(d.keys[i], d.limit[i], d.window[i], d.cost[i], now, true)
		d.v[i] = ruleVerdict{fits: fits, remaining: rem, reset: reset}
	}
	return true
}

// limitText is rule i's limit as text: formatted once per conf, on use for
// a tenant override.
func (r *RateLimit) limitText(c *Conf, d *decision, i int) string {
	if i == 0 && d.override {
		return itoa(d.limit[0])
	}
	return c.rules[i].limitStr
}

// tightest is the most restrictive rule of an allowed request: the least
// remaining relative to its limit, then the longest reset.
func tightest(d *decision) int {
	best := 0
	for i := 1; i < d.n; i++ {
		a, b := d.v[i], d.v[best]
		// a.remaining/limit_i < b.remaining/limit_best, without division
		l, r := float64(a.remaining)*float64(d.limit[best]), float64(b.remaining)*float64(d.limit[i])
		if l < r || (l == r && a.reset > b.reset) {
			best = i
		}
	}
	return best
}

// allow adds the limit headers of the most restrictive rule to the
// client's response; the request goes on to the upstream.
func (r *RateLimit) allow(c *Conf, req pkgHTTP.Request, d *decision, degraded bool) {
	if !c.show {
		return
	}
	i := tightest(d)
	h := newHeaderWriter(req.RespHeader())
	r.limitHeaders(c, &h, d, i, d.v[i].remaining, d.v[i].reset, degraded)
}

// limitHeaders writes the fields of rule i in the conf's header style.
func (r *RateLimit) limitHeaders(c *Conf, h *headerWriter, d *decision, i int, remaining int64, reset time.Duration, degraded bool) {
	secs := strconv.FormatInt(ceilSeconds(reset), 10)
	rem := strconv.FormatInt(max(remaining, 0), 10)
	if c.hdrX {
		h.set(hdrLimit, r.limitText(c, d, i))
		h.set(hdrRemaining, rem)
		h.set(hdrReset, secs)
	}
	if c.hdrIETF {
		pol := c.policy
		if d.override {
			pol = r.policyText(c, d)
		}
		h.set(hdrPolicy, pol)
		h.set(hdrRateLimit, `"r`+strconv.Itoa(i)+`";r=`+rem+";t="+secs)
	}
	if degraded {
		h.set(hdrStatus, statusDegrade)
	}
}

// policyText is RateLimit-Policy with a tenant's override of rule 0.
func (r *RateLimit) policyText(c *Conf, d *decision) string {
	var b strings.Builder
	for i := 0; i < d.n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(policyItem(i, d.limit[i], max(ceilSecs(d.window[i]), 1)))
	}
	return b.String()
}

// reject answers with the conf's rejection (a Stop: the upstream is not
// called), with the headers of rule i, the one that rejected it with the
// longest wait.
func (r *RateLimit) reject(c *Conf, w http.ResponseWriter, d *decision, i int, degraded bool) {
	h := newHeaderWriter(w.Header())
	h.set(hdrRetryAfter, strconv.FormatInt(ceilSeconds(d.v[i].reset), 10))
	if c.show {
		r.limitHeaders(c, &h, d, i, 0, d.v[i].reset, degraded)
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
		if !r.versioned.Load() {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout.D()+time.Second)
				defer cancel()
				r.checkVersions(ctx)
			}()
		}
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
		"refunds_failed":   b.stats.refundsLost.Load(),
		"queued":           int64(len(b.queue)),
	}
}
