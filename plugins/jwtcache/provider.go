package jwtcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Retry after a failed fetch: from retryMin, doubling, at most retryMax and
// never longer than the refresh interval, so keys are current again soon
// after the IdP comes back.
const (
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// provider owns one JWKS endpoint: a background loop fetches it, and
// requests read the current keySet without locks.
type provider struct {
	id      uint64
	label   string // metric label: the configured name, or "inline"
	backend string // /status backend name
	cfg     ProviderConfig
	client  *http.Client
	now     func() time.Time
	log     *core.LogThrottle
	status  *core.Backend
	fetchOK prometheus.Counter
	fetchKO prometheus.Counter
	// onKeys is called after a successful refresh changed the keys.
	onKeys func(p *provider, old, cur *keySet)

	set atomic.Pointer[keySet]

	mu        sync.Mutex
	updated   chan struct{} // closed and replaced after every fetch attempt
	ready     chan struct{} // closed once keys exist or the first attempt ended
	readyDone bool
	attempted bool
	started   uint64 // fetch attempts begun
	completed uint64 // fetch attempts ended
	pending   bool   // a kicked refresh has not ended yet
	pendingAt uint64 // the attempt number that serves it
	lastErr   string
	fails     int
	limiter   *rate.Limiter
	kick      chan struct{}
	runOnce   sync.Once

	// Discovery: the jwks_uri last read from the discovery document (or
	// the snapshot). File: what the last read saw.
	jwksURI  atomic.Pointer[string]
	fileStat fileStamp
}

// fileStamp is what a file provider compares to see a change.
type fileStamp struct {
	mod  time.Time
	size int64
}

func newProvider(id uint64, label, backend string, cfg ProviderConfig, m *JWTCache) *provider {
	p := &provider{
		id:      id,
		label:   label,
		backend: backend,
		cfg:     cfg,
		now:     m.now,
		log:     m.deps.Throttle,
		status:  m.deps.Status.Backend(backend),
		fetchOK: m.fetches.WithLabelValues(label, "ok"),
		fetchKO: m.fetches.WithLabelValues(label, "error"),
		onKeys:  m.keysChanged,
		updated: make(chan struct{}),
		ready:   make(chan struct{}),
		limiter: rate.NewLimiter(rate.Every(m.cfg.UnknownKIDMinInterval.D()), 1),
		kick:    make(chan struct{}, 1),
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // APISIX passes no proxy variables; never surprise the operator
	tr.MaxIdleConnsPerHost = 1
	p.client = &http.Client{
		Transport: tr,
		Timeout:   cfg.FetchTimeout.D(),
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("more than 3 redirects")
			}
			return nil
		},
	}
	switch {
	case cfg.File != "":
		p.status.SetDetail("file", cfg.File)
	case cfg.Discovery:
		p.status.SetDetail("discovery_url", redactURL(cfg.DiscoveryURL()))
	default:
		p.status.SetDetail("url", redactURL(cfg.URL))
	}
	return p
}

// start runs the refresh loop once.
func (p *provider) start(ctx context.Context, wg *sync.WaitGroup) {
	p.runOnce.Do(func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.run(ctx)
		}()
	})
}

// current returns the keys if they may be used at now: present and no older
// than max_stale.
func (p *provider) current(now time.Time) *keySet {
	ks := p.set.Load()
	if ks == nil || now.Sub(ks.fetchedAt) > p.cfg.MaxStale.D() {
		return nil
	}
	return ks
}

// stale reports whether the provider fails closed: it has tried and has no
// keys, or its keys are older than max_stale.
func (p *provider) stale(now time.Time) bool {
	ks := p.set.Load()
	if ks == nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.attempted
	}
	return now.Sub(ks.fetchedAt) > p.cfg.MaxStale.D()
}

// waitFirst waits at most d for the first keys, when there are none yet and
// the first fetch is still under way.
func (p *provider) waitFirst(d time.Duration) {
	if p.set.Load() != nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.ready:
	case <-t.C:
	}
}

