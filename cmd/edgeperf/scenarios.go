package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// scenario is one chain measured against its no-op twin: the same requests
// through a route whose ext-plugin phases are configured but empty, so the
// ratio isolates what the plugins cost.
type scenario struct {
	key, title string
	// phases names the baseline: the no-op chain in the same phases.
	phases string
	route  *testbed.Route
	base   *testbed.Route
	newReq func(w, i int) *testbed.Request
	// baseReq, if set, builds the no-op slices' requests instead of newReq
	// (same kind of requests, but a sequence of its own).
	baseReq func(w, i int) *testbed.Request
	header  string // counted response header
	metrics []string
	gauges  []string
	// before runs once before the scenario (a fault); its result is noted.
	before func(ctx context.Context) (string, error)
	note   string
	// bare names the algorithm whose commands, bare (rlbare.go), are
	// measured in slices of their own between the scenario's rounds, so
	// that it is read against the commands' own cost in the same
	// conditions: at c=1 their round trip (an idle machine wakes slower
	// than a busy one), at c=64 their throughput on the shared cores.
	bare string
}

// cell is one scenario at one concurrency level.
type cell struct {
	level      int
	scen, base []*testbed.LoadReport
	warmReqs   int64 // scenario requests in the unmeasured warm-up
	rss        int64
	bareP50s   []time.Duration // c=1 p50 of the bare commands, one per round (scenario.bare)
	bareTputs  []float64       // c=64 decisions/s of the bare commands, one per round (scenario.bare)
	// CPU time of each process over the measured slices of the scenario
	// and of its no-op twin (none when paired).
	scenCPU, baseCPU procTimes
	// paired: the no-op twin and the scenario took turns of pairTurn
	// requests in one loop each round (testbed.LoadPair), at c=1.
	paired bool
}

// The processes sharing the cores, as indexes of procTimes.
const (
	procLoad   = iota // the load generator: this process
	procRunner        // the runner
	procRedis         // redis-server
	procCH            // clickhouse-server
	numProcs
)

// procTimes is the CPU time (user and system) of each process sharing the
// cores. ok is false for one that could not be read (a server killed by
// the scenario, or not asked for): it is left out.
type procTimes struct {
	d  [numProcs]time.Duration
	ok [numProcs]bool
}

