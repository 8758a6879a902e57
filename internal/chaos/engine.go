package chaos

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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/apisix-edge/edge-runner/testbed/idp"
)

// Options configures Run.
type Options struct {
	// Runner is the go-runner binary. Required.
	Runner string
	// Short runs every scenario with short phases and generous latency
	// factors (the version in `make test`).
	Short bool
	// Only lists the scenario numbers to run (1 to 13); empty runs all.
	Only []int
	// Progress, if set, receives one line per step.
	Progress io.Writer
}

// timing holds the phase lengths and the load of a matrix.
type timing struct {
	warm, healthy, fault, after time.Duration
	rate                        float64
	conc                        int
	// latFactor bounds a fault phase's p99 as a multiple of the healthy
	// phase's p99; slack multiplies the recovery bounds of the issues.
	latFactor float64
	slack     float64
	// maxStale is the JWKS max_stale of scenario 8 (the others use 60s).
	maxStale time.Duration
	// settledQ is the quantile of the settled-fault latency rule: p99 in
	// the full run; p95 in -short, whose 150 req/s over a 1 s settled
	// window make the breaker's two half-open probes (each pays the Redis
	// timeout) over 1% of the samples, so that p99 (or p98) would measure
	// the probes, not the fail-open path. Requests that all waited on
	// Redis would move p50 already, so p95 still catches that.
	settledQ float64
	// staysBacked is the share of degraded decisions tolerated where Redis
	// is expected to decide (at maxmemory, once recovered, over a reload):
	// 1% in the full run; 50% in -short, where one stall of the shared
	// host (Redis calls over the 20 ms timeout) opens the breaker for
	// 0.5 s, a third of a short window, while a systematic failure
	// degrades (nearly) every decision.
	staysBacked float64
	poll        time.Duration
	settle      time.Duration
}

var (
	fullTiming = timing{
		warm: 700 * time.Millisecond, healthy: 4 * time.Second, fault: 10 * time.Second, after: 6 * time.Second,
		rate: 400, conc: 8, latFactor: 2, slack: 1, maxStale: 8 * time.Second, staysBacked: 0.01, settledQ: 0.99,
		poll: 100 * time.Millisecond, settle: 8 * time.Second,
	}
	shortTiming = timing{
		warm: 300 * time.Millisecond, healthy: 1200 * time.Millisecond, fault: 2 * time.Second, after: 1500 * time.Millisecond,
		rate: 150, conc: 4, latFactor: 10, slack: 2, maxStale: 4 * time.Second, staysBacked: 0.50, settledQ: 0.95,
		poll: 100 * time.Millisecond, settle: 6 * time.Second,
	}
)

// subjects are the JWT subjects of the load (and so the rate-limit keys).
const subjects = 8

// idpAudience is the audience of every token; the route conf checks it and
// the issuer, as a production conf would.
const idpAudience = "edge-gateway"

// env holds what scenarios share: the servers, the IdP and the tokens.
type env struct {
	opts  Options
	t     timing
	dir   string
	runID string

	redis *backing.Redis
	ch    *backing.ClickHouse
	idp   *idp.Server

	k1, k2, forged *idp.Key
	tokens         map[string][]string // by kind

	// sentinel starts in the background at the beginning (it takes several
	// seconds) when scenario 5 is selected; sentinelDone closes when
	// sentinelGroup/sentinelErr are set.
	sentinelDone  chan struct{}
	sentinelGroup *backing.SentinelGroup
	sentinelErr   error
}

// selected reports whether scenario id runs.
// chaosBatchSize is the logger's batch_size in every scenario.
const chaosBatchSize = 500

func (o Options) selected(id int) bool { return len(o.Only) == 0 || slices.Contains(o.Only, id) }

// startSentinel starts the Sentinel group in the background.
func (e *env) startSentinel() {
	e.sentinelDone = make(chan struct{})
	go func() {
		defer close(e.sentinelDone)
		e.sentinelGroup, e.sentinelErr = backing.StartSentinel(backing.SentinelOptions{})
	}()
}