// refreshForKID asks for a refresh because a token names a kid that is not
// cached, and waits at most d for it. Refreshes so triggered are rate
// limited; a request that finds one under way waits for it instead of
// starting another. It reports whether a refresh ended within d.
func (p *provider) refreshForKID(d time.Duration) bool {
	p.mu.Lock()
	if !p.pending {
		if !p.limiter.AllowN(p.now(), 1) {
			p.mu.Unlock()
			return false
		}
		p.pending = true
		p.pendingAt = p.started + 1 // the next attempt to begin serves it
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
	target, ch := p.pendingAt, p.updated
	p.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return false
		case <-ch:
		}
		p.mu.Lock()
		done := p.completed >= target
		ch = p.updated
		p.mu.Unlock()
		if done {
			return true
		}
	}
}

func (p *provider) run(ctx context.Context) {
	p.loadSnapshot()
	backoff := time.Duration(0)
	for {
		var wait time.Duration
		if p.refresh(ctx) {
			backoff = 0
			wait = jitter(p.cfg.RefreshInterval.D())
		} else {
			backoff = nextBackoff(backoff, p.cfg.RefreshInterval.D())
			wait = backoff
		}
		if ctx.Err() != nil {
			return
		}
		// Wake when the keys go stale, so that /status and the logs say so
		// at that moment even with a long retry interval.
		if ks := p.set.Load(); ks != nil {
			if until := ks.fetchedAt.Add(p.cfg.MaxStale.D()).Sub(p.now()); until > 0 && until < wait {
				wait = until + 10*time.Millisecond
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-p.kick:
			t.Stop()
		}
	}
}

func nextBackoff(cur, refresh time.Duration) time.Duration {
	limit := min(retryMax, refresh)
	if cur == 0 {
		return min(retryMin, limit)
	}
	return min(2*cur, limit)
}

// jitter spreads refreshes of many runners by ±10%.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// refresh does one fetch attempt and publishes its outcome.
func (p *provider) refresh(ctx context.Context) bool {
	p.mu.Lock()
	p.started++
	attempt := p.started
	p.mu.Unlock()

	ks, err := p.load(ctx)
	if ctx.Err() != nil && err != nil {
		p.finish(attempt, nil, nil) // shutting down: not an IdP failure
		return false
	}
	p.finish(attempt, ks, err)
	return err == nil
}

// load reads the keys from the provider's source: its URL, the jwks_uri
// of its discovery document, or its file.
func (p *provider) load(ctx context.Context) (*keySet, error) {
	start := p.now()
	switch {
	case p.cfg.File != "":
		return p.loadFile(start)
	case p.cfg.Discovery:
		uri, err := p.discover(ctx)
		if err != nil {
			last := p.jwksURI.Load()
			if last == nil {
				return nil, err
			}
			err = redactErr(err, p.knownURLs()...)
			p.status.SetError(err)
			p.log.Warn("jwks-discovery:"+p.backend, "openid discovery failed: using the jwks_uri read before", err,
				zap.String("backend", p.backend))
			uri = *last
		}
		body, err := p.fetch(ctx, uri, "jwks")
		if err != nil {
			return nil, err
		}
		return parseJWKS(body, start)
	}
	body, err := p.fetch(ctx, p.cfg.URL, "jwks")
	if err != nil {
		return nil, err
	}
	return parseJWKS(body, start)
}

// discover reads jwks_uri from the OpenID configuration (OpenID Connect
// Discovery 1.0 section 4), within the same bounds as a JWKS fetch. The
// document's issuer must be the configured one (section 4.3).
func (p *provider) discover(ctx context.Context) (string, error) {
	body, err := p.fetch(ctx, p.cfg.DiscoveryURL(), "openid configuration")
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("openid discovery: not a JSON object with issuer and jwks_uri: %w", err)
	}
	if doc.Issuer != p.cfg.Issuer {
		return "", fmt.Errorf("openid discovery: document issuer %q is not the configured issuer", redactText(doc.Issuer))
	}
	if err := CheckJWKSURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("openid discovery: jwks_uri %w", err)
	}
	if last := p.jwksURI.Load(); last == nil || *last != doc.JWKSURI {
		p.jwksURI.Store(&doc.JWKSURI)
		p.status.SetDetail("jwks_uri", redactURL(doc.JWKSURI))
	}
	return doc.JWKSURI, nil
}