// readCPU reads the CPU time of the processes pids (0: not read), each
// with procCPU; err joins the reads that failed.
func readCPU(pids [numProcs]int) (procTimes, error) {
	var t procTimes
	var errs []error
	for i, pid := range pids {
		if pid == 0 {
			continue
		}
		d, err := procCPU(pid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.d[i], t.ok[i] = d, true
	}
	return t, errors.Join(errs...)
}

// cpuNow reads every process' CPU time now; one the scenario killed is
// left out.
func (e *env) cpuNow() procTimes {
	pids := [numProcs]int{procLoad: os.Getpid(), procRunner: e.runner.PID()}
	if e.rd != nil {
		pids[procRedis] = e.rd.PID()
	}
	if e.ch != nil {
		pids[procCH] = e.ch.PID()
	}
	t, _ := readCPU(pids)
	return t
}

// since is the CPU used from t0 to t, by the processes read both times.
func (t procTimes) since(t0 procTimes) procTimes {
	var d procTimes
	for i := range numProcs {
		if t.ok[i] && t0.ok[i] {
			d.d[i], d.ok[i] = t.d[i]-t0.d[i], true
		}
	}
	return d
}

// add sums two measurements; a process stays ok only if both read it.
func (t procTimes) add(u procTimes) procTimes {
	var s procTimes
	first := t.ok == [numProcs]bool{}
	for i := range numProcs {
		if (first || t.ok[i]) && u.ok[i] {
			s.d[i], s.ok[i] = t.d[i]+u.d[i], true
		}
	}
	return s
}

// bareP50 is the median of the interleaved bare slices' p50s.
func (c *cell) bareP50() time.Duration {
	v := slices.Clone(c.bareP50s)
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

// bareTput is the median of the interleaved bare slices' decisions/s.
func (c *cell) bareTput() float64 {
	v := slices.Clone(c.bareTputs)
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

type scenarioResult struct {
	sc     *scenario
	cells  []*cell
	deltas string // counter deltas over the whole scenario
	gauges string
	// Gateway counters over the whole scenario (no-op slices included).
	gw testbed.GatewayStats
	// scenReqs counts the requests through the scenario's route (warm-ups
	// included): only they can cause ExtraInfo questions.
	scenReqs int64
	before   string
	err      error
}

// Aggregates over the slices of a cell.

func pooledThroughput(reps []*testbed.LoadReport) float64 {
	var n int64
	var d time.Duration
	for _, r := range reps {
		n += r.Requests
		d += r.Elapsed
	}
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func medianDur(reps []*testbed.LoadReport, f func(*testbed.LoadReport) time.Duration) time.Duration {
	v := make([]time.Duration, 0, len(reps))
	for _, r := range reps {
		v = append(v, f(r))
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

func (c *cell) tput() float64     { return pooledThroughput(c.scen) }
func (c *cell) baseTput() float64 { return pooledThroughput(c.base) }
func (c *cell) ratio() float64 {
	if b := c.baseTput(); b > 0 {
		return c.tput() / b
	}
	return 0
}
func (c *cell) p50() time.Duration {
	return medianDur(c.scen, func(r *testbed.LoadReport) time.Duration { return r.Latency.P50 })
}
func (c *cell) p99() time.Duration {
	return medianDur(c.scen, func(r *testbed.LoadReport) time.Duration { return r.Latency.P99 })
}
func (c *cell) baseP50() time.Duration {
	return medianDur(c.base, func(r *testbed.LoadReport) time.Duration { return r.Latency.P50 })
}
func (c *cell) baseP99() time.Duration {
	return medianDur(c.base, func(r *testbed.LoadReport) time.Duration { return r.Latency.P99 })
}

// roundRatios are the per-round throughput ratios (slice pairs).
func (c *cell) roundRatios() []float64 {
	var out []float64
	for i := range c.scen {
		if i < len(c.base) && c.base[i].Throughput > 0 {
			out = append(out, c.scen[i].Throughput/c.base[i].Throughput)
		}
	}
	return out
}

// outcomes sums status codes and counted header values over the slices.
func (c *cell) outcomes() string {
	status := map[int]int64{}
	hdr := map[string]int64{}
	var errs int64
	name := ""
	for _, r := range c.scen {
		for k, v := range r.Status {
			status[k] += v
		}
		for k, v := range r.HeaderValues {
			hdr[k] += v
		}
		errs += r.Errors
		name = r.CountHeader
	}
	var parts []string
	codes := make([]int, 0, len(status))
	for k := range status {
		codes = append(codes, k)
	}
	sort.Ints(codes)
	for _, k := range codes {
		parts = append(parts, fmt.Sprintf("%d: %d", k, status[k]))
	}
	vals := make([]string, 0, len(hdr))
	for k := range hdr {
		vals = append(vals, k)
	}
	sort.Strings(vals)
	for _, k := range vals {
		if k == "" {
			continue // responses without the header
		}
		parts = append(parts, fmt.Sprintf("%s %s: %d", name, k, hdr[k]))
	}
	if errs > 0 {
		parts = append(parts, fmt.Sprintf("errors: %d", errs))
	}
	return strings.Join(parts, ", ")
}

// Request builders. Every request carries the headers a real client sends;
// the composite log variable is answered as APISIX with the shipped nginx
// map snippet would (docs/clickhouselogger.md).

func composite(ip, rid, consumer string) string {
	return strings.Join([]string{"e1", "0.001", "GET", "api.bench.test", "/api/v1/items/42", ip,
		"edgeperf/1", rid, "", "acme", consumer}, "\n")
}

func baseHeaders() http.Header {
	h := http.Header{}
	h.Set("Host", "api.bench.test")
	h.Set("User-Agent", "edgeperf/1")
	h.Set("Accept", "application/json")
	h.Set("X-Tenant-ID", "acme")
	return h
}

// reqPool pre-builds n requests so that the load generator does not
// allocate them while measuring; request i uses entry i mod n.
func reqPool(n int, build func(i int) *testbed.Request) func(w, i int) *testbed.Request {
	pool := make([]*testbed.Request, n)
	for i := range pool {
		pool[i] = build(i)
	}
	return func(_, i int) *testbed.Request { return pool[i%n] }
}

// distinctIP is the i-th client address in 10.0.0.0/8.
func distinctIP(i int) net.IP {
	n := i + 1
	return net.IPv4(10, byte(n>>16), byte(n>>8), byte(n))
}

func (e *env) scenarios() []*scenario {
	preNoop := func(id string) *testbed.Route { return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{}} }
	postNoop := func(id string) *testbed.Route { return &testbed.Route{ID: id, PostResp: []testbed.PluginConf{}} }
	bothNoop := func(id string) *testbed.Route {
		return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{}, PostResp: []testbed.PluginConf{}}
	}
	rlHealthy := &testbed.Route{ID: "rl", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":1000,"window":"1s"}`}}}
	chl := &testbed.Route{ID: "chl", PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: `{}`}}}
	jwtConf := fmt.Sprintf(`{"provider":"idp","issuer":%q,"audience":%q}`, e.idp.Issuer(), issuerAud)
	jwt := &testbed.Route{ID: "jwt", PreReq: []testbed.PluginConf{{Name: "jwtcache", Value: jwtConf}}}

	// 65536 distinct addresses: at most a few per key in a 1 s window,
	// far under the limit, so every request is a Redis decision.
	distinct := reqPool(1<<16, func(i int) *testbed.Request {
		return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: baseHeaders(), SrcIP: distinctIP(i)}
	})
	logged := func(routeID string) func(w, i int) *testbed.Request {
		return reqPool(4096, func(i int) *testbed.Request {
			ip := distinctIP(i)
			rid := routeID + "-" + strconv.Itoa(i)
			h := baseHeaders()
			h.Set("X-Request-Id", rid)
			return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: h, SrcIP: ip,
				Vars: map[string]string{"edge_log_fields": composite(ip.String(), rid, "")}}
		})
	}
	bearer := func(tok string) http.Header {
		h := baseHeaders()
		h.Set("Authorization", "Bearer "+tok)
		return h
	}
	hitReq := &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: bearer(e.hitToken)}
	missPoolReq := reqPool(len(e.missTokens), func(i int) *testbed.Request {
		return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: bearer(e.missTokens[i])}
	})
	// Load numbers requests from 0 in every call: a run-wide counter keeps
	// the tokens in turn across slices, so a slice never brings back a
	// token the previous one left in the cache. The no-op slices draw from
	// a counter of their own, so that the plugin's sequence has no gaps.
	var missNext, missBaseNext atomic.Int64
	miss := func(w, _ int) *testbed.Request { return missPoolReq(w, int(missNext.Add(1)-1)) }
	missBase := func(w, _ int) *testbed.Request { return missPoolReq(w, int(missBaseNext.Add(1)-1)) }
	all3 := reqPool(4096, func(i int) *testbed.Request {
		c := i % consumers
		ip := distinctIP(i)
		rid := "all-" + strconv.Itoa(i)
		h := bearer(e.consTokens[c])
		h.Set("X-Request-Id", rid)
		return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: h, SrcIP: ip,
			Vars: map[string]string{"edge_log_fields": composite(ip.String(), rid, e.consSubject[c])}}
	})

	// Histograms show as their count and mean (Redis call latency, and
	// decisions per Redis round trip where the plugin reports it).
	rlMetrics := []string{"apisix_edge_ratelimit_decisions_total", "apisix_edge_ratelimit_redis_",
		"apisix_edge_ratelimit_breaker_transitions_total", "apisix_edge_ratelimit_batcher_"}
	jwtMetrics := []string{"apisix_edge_jwt_cache_lookups_total", "apisix_edge_jwt_verifications_total"}
	logMetrics := []string{"apisix_edge_log_rows_"}
	return []*scenario{
		{key: "rl", title: "ratelimit, every request a Redis decision under its limit", phases: "pre-req",
			route: rlHealthy, base: preNoop("noop-rl"), newReq: distinct, header: "X-RateLimit-Status", metrics: rlMetrics, bare: "sliding_log",
			note: `{"limit":1000,"window":"1s"}` + ", key remote_addr, a distinct source address per request (65536 in turn)"},
		{key: "rl-over", title: "ratelimit, key over its limit (over-limit cache)", phases: "pre-req",
			route: &testbed.Route{ID: "rl-over", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":10,"window":"1h"}`}}},
			base:  preNoop("noop-rl-over"), newReq: reqPool(1, func(int) *testbed.Request {
				return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: baseHeaders()}
			}), header: "X-RateLimit-Status", metrics: rlMetrics,
			note: `{"limit":10,"window":"1h"}` + ", one client address: after 10 allowed, every request is a 429 from the runner's over-limit cache"},
		{key: "jwt-hit", title: "jwtcache, the same valid token (cache hit)", phases: "pre-req",
			route: jwt, base: preNoop("noop-jwt-hit"), newReq: func(int, int) *testbed.Request { return hitReq }, metrics: jwtMetrics,
			note: jwtConf + ", one RS256-2048 token"},
		{key: "jwt-miss", title: "jwtcache, a distinct token per request (cache miss, RS256-2048)", phases: "pre-req",
			route: jwt, base: preNoop("noop-jwt-miss"), newReq: miss, baseReq: missBase, metrics: jwtMetrics,
			note: fmt.Sprintf("same conf; %d pre-signed tokens used in turn against jwks.token_cache_size %d, so the LRU never holds the next one", missPool, tokenCacheSize)},
		{key: "chl-rid", title: "clickhouselogger with route_id in the conf", phases: "post-resp",
			route: &testbed.Route{ID: "chl-rid", PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: `{"route_id":"chl-rid"}`}}},
			base:  postNoop("noop-chl-rid"), newReq: logged("chl-rid"), metrics: logMetrics,
			note: "`{\"route_id\":\"chl-rid\"}`: 1 ExtraInfo round trip per request (the composite only)"},
		{key: "all3", title: "all three: jwtcache, ratelimit (consumer), clickhouselogger", phases: "pre-req + post-resp",
			route: &testbed.Route{ID: "all3",
				PreReq: []testbed.PluginConf{
					{Name: "jwtcache", Value: jwtConf},
					{Name: "ratelimit", Value: `{"limit":100000,"window":"1s","key":"consumer"}`},
				},
				PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: `{}`}}},
			base: bothNoop("noop-all3"), newReq: all3, header: "X-RateLimit-Status",
			metrics: append(append(append([]string{}, jwtMetrics...), rlMetrics...), logMetrics...),
			note:    fmt.Sprintf("pre-req jwtcache then ratelimit `{\"limit\":100000,\"window\":\"1s\",\"key\":\"consumer\"}`, post-resp clickhouselogger `{}`; %d consumers (cached tokens), each under its limit", consumers)},
		{key: "chl", title: "clickhouselogger (post-resp)", phases: "post-resp",
			route: chl, base: postNoop("noop-chl"), newReq: logged("chl"), metrics: logMetrics,
			note: "`{}`: 2 ExtraInfo round trips per request (the composite variable edge_log_fields, answered as the shipped nginx map would, and $route_id)"},
		{key: "chl-down", title: "clickhouselogger with ClickHouse down (killed)", phases: "post-resp",
			route: chl, base: postNoop("noop-chl-down"), newReq: logged("chl"), metrics: logMetrics,
			gauges: []string{"apisix_edge_log_queue_rows"},
			before: func(ctx context.Context) (string, error) {
				e.accounting = e.drainLog(ctx)
				if err := e.ch.Kill(); err != nil {
					return "", err
				}
				return fmt.Sprintf("clickhouse-server killed (SIGKILL) before the warm-up; max_pending %d", maxPending), nil
			},
			note: "same route and conf as the healthy logger"},
		{key: "rl-down", title: "ratelimit with Redis down (killed)", phases: "pre-req",
			route: rlHealthy, base: preNoop("noop-rl-down"), newReq: distinct, header: "X-RateLimit-Status",
			metrics: rlMetrics, gauges: []string{"apisix_edge_ratelimit_breaker_state"},
			before: func(ctx context.Context) (string, error) {
				if err := e.rd.Kill(); err != nil {
					return "", err
				}
				return "redis-server killed (SIGKILL) before the warm-up (ClickHouse is down too since the previous scenario; this route does not use it); fail_mode open", nil
			},
			note: "same route as the healthy case; the warm-up opens the breaker, then decisions take no Redis trip"},
	}
}

