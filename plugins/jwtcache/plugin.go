// Package jwtcache is the jwtcache plugin: JWT verification (golang-jwt v5,
// keys through MicahParks/keyfunc v3 over a jwkset storage) against JWKS
// providers that are fetched at start in the background, refreshed
// periodically and on unknown kids (rate limited, with a bounded wait), kept
// through IdP outages until max_stale, optionally snapshotted to disk for
// restarts, with a bounded cache of verified tokens. It fails closed: any
// doubt is a 401 (or 503 when no usable keys exist), never a pass.
package jwtcache

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Name is the plugin name in APISIX's ext-plugin confs.
const Name = "jwtcache"

// JWTCache is the plugin module.
type JWTCache struct {
	cfg  Config
	deps core.Deps
	now  func() time.Time

	providers map[string]*provider // configured, by name
	mu        sync.Mutex
	inline    map[string]*provider // by jwks_url
	nextID    uint64
	ctx       context.Context // set by Start
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	cache *lru.Cache[cacheKey, *cacheEntry]

	verifications *prometheus.CounterVec
	byReason      map[reason]prometheus.Counter
	okCount       prometheus.Counter // byReason[reasonOK], without the map lookup on every hit
	fetches       *prometheus.CounterVec
	hits, misses  prometheus.Counter
	accepted      atomic.Int64
	rejected      atomic.Int64
}

var _ core.Module = (*JWTCache)(nil)

// New builds the plugin from the runner config's jwks section. It neither
// dials nor blocks: providers are fetched once Start runs.
func New(cfg Config, deps core.Deps) (*JWTCache, error) {
	return newModule(cfg, deps, time.Now)
}

func newModule(cfg Config, deps core.Deps, now func() time.Time) (*JWTCache, error) {
	cache, err := lru.New[cacheKey, *cacheEntry](max(cfg.TokenCacheSize, 1))
	if err != nil {
		return nil, fmt.Errorf("new jwtcache: %w", err)
	}
	m := &JWTCache{
		cfg:       cfg,
		deps:      deps,
		now:       now,
		providers: map[string]*provider{},
		inline:    map[string]*provider{},
		cache:     cache,
		byReason:  map[reason]prometheus.Counter{},
	}
	m.verifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "jwt_verifications_total",
		Help: "JWT verifications by outcome (accepted, rejected) and reason.",
	}, []string{"outcome", "reason"})
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "jwt_cache_lookups_total",
		Help: "Verified-token cache lookups by result (hit, miss).",
	}, []string{"result"})
	m.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "jwks_fetches_total",
		Help: "JWKS fetches by provider and result (ok, error); inline jwks_url providers are labelled inline.",
	}, []string{"provider", "result"})
	if err := registerAll(deps.Metrics, m.verifications, lookups, m.fetches, &gauges{m: m}); err != nil {
		return nil, fmt.Errorf("new jwtcache: register metrics: %w", err)
	}
	for _, r := range allReasons {
		outcome := "rejected"
		if r == reasonOK || r == reasonAnonymous || r == reasonPreflight {
			outcome = "accepted"
		}
		m.byReason[r] = m.verifications.WithLabelValues(outcome, string(r))
	}
	m.okCount = m.byReason[reasonOK]
	m.hits, m.misses = lookups.WithLabelValues("hit"), lookups.WithLabelValues("miss")
	for _, pc := range cfg.Providers {
		m.nextID++
		m.providers[pc.Name] = newProvider(m.nextID, pc.Name, "jwks:"+pc.Name, pc, m)
	}
	if deps.Status != nil {
		deps.Status.Plugin(Name, m.counters)
	}
	return m, nil
}

func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Name implements plugin.Plugin.
func (m *JWTCache) Name() string { return Name }

// FailPolicy is FailClosed: an invalid conf on an authenticating plugin
// must never let requests through.
func (m *JWTCache) FailPolicy() core.FailPolicy { return core.FailClosed }

// Start fetches every configured provider in the background.
func (m *JWTCache) Start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx != nil {
		return
	}
	m.ctx, m.cancel = context.WithCancel(ctx)
	for _, name := range slices.Sorted(maps.Keys(m.providers)) {
		m.providers[name].start(m.ctx, &m.wg)
	}
	for _, p := range m.inline {
		p.start(m.ctx, &m.wg)
	}
	m.wg.Add(1)
	go m.refreshDetails(m.ctx)
}