// loadFile reads the file provider's JWKS when its modification time or
// size changed since the last good read; unchanged, the current keys are
// confirmed as of now (a file does not go stale while it is there).
func (p *provider) loadFile(now time.Time) (*keySet, error) {
	fi, err := os.Stat(p.cfg.File)
	if err != nil {
		return nil, fmt.Errorf("read jwks file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read jwks file: %s is not a regular file", p.cfg.File)
	}
	stamp := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if cur := p.set.Load(); cur != nil && stamp == p.fileStat {
		confirmed := *cur
		confirmed.fetchedAt = now
		return &confirmed, nil
	}
	if fi.Size() > int64(p.cfg.MaxBodySize) {
		return nil, fmt.Errorf("read jwks file: %w: %d bytes, more than %d (max_body_size)", errTooLarge, fi.Size(), p.cfg.MaxBodySize)
	}
	f, err := os.Open(p.cfg.File)
	if err != nil {
		return nil, fmt.Errorf("read jwks file: %w", err)
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, int64(p.cfg.MaxBodySize)+1))
	if err != nil {
		return nil, fmt.Errorf("read jwks file: %w", err)
	}
	if len(body) > p.cfg.MaxBodySize {
		return nil, fmt.Errorf("read jwks file: %w: more than %d bytes (max_body_size)", errTooLarge, p.cfg.MaxBodySize)
	}
	ks, err := parseJWKS(body, now)
	if err != nil {
		return nil, err
	}
	p.fileStat = stamp // only the refresh loop (or a test) reads and writes it
	return ks, nil
}

// knownURLs are the URLs this provider reads: redacted wherever shown.
func (p *provider) knownURLs() []string {
	urls := []string{p.cfg.URL}
	if p.cfg.Discovery {
		urls = append(urls, p.cfg.DiscoveryURL())
	}
	if u := p.jwksURI.Load(); u != nil {
		urls = append(urls, *u)
	}
	return urls
}

func (p *provider) finish(attempt uint64, ks *keySet, err error) {
	err = redactErr(err, p.knownURLs()...)
	now := p.now()
	var old *keySet
	if ks != nil {
		old = p.set.Swap(ks)
		p.fetchOK.Inc()
	} else if err != nil {
		p.fetchKO.Inc()
	}
	p.mu.Lock()
	p.completed = attempt
	if p.pending && p.completed >= p.pendingAt {
		p.pending = false
	}
	p.attempted = true
	if err != nil {
		p.lastErr = err.Error()
		p.fails++
	} else if ks != nil {
		p.lastErr = ""
		p.fails = 0
	}
	fails := p.fails
	close(p.updated)
	p.updated = make(chan struct{})
	if !p.readyDone {
		p.readyDone = true
		close(p.ready)
	}
	p.mu.Unlock()

	if ks != nil {
		p.status.Set(core.StateOK, nil)
		p.details(ks, now)
		// Written after every success, so that fetched_at (the key age
		// after a restart) stays current.
		if p.cfg.SnapshotFile != "" {
			uri := ""
			if u := p.jwksURI.Load(); u != nil {
				uri = *u
			}
			if werr := redactErr(writeSnapshot(p.cfg.SnapshotFile, p.cfg.source(), uri, ks), p.knownURLs()...); werr != nil {
				p.log.Warn("jwks-snapshot:"+p.backend, "jwks snapshot not written: the next restart during an IdP outage may fail closed", werr,
					zap.String("backend", p.backend))
			}
		}
		if old != nil && old.fp != ks.fp && p.onKeys != nil {
			p.onKeys(p, old, ks)
		}
		return
	}
	if err == nil {
		return
	}
	cur := p.current(now)
	if cur != nil {
		p.status.Set(core.StateDegraded, err)
		p.log.Warn("jwks:"+p.backend, "jwks refresh failed: verifying with cached keys until max_stale", err,
			zap.String("backend", p.backend), zap.Int("consecutive_failures", fails),
			zap.Duration("key_age", now.Sub(cur.fetchedAt).Truncate(time.Second)), zap.Duration("max_stale", p.cfg.MaxStale.D()))
	} else {
		p.status.Set(core.StateDown, err)
		p.log.Error("jwks:"+p.backend, "jwks unavailable: requests on this provider fail closed", err,
			zap.String("backend", p.backend), zap.Int("consecutive_failures", fails))
	}
	if ks := p.set.Load(); ks != nil {
		p.details(ks, now)
	}
}