// runScenarios measures every scenario at every level, in the order
// given: healthy scenarios first, the healthy logger right before the
// logger with ClickHouse down (the two are compared), and the two faults
// last, so that no restart is needed.
func runScenarios(ctx context.Context, o *options, e *env, pr *progress) ([]*scenarioResult, error) {
	var out []*scenarioResult
	for _, sc := range withRLV2(e, e.scenarios()) {
		if len(o.only) > 0 && !slices.Contains(o.only, sc.key) {
			continue
		}
		res := &scenarioResult{sc: sc}
		out = append(out, res)
		if sc.before != nil {
			res.before, res.err = sc.before(ctx)
			if res.err != nil {
				return out, fmt.Errorf("scenario %s: %w", sc.key, res.err)
			}
		}
		g0 := e.gw.Stats()
		m0, err := e.scrape(ctx)
		if err != nil {
			res.err = err
			return out, fmt.Errorf("scenario %s: %w", sc.key, err)
		}
		for _, lvl := range o.levels {
			c, err := measureCell(ctx, o, e, sc, lvl)
			if c != nil {
				res.cells = append(res.cells, c)
			}
			if err != nil {
				res.err = err
				return out, fmt.Errorf("scenario %s c=%d: %w", sc.key, lvl, err)
			}
			pr.printf("%-9s c=%-3d %8.0f req/s  p50 %-8s p99 %-8s  no-op %8.0f req/s  ratio %.2f  %s",
				sc.key, lvl, c.tput(), testbed.FormatDuration(c.p50()), testbed.FormatDuration(c.p99()), c.baseTput(), c.ratio(), c.outcomes())
		}
		if o.profile != "" {
			lvl := o.levels[len(o.levels)/2]
			if err := profileScenario(ctx, o, e, sc, lvl); err != nil {
				return out, fmt.Errorf("scenario %s: %w", sc.key, err)
			}
			pr.printf("%-9s c=%-3d CPU profile written to %s", sc.key, lvl, filepath.Join(o.profile, sc.key+".pprof"))
		}
		m1, err := e.scrape(ctx)
		if err != nil {
			res.err = err
			return out, fmt.Errorf("scenario %s: %w", sc.key, err)
		}
		res.gw = statsDelta(g0, e.gw.Stats())
		for _, c := range res.cells {
			res.scenReqs += c.warmReqs
			for _, r := range c.scen {
				res.scenReqs += r.Requests
			}
		}
		res.deltas = deltas(m0, m1, sc.metrics)
		res.gauges = gaugeValues(m1, sc.gauges)
	}
	return out, nil
}