// refreshDetails keeps the key age in /status current between fetches.
func (m *JWTCache) refreshDetails(ctx context.Context) {
	defer m.wg.Done()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := m.now()
		for _, p := range m.allProviders() {
			if ks := p.set.Load(); ks != nil {
				p.status.SetDetail("key_age_seconds", int64(now.Sub(ks.fetchedAt).Seconds()))
				if p.current(now) == nil && p.status.State() != core.StateDown {
					p.status.Set(core.StateDown, errors.New("jwks keys older than max_stale: failing closed"))
				}
			}
		}
	}
}

// Shutdown stops the refresh loops. Nothing needs flushing: the snapshot
// is written after each fetch.
func (m *JWTCache) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("jwtcache shutdown: %w", ctx.Err())
	}
}

// ParseConf validates a route conf and binds it to its providers. A
// jwks_url provider is created (and its first fetch started) here, on the
// route's first request, within max_inline_providers.
func (m *JWTCache) ParseConf(in []byte) (any, error) {
	rc, err := parseConf(&m.cfg, in)
	if err != nil {
		return nil, err
	}
	for i := range rc.provs {
		rp := &rc.provs[i]
		if rp.name != "" {
			rp.prov = m.providers[rp.name]
		} else if rp.prov, err = m.inlineProvider(rc.jwksURL); err != nil {
			return nil, err
		}
	}
	rc.parser = jwt.NewParser(jwt.WithValidMethods(rc.algList), jwt.WithJSONNumber(), jwt.WithoutClaimsValidation())
	return rc, nil
}

// ValidateConf checks a conf exactly as ParseConf does, without creating
// anything: `go-runner validate` uses it.
func ValidateConf(cfg *Config, in []byte) error {
	_, err := parseConf(cfg, in)
	return err
}

func (m *JWTCache) inlineProvider(rawURL string) (*provider, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.inline[rawURL]; ok {
		return p, nil
	}
	if len(m.inline) >= m.cfg.MaxInlineProviders {
		return nil, core.Fieldf("jwks_url", "too many distinct jwks_url providers: at most %d (jwks.max_inline_providers); declare this one in jwks.providers", m.cfg.MaxInlineProviders)
	}
	m.nextID++
	p := newProvider(m.nextID, "inline", fmt.Sprintf("jwks:inline-%d", len(m.inline)+1), inlineProvider(rawURL), m)
	m.inline[rawURL] = p
	if m.ctx != nil {
		p.start(m.ctx, &m.wg)
	}
	return p, nil
}

// RequestFilter verifies the token; on success it replaces the claim
// headers and the consumer header with verified values, and records the
// consumer for later plugins of the call (core.SetVerifiedConsumer).
func (m *JWTCache) RequestFilter(conf any, w http.ResponseWriter, r pkgHTTP.Request) {
	rc := conf.(*routeConf)
	hdr := r.Header()
	// read through Get and Values, not View: the server then copies no
	// header but the ones read
	rd := readerOf(hdr)
	if rc.preflight && r.Method() == http.MethodOptions && rd.Get("Origin") != "" && rd.Get("Access-Control-Request-Method") != "" {
		m.passUnauthenticated(rc, hdr, reasonPreflight)
		return
	}
	tok, src, why := extractToken(rc.sources, rd, r, m.cfg.MaxTokenSize)
	if why == reasonMissingToken && rc.anonymous {
		m.passUnauthenticated(rc, hdr, reasonAnonymous)
		return
	}
	if why != "" {
		m.fail(w, rc, reject(why))
		return
	}
	v := m.verifyToken(rc, &tok)
	if v.status != 0 {
		m.fail(w, rc, v)
		return
	}
	if rc.hide {
		hideToken(src, hdr, r)
	}
	// Hygiene first: whatever the client sent under these names is gone,
	// even when the claim is absent.
	for _, h := range rc.strip {
		hdr.Del(h)
	}
	for _, ch := range rc.headers {
		if s, ok := v.vc.headerValue(ch.claim); ok {
			hdr.Set(ch.header, s)
		}
	}
	if rc.payloadHdr != "" {
		hdr.Set(rc.payloadHdr, payloadSegment(tok.String()))
	}
	if c, ok := rc.consumer.get(v.claims); ok {
		if id, ok := consumerValue(c); ok {
			hdr.Set(core.ConsumerHeader, id)
			core.SetVerifiedConsumer(r, id)
		}
	}
	m.okCount.Inc()
	m.accepted.Add(1)
}