// takeSentinel waits for the group; the caller owns it from then on.
func (e *env) takeSentinel(ctx context.Context) (*backing.SentinelGroup, error) {
	if e.sentinelDone == nil {
		e.startSentinel()
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-e.sentinelDone:
	}
	g, err := e.sentinelGroup, e.sentinelErr
	e.sentinelGroup = nil
	return g, err
}

func (e *env) logf(format string, args ...any) {
	if e.opts.Progress != nil {
		fmt.Fprintf(e.opts.Progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}

func newEnv(opts Options) (*env, error) {
	e := &env{opts: opts, t: fullTiming, tokens: map[string][]string{}}
	if opts.Short {
		e.t = shortTiming
	}
	if err := backing.Require(); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	dir, err := os.MkdirTemp("", "chaos-")
	if err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	e.dir = dir
	e.runID = strconv.FormatInt(time.Now().Unix(), 36)
	fail := func(err error) (*env, error) {
		e.close()
		return nil, fmt.Errorf("chaos: %w", err)
	}
	for _, k := range []struct {
		dst **idp.Key
		kid string
	}{{&e.k1, "chaos-k1"}, {&e.k2, "chaos-k2"}, {&e.forged, "chaos-k1"}} {
		// forged carries the kid of the real key: only its signature is wrong.
		if *k.dst, err = idp.NewRSA(k.kid, 2048); err != nil {
			return fail(err)
		}
	}
	if e.idp, err = idp.Start(e.k1); err != nil {
		return fail(err)
	}
	now := time.Now()
	for kind, k := range map[string]*idp.Key{kindValid: e.k1, kindNew: e.k2, kindForged: e.forged} {
		for i := 0; i < subjects; i++ {
			tok, err := k.Sign(idp.Claims(fmt.Sprintf("user-%d", i), e.idp.Issuer(), idpAudience, now, nil))
			if err != nil {
				return fail(err)
			}
			e.tokens[kind] = append(e.tokens[kind], tok)
		}
	}
	if opts.selected(5) {
		e.startSentinel()
	}
	e.logf("starting redis-server and clickhouse-server")
	if e.redis, err = backing.StartRedis(backing.RedisOptions{}); err != nil {
		return fail(err)
	}
	if e.ch, err = backing.StartClickHouse(backing.ClickHouseOptions{}); err != nil {
		return fail(err)
	}
	return e, nil
}

func (e *env) close() {
	if e.sentinelDone != nil {
		<-e.sentinelDone
		if e.sentinelGroup != nil {
			_ = e.sentinelGroup.Close()
		}
	}
	if e.idp != nil {
		_ = e.idp.Close()
	}
	if e.redis != nil {
		_ = e.redis.Close()
	}
	if e.ch != nil {
		_ = e.ch.Close()
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

// Request mixes of the load, switched by scenarios while it runs.
const (
	mixNormal   int32 = iota // current-key tokens, 1 in 50 forged
	mixRotating              // half the requests carry a token of the new key
	mixNewOnly               // new-key tokens only (and forged)
	mixDistinct              // a distinct X-Client-Id on every request
)

// runnerConf is what differs between scenarios in the runner config.
type runnerConf struct {
	redisYAML string // the redis section
	spool     bool
	maxStale  time.Duration
	rlKey     string
	limit     int
}

// run is one scenario's execution.
type run struct {
	env *env
	sc  *scenario
	t   timing
	res *Result

	conf     runnerConf
	dir      string
	table    string
	admin    string
	runner   *testbed.Runner
	gw       *testbed.Gateway
	route    *testbed.Route
	rec      recorder
	load     *loadRun
	loads    int
	poll     *poller
	mix      atomic.Int32
	cleanups []func()

	loadStart, healthyStart, faultStart, faultEnd, loadEnd time.Time
	marks                                                  map[string]time.Time

	// Scenario state.
	proxy                    *backing.Proxy
	lruRedis                 *backing.Redis
	sentinel                 *backing.SentinelGroup
	evicted                  int64
	memPeak, memMax          string
	preKill                  *statusDoc
	killAt, respawned, idpUp time.Time
	// repairAt is when the fault's repair began (a restart, a thaw): the
	// fault windows of latency and marking rules end there, since a
	// restarting server burns CPU and a repaired one answers again.
	// redisBack and chBack are when each answered again (default faultEnd).
	repairAt, redisBack, chBack time.Time
}

func (r *run) logf(format string, args ...any) {
	r.env.logf("[%d] "+format, append([]any{r.sc.id}, args...)...)
}

func (r *run) mark(name string) time.Time {
	now := time.Now()
	r.marks[name] = now
	r.logf("%s", name)
	return now
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Run runs the selected scenarios in order and returns their results. An
// error means the matrix could not run at all (a server failed to start);
// a scenario that fails on its own has Result.Err set and a failed verdict.
func Run(ctx context.Context, opts Options) ([]*Result, error) {
	if opts.Runner == "" {
		return nil, errors.New("chaos: runner binary is required")
	}
	for _, id := range opts.Only {
		if id < 1 || id > len(scenarios) {
			return nil, fmt.Errorf("chaos: no scenario %d (1 to %d)", id, len(scenarios))
		}
	}
	e, err := newEnv(opts)
	if err != nil {
		return nil, err
	}
	defer e.close()
	var out []*Result
	for _, sc := range scenarios {
		if !opts.selected(sc.id) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		out = append(out, e.runScenario(ctx, sc))
	}
	return out, ctx.Err()
}

func (e *env) runScenario(ctx context.Context, sc *scenario) *Result {
	r := &run{
		env: e, sc: sc, t: e.t, marks: map[string]time.Time{},
		res: &Result{ID: sc.id, Name: sc.name, Expect: sc.expect, Short: e.opts.Short},
		conf: runnerConf{
			redisYAML: fmt.Sprintf("redis:\n  addrs: [%q]\n", e.redis.Addr()),
			maxStale:  60 * time.Second, rlKey: "consumer",
			limit: max(1, int(e.t.rate/subjects*0.8)),
		},
		table: fmt.Sprintf("chaos_%s_s%02d", e.runID, sc.id),
	}
	began := time.Now()
	e.logf("[%d] %s", sc.id, sc.name)
	err := r.execute(ctx)
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.res.Elapsed = time.Since(began)
	if err != nil {
		r.res.Err = err
		if r.runner != nil {
			r.res.RunnerOutput = tail(r.runner.Output(), 3000)
		}
	}
	if r.runner != nil && r.res.Err == nil && !r.res.Pass() {
		r.res.RunnerOutput = tail(r.runner.Output(), 3000)
	}
	if r.runner != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.runner.Stop(sctx)
		cancel()
	}
	e.logf("[%d] done in %s: pass=%v", sc.id, r.res.Elapsed.Round(time.Millisecond), r.res.Pass())
	return r.res
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// execute prepares, starts the runner, drives the load through the
// scenario's fault and judges.
func (r *run) execute(ctx context.Context) error {
	r.dir = filepath.Join(r.env.dir, fmt.Sprintf("s%02d", r.sc.id))
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return fmt.Errorf("scenario dir: %w", err)
	}
	if r.sc.prepare != nil {
		if err := r.sc.prepare(ctx, r); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	if err := r.startRunner(); err != nil {
		return err
	}
	if err := r.waitWarm(ctx); err != nil {
		return err
	}
	r.poll = startPoller(r.admin, r.t.poll)
	defer r.poll.close()
	r.loadStart = time.Now()
	r.load = r.startLoad(ctx, r.gw)
	stop := func() {
		r.load.end()
		if r.loadEnd.IsZero() {
			r.loadEnd = time.Now()
		}
	}
	defer stop()
	if err := sleep(ctx, r.t.warm); err != nil {
		return err
	}
	r.healthyStart = r.mark("healthy")
	if err := sleep(ctx, r.t.healthy); err != nil {
		return err
	}
	r.faultStart = r.mark("fault begins")
	if err := r.sc.fault(ctx, r); err != nil {
		return fmt.Errorf("fault: %w", err)
	}
	if r.faultEnd.IsZero() {
		r.faultEnd = r.mark("fault ends")
	}
	for _, t := range []*time.Time{&r.repairAt, &r.redisBack, &r.chBack} {
		if t.IsZero() {
			*t = r.faultEnd
		}
	}
	if err := sleep(ctx, r.t.after); err != nil {
		return err
	}
	r.loadEnd = time.Now()
	stop()
	r.settle(ctx)
	r.poll.close()
	return r.judge(ctx)
}

// loadRun is one testbed.Load in the background. It is stopped with Stop,
// not by cancelling: requests in flight finish and are counted, so client
// counts match the runner's exactly.
type loadRun struct {
	stop chan struct{}
	once sync.Once
	done chan struct{}
}

func (r *run) startLoad(ctx context.Context, gw *testbed.Gateway) *loadRun {
	l := &loadRun{stop: make(chan struct{}), done: make(chan struct{})}
	r.loads++
	gen := r.loads // request ids stay unique across loads
	go func() {
		defer close(l.done)
		_, _ = testbed.Load(ctx, testbed.LoadOptions{
			Gateway: gw, Route: r.route, Concurrency: r.t.conc, Rate: r.t.rate,
			Duration: time.Hour, NewRequest: func(w, i int) *testbed.Request { return r.newRequest(gen, w, i) },
			OnResult:       r.rec.add,
			RequestTimeout: 10 * time.Second, Stop: l.stop,
		})
	}()
	return l
}

// end stops the load and waits for the requests in flight.
func (l *loadRun) end() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// newWorkers plays nginx's reload on the gateway side: new workers (a new
// Gateway, empty keep-alive pool) take the new requests, while the old
// ones only finish the requests they have in flight, then close their
// keep-alive connections.
func (r *run) newWorkers(ctx context.Context) {
	gw := testbed.NewGateway(r.runner.SocketPath(), testbed.GatewayOptions{})
	r.runner.OnExit(func(testbed.ExitInfo) { gw.FlushTokens() })
	old, oldGW := r.load, r.gw
	r.gw = gw
	r.load = r.startLoad(ctx, gw)
	old.end()
	_ = oldGW.Close()
}

// startRunner writes the runner config and spawns the runner as APISIX
// would (3 s respawn delay).
func (r *run) startRunner() error {
	port, err := backing.FreePort()
	if err != nil {
		return err
	}
	r.admin = fmt.Sprintf("http://127.0.0.1:%d", port)
	spool := ""
	if r.conf.spool {
		spool = fmt.Sprintf("  spool:\n    enabled: true\n    dir: %q\n    max_bytes: 67108864\n", filepath.Join(r.dir, "spool"))
	}
	cfg := fmt.Sprintf(`log:
  level: warn
  summary_interval: 5s
admin:
  listen: 127.0.0.1:%d
shutdown_timeout: 3s
%sclickhouse:
  addrs: [%q]
  table: %s
  create_table: true
  batch_size: %d
  flush_interval: 200ms
  max_pending: 50000
  dial_timeout: 300ms
  read_timeout: 2s
  shutdown_flush: 1500ms
  retries:
    max_attempts: 2
    backoff: 100ms
    max_backoff: 1s
%sjwks:
  providers:
    - name: idp
      url: %q
      refresh_interval: 1s
      max_stale: %s
      fetch_timeout: 500ms
      snapshot_file: %q
`, port, r.conf.redisYAML, r.env.ch.NativeAddr(), r.table, chaosBatchSize, spool, r.env.idp.URL(), r.conf.maxStale,
		filepath.Join(r.dir, "jwks.snapshot"))
	path := filepath.Join(r.dir, "go-runner.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write runner config: %w", err)
	}
	r.route = &testbed.Route{
		ID: fmt.Sprintf("chaos-%d", r.sc.id),
		PreReq: []testbed.PluginConf{
			{Name: "jwtcache", Value: fmt.Sprintf(`{"provider":"idp","issuer":%q,"audience":%q}`, r.env.idp.Issuer(), idpAudience)},
			{Name: "ratelimit", Value: fmt.Sprintf(`{"limit":%d,"window":"1s","key":%q,"name":"chaos-s%02d"}`, r.conf.limit, r.conf.rlKey, r.sc.id)},
		},
		PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: fmt.Sprintf(`{"route_id":"chaos-%d"}`, r.sc.id)}},
	}
	r.runner, err = testbed.StartRunner(testbed.RunnerOptions{
		Path: r.env.opts.Runner, Args: []string{"run", "-c", path},
		Dir: r.dir, RespawnDelay: 3 * time.Second,
	})
	if err != nil {
		return err
	}
	r.gw = testbed.NewGateway(r.runner.SocketPath(), testbed.GatewayOptions{})
	gw := r.gw
	r.runner.OnExit(func(testbed.ExitInfo) { gw.FlushTokens() })
	wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.runner.WaitReady(wctx); err != nil {
		return fmt.Errorf("runner: %w\n%s", err, tail(r.runner.Output(), 2000))
	}
	return nil
}

// waitWarm waits until the runner reports Redis and the JWKS provider ok,
// so that the healthy phase is healthy.
func (r *run) waitWarm(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		d, err := fetchStatus(ctx, r.admin)
		if err == nil {
			rs, js := d.backendState("redis"), d.backendState("jwks:idp")
			if rs == "ok" && js == "ok" {
				return nil
			}
			last = fmt.Sprintf("redis %q, jwks:idp %q", rs, js)
		} else {
			last = err.Error()
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("runner not warm after 20s: %s", last)
}

// newRequest builds load request i: a token of the current mix, a
// composite log variable as APISIX's nginx map would give it.
func (r *run) newRequest(gen, w, i int) *testbed.Request {
	mix := r.mix.Load()
	kind := kindValid
	switch {
	case i%50 == 7:
		kind = kindForged
	case mix == mixNewOnly, mix == mixRotating && i%2 == 1:
		kind = kindNew
	}
	sub := i % subjects
	tok := r.env.tokens[kind][sub]
	h := http.Header{}
	h.Set("Host", "api.chaos.test")
	h.Set("Authorization", "Bearer "+tok)
	h.Set("User-Agent", "edgechaos/1")
	h.Set("X-Chaos-Kind", kind)
	rid := "chaos-" + strconv.Itoa(gen) + "-" + strconv.Itoa(i)
	h.Set("X-Request-Id", rid)
	client := "c-" + strconv.Itoa(sub)
	if mix == mixDistinct {
		client = "c-" + strconv.Itoa(i)
	}
	h.Set("X-Client-Id", client)
	ip := net.IPv4(10, 9, byte(w), byte(1+i%200))
	path := "/api/v1/items/" + strconv.Itoa(i%97)
	composite := strings.Join([]string{"e1", "0.001", "GET", "api.chaos.test", path, ip.String(),
		"edgechaos/1", rid, "", "", "user-" + strconv.Itoa(sub)}, "\n")
	return &testbed.Request{
		Method: "GET", Path: path, Headers: h, SrcIP: ip,
		Vars: map[string]string{"edge_log_fields": composite},
	}
}

// settle waits until the logger has nothing pending (rows in memory or in
// the spool), or settle has passed.
func (r *run) settle(ctx context.Context) {
	deadline := time.Now().Add(r.t.settle)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		d, err := fetchStatus(ctx, r.admin)
		if err == nil && d.Plugins.Logger.pending() == 0 {
			return
		}
		_ = sleep(ctx, 100*time.Millisecond)
	}
}