// profileScenario runs the scenario for 5 s more at level lvl while the
// runner profiles itself, and writes the profile to o.profile.
func profileScenario(ctx context.Context, o *options, e *env, sc *scenario, lvl int) error {
	const seconds = 5
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, (seconds+10)*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(pctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", e.admin, seconds), nil)
		if err != nil {
			got <- result{nil, err}
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		}
		got <- result{b, err}
	}()
	_, err := testbed.Load(ctx, testbed.LoadOptions{
		Gateway: e.gw, Route: sc.route, Concurrency: lvl, Duration: seconds*time.Second + 500*time.Millisecond,
		NewRequest: sc.newReq, CountHeader: sc.header,
	})
	r := <-got
	if err = errors.Join(err, r.err); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := os.MkdirAll(o.profile, 0o755); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	return os.WriteFile(filepath.Join(o.profile, sc.key+".pprof"), r.b, 0o644)
}

// pairTurn is how many requests of one route a paired round (c=1) sends in
// a row: about a millisecond of requests, short against the machine's
// swings (tens of milliseconds), long enough that a route's requests
// follow each other as in a run of their own. Turns of 1 read the jwt-hit
// scenario 0.93–0.96, turns of 8, 32 and 128 alike 0.88–0.93.
const pairTurn = 32