func (p *provider) details(ks *keySet, now time.Time) {
	p.status.SetDetail("kids", len(ks.all))
	p.status.SetDetail("skipped_keys", ks.skipped)
	p.status.SetDetail("last_fetch", ks.fetchedAt.UTC().Format(time.RFC3339))
	p.status.SetDetail("key_age_seconds", int64(now.Sub(ks.fetchedAt).Seconds()))
	p.status.SetDetail("max_stale", p.cfg.MaxStale.String())
}

var errTooLarge = errors.New("body too large")

// fetch GETs a JWKS or a discovery document (what names it in errors)
// within the fetch timeout and the body size bound.
func (p *provider) fetch(ctx context.Context, rawURL, what string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.FetchTimeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", what, redactErr(err, rawURL))
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	req.Header.Set("User-Agent", "apisix-edge-runner/jwtcache")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", what, redactErr(err, rawURL))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("fetch %s: status %d", what, resp.StatusCode)
	}
	limit := int64(p.cfg.MaxBodySize)
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: read body: %w", what, redactErr(err, rawURL))
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("fetch %s: %w: more than %d bytes (max_body_size)", what, errTooLarge, limit)
	}
	return body, nil
}

// snapshot is the file format of snapshot_file.
type snapshot struct {
	Version   int             `json:"version"`
	URL       string          `json:"url"`
	FetchedAt time.Time       `json:"fetched_at"`
	JWKS      json.RawMessage `json:"jwks"`
	// JWKSURI is the jwks_uri a discovery provider read (URL is then the
	// discovery URL).
	JWKSURI string `json:"jwks_uri,omitempty"`
}

// writeSnapshot replaces path atomically: a crash leaves the old file or
// the new one, never a torn one.
func writeSnapshot(path, rawURL, jwksURI string, ks *keySet) error {
	data, err := json.Marshal(snapshot{Version: 1, URL: rawURL, FetchedAt: ks.fetchedAt.UTC(), JWKS: ks.raw, JWKSURI: jwksURI})
	if err != nil {
		return fmt.Errorf("write jwks snapshot: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write jwks snapshot: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write jwks snapshot: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // make the rename durable
		_ = d.Close()
	}
	return nil
}

// readSnapshot loads a snapshot written for rawURL. A snapshot of another
// URL (the config changed) or from the future is ignored.
func readSnapshot(path, rawURL string, maxBody int, now time.Time) (*keySet, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("read jwks snapshot: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(2*maxBody+4096)))
	if err != nil {
		return nil, "", fmt.Errorf("read jwks snapshot: %w", err)
	}
	var s snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, "", fmt.Errorf("read jwks snapshot: not a snapshot file: %w", err)
	}
	if s.Version != 1 {
		return nil, "", fmt.Errorf("read jwks snapshot: unknown version %d", s.Version)
	}
	if s.URL != rawURL {
		return nil, "", fmt.Errorf("read jwks snapshot: written for another url")
	}
	if s.FetchedAt.IsZero() || s.FetchedAt.After(now.Add(time.Minute)) {
		return nil, "", fmt.Errorf("read jwks snapshot: fetched_at %s is not in the past", s.FetchedAt.Format(time.RFC3339))
	}
	ks, err := parseJWKS(s.JWKS, s.FetchedAt)
	if err != nil {
		return nil, "", fmt.Errorf("read jwks snapshot: %w", err)
	}
	return ks, s.JWKSURI, nil
}

// loadSnapshot installs the snapshot's keys, if any, before the first fetch.
func (p *provider) loadSnapshot() {
	if p.cfg.SnapshotFile == "" {
		return
	}
	now := p.now()
	ks, uri, err := readSnapshot(p.cfg.SnapshotFile, p.cfg.source(), p.cfg.MaxBodySize, now)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("jwks-snapshot:"+p.backend, "jwks snapshot not loaded", redactErr(err, p.knownURLs()...), zap.String("backend", p.backend))
		}
		return
	}
	if !p.set.CompareAndSwap(nil, ks) {
		return
	}
	if p.cfg.Discovery && uri != "" && CheckJWKSURL(uri) == nil {
		p.jwksURI.CompareAndSwap(nil, &uri)
	}
	p.status.SetDetail("snapshot_loaded", ks.fetchedAt.UTC().Format(time.RFC3339))
	p.details(ks, now)
	p.mu.Lock()
	if !p.readyDone {
		p.readyDone = true
		close(p.ready)
	}
	p.mu.Unlock()
}