// passUnauthenticated lets a request through without a consumer (anonymous
// or a CORS preflight): the headers the plugin owns are removed, nothing
// is set.
func (m *JWTCache) passUnauthenticated(rc *routeConf, hdr pkgHTTP.Header, why reason) {
	for _, h := range rc.strip {
		hdr.Del(h)
	}
	m.byReason[why].Inc()
	m.accepted.Add(1)
}

// fail answers a rejected request. The body names the error class of RFC
// 6750 only: never the token, a claim or an internal error.
func (m *JWTCache) fail(w http.ResponseWriter, rc *routeConf, v verdict) {
	m.byReason[v.reason].Inc()
	m.rejected.Add(1)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	var body string
	switch {
	case v.reason == reasonMissingToken:
		// RFC 6750 3.1: no error code when the request had no credentials.
		h.Set("WWW-Authenticate", rc.authMissing)
		body = `{"error":"missing_token"}`
	case v.reason == reasonInsufficientScope:
		h.Set("WWW-Authenticate", rc.authScope)
		body = `{"error":"insufficient_scope"}`
	case v.status == http.StatusForbidden:
		h.Set("WWW-Authenticate", rc.authForbidden)
		body = `{"error":"insufficient_claims"}`
	case v.status == http.StatusServiceUnavailable:
		h.Set("Retry-After", "5")
		body = `{"error":"authentication temporarily unavailable"}`
	default:
		h.Set("WWW-Authenticate", rc.authInvalid)
		body = `{"error":"invalid_token"}`
	}
	w.WriteHeader(v.status)
	_, _ = w.Write([]byte(body))
}

// ResponseFilter does nothing: the plugin runs in ext-plugin-pre-req.
func (m *JWTCache) ResponseFilter(any, pkgHTTP.Response) {}

// keysChanged drops cached tokens whose key left the JWKS or changed. The
// hit path checks this too; purging keeps the cache for live keys.
func (m *JWTCache) keysChanged(p *provider, _, cur *keySet) {
	for _, k := range m.cache.Keys() {
		e, ok := m.cache.Peek(k)
		if !ok || e.provID != p.id {
			continue
		}
		if !m.entryValid(e, cur, m.now()) {
			m.cache.Remove(k)
		}
	}
}

// allProviders returns every provider, configured then inline.
func (m *JWTCache) allProviders() []*provider {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*provider, 0, len(m.providers)+len(m.inline))
	for _, n := range slices.Sorted(maps.Keys(m.providers)) {
		out = append(out, m.providers[n])
	}
	for _, u := range slices.Sorted(maps.Keys(m.inline)) {
		out = append(out, m.inline[u])
	}
	return out
}

func (m *JWTCache) counters() any {
	return map[string]any{
		"accepted":          m.accepted.Load(),
		"rejected":          m.rejected.Load(),
		"token_cache_size":  m.cache.Len(),
		"inline_providers":  len(m.allProviders()) - len(m.providers),
		"token_cache_limit": m.cfg.TokenCacheSize,
	}
}

// gauges computes key age and staleness at scrape time.
type gauges struct{ m *JWTCache }

var (
	keyAgeDesc = prometheus.NewDesc(core.Namespace+"_jwks_key_age_seconds",
		"Seconds since the keys in use were last fetched successfully (absent until a provider has keys; inline providers: the oldest).",
		[]string{"provider"}, nil)
	staleDesc = prometheus.NewDesc(core.Namespace+"_jwks_stale",
		"1 while the provider fails closed because its keys are older than max_stale or it never had keys, else 0.",
		[]string{"provider"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- keyAgeDesc
	ch <- staleDesc
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	now := g.m.now()
	type agg struct {
		age   float64
		has   bool
		stale bool
	}
	byLabel := map[string]*agg{}
	for _, p := range g.m.allProviders() {
		a := byLabel[p.label]
		if a == nil {
			a = &agg{}
			byLabel[p.label] = a
		}
		if ks := p.set.Load(); ks != nil {
			age := now.Sub(ks.fetchedAt).Seconds()
			if !a.has || age > a.age {
				a.age = age
			}
			a.has = true
		}
		a.stale = a.stale || p.stale(now)
	}
	for _, label := range slices.Sorted(maps.Keys(byLabel)) {
		a := byLabel[label]
		if a.has {
			ch <- prometheus.MustNewConstMetric(keyAgeDesc, prometheus.GaugeValue, a.age, label)
		}
		st := 0.0
		if a.stale {
			st = 1
		}
		ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, st, label)
	}
}