// measureCell warms the scenario up, then measures rounds of the no-op
// twin and the scenario: at c=1 in turns within one loop, else in slices
// (measureSlices).
func measureCell(ctx context.Context, o *options, e *env, sc *scenario, lvl int) (*cell, error) {
	optsFor := func(route *testbed.Route, d time.Duration) testbed.LoadOptions {
		newReq := sc.newReq
		if route == sc.base && sc.baseReq != nil {
			newReq = sc.baseReq
		}
		return testbed.LoadOptions{
			Gateway: e.gw, Route: route, Concurrency: lvl, Duration: d,
			NewRequest: newReq, CountHeader: sc.header,
		}
	}
	load := func(route *testbed.Route, d time.Duration) (*testbed.LoadReport, error) {
		return testbed.Load(ctx, optsFor(route, d))
	}
	if _, err := load(sc.base, o.warmup/3); err != nil {
		return nil, err
	}
	warm, err := load(sc.route, o.warmup)
	if err != nil {
		return nil, err
	}
	c := &cell{level: lvl, warmReqs: warm.Requests, paired: lvl == 1}
	for r := 0; r < o.rounds; r++ {
		if c.paired {
			// One request in flight: the two routes never overlap, and
			// turns of pairTurn requests cancel the machine's swings
			// between fast and slow wake-ups, which alternating slices
			// cannot. The round takes the time of two slices; which route
			// leads alternates across rounds.
			base, scen := optsFor(sc.base, 2*o.slice), optsFor(sc.route, 2*o.slice)
			base.Turn, scen.Turn = pairTurn, pairTurn
			var b, s *testbed.LoadReport
			var err error
			if r%2 == 0 {
				b, s, err = testbed.LoadPair(ctx, base, scen)
			} else {
				s, b, err = testbed.LoadPair(ctx, scen, base)
			}
			if err != nil {
				return c, err
			}
			c.base, c.scen = append(c.base, b), append(c.scen, s)
		} else if err := measureSlices(e, c, sc, r, o.slice, load); err != nil {
			return c, err
		}
		switch {
		case sc.bare != "" && lvl == 1:
			if p50, err := bareSlice(ctx, e, sc.bare, o.slice); err == nil {
				c.bareP50s = append(c.bareP50s, p50)
			}
		case sc.bare != "" && lvl == 64:
			if tput, err := bareTputSlice(ctx, e, sc.bare, lvl, o.slice); err == nil {
				c.bareTputs = append(c.bareTputs, tput)
			}
		}
	}
	c.rss = e.runnerRSS()
	return c, nil
}

// measureSlices measures one round of a cell in two slices, the no-op
// twin's and the scenario's, in ABBA order across rounds (so neither
// always runs first), with each process' CPU time over each slice.
func measureSlices(e *env, c *cell, sc *scenario, round int, d time.Duration, load func(*testbed.Route, time.Duration) (*testbed.LoadReport, error)) error {
	order := []bool{false, true} // false: no-op first
	if round%2 == 1 {
		order = []bool{true, false}
	}
	for _, isScen := range order {
		route := sc.base
		if isScen {
			route = sc.route
		}
		cpu0 := e.cpuNow()
		rep, err := load(route, d)
		if err != nil {
			return err
		}
		used := e.cpuNow().since(cpu0)
		if isScen {
			c.scen = append(c.scen, rep)
			c.scenCPU = c.scenCPU.add(used)
		} else {
			c.base = append(c.base, rep)
			c.baseCPU = c.baseCPU.add(used)
		}
	}
	return nil
}

func statsDelta(a, b testbed.GatewayStats) testbed.GatewayStats {
	return testbed.GatewayStats{
		Prepares: b.Prepares - a.Prepares, Calls: b.Calls - a.Calls, RespCalls: b.RespCalls - a.RespCalls,
		ExtraInfo: b.ExtraInfo - a.ExtraInfo, Dials: b.Dials - a.Dials, Failures: b.Failures - a.Failures,
		TokenRetries: b.TokenRetries - a.TokenRetries,
	}
}

// deltas renders the non-zero changes of the series whose name starts with
// one of prefixes (histogram buckets and sums left out).
func deltas(m0, m1 map[string]float64, prefixes []string) string {
	var parts []string
	for k, v := range m1 {
		name, _, _ := strings.Cut(k, "{")
		if strings.HasSuffix(name, "_bucket") || strings.HasSuffix(name, "_sum") {
			continue
		}
		if !hasPrefix(name, prefixes) || strings.HasSuffix(name, "_state") || name == "apisix_edge_log_queue_rows" ||
			strings.HasPrefix(name, "apisix_edge_log_spool") {
			continue
		}
		d := v - m0[k]
		if d == 0 {
			continue
		}
		part := fmt.Sprintf("%s +%.0f", strings.TrimPrefix(k, "apisix_edge_"), d)
		if base, ok := strings.CutSuffix(name, "_count"); ok {
			sumKey := base + "_sum" + strings.TrimPrefix(k, name)
			if sum, ok := m1[sumKey]; ok {
				mean := (sum - m0[sumKey]) / d
				if strings.HasSuffix(base, "_seconds") {
					part += " (mean " + testbed.FormatDuration(time.Duration(mean*float64(time.Second))) + ")"
				} else {
					part += fmt.Sprintf(" (mean %.2f)", mean)
				}
			}
		}
		parts = append(parts, part)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func gaugeValues(m map[string]float64, names []string) string {
	var parts []string
	for k, v := range m {
		name, _, _ := strings.Cut(k, "{")
		if hasPrefix(name, names) {
			parts = append(parts, fmt.Sprintf("%s = %.0f", strings.TrimPrefix(k, "apisix_edge_"), v))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func hasPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
