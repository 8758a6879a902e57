package ratelimit

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// testReq is the framework's request as a plugin sees it (pkgHTTP.Request),
// filled in by the test. It stands in for the framework, not for a backing
// service.
type testReq struct {
	ip    net.IP
	hdr   http.Header
	args  url.Values
	vars  map[string]string
	resp  http.Header
	nVars int
	cv    map[any]any // values of the call (core.CallValues)
}

func (r *testReq) SetCallValue(k, v any) {
	if r.cv == nil {
		r.cv = map[any]any{}
	}
	r.cv[k] = v
}

func (r *testReq) CallValue(k any) any { return r.cv[k] }

// evalOne sends one sliding-log decision for key straight to eval.
func evalOne(r *RateLimit, key string) error {
	c, err := ParseConf([]byte(`{"limit":100,"window":"1m"}`))
	if err != nil {
		return err
	}
	d := &decision{n: 1}
	d.keys[0], d.limit[0], d.window[0], d.cost[0] = key, 100, time.Minute, 1
	_, err = r.eval(c, d, time.Now())
	return err
}

func newReq(ip string) *testReq {
	return &testReq{ip: net.ParseIP(ip), hdr: http.Header{}, args: url.Values{}, resp: http.Header{}}
}

type testHeader struct{ h http.Header }

func (h testHeader) Set(k, v string)     { h.h.Set(k, v) }
func (h testHeader) Del(k string)        { h.h.Del(k) }
func (h testHeader) Get(k string) string { return h.h.Get(k) }
func (h testHeader) View() http.Header   { return h.h }

func (r *testReq) ID() uint32               { return 1 }
func (r *testReq) SrcIP() net.IP            { return r.ip }
func (r *testReq) Method() string           { return "GET" }
func (r *testReq) Path() []byte             { return []byte("/") }
func (r *testReq) SetPath([]byte)           {}
func (r *testReq) Header() pkgHTTP.Header   { return testHeader{r.hdr} }
func (r *testReq) Args() url.Values         { return r.args }
func (r *testReq) Body() ([]byte, error)    { return nil, nil }
func (r *testReq) Context() context.Context { return context.Background() }
func (r *testReq) RespHeader() http.Header  { return r.resp }
func (r *testReq) Var(name string) ([]byte, error) {
	r.nVars++
	return []byte(r.vars[name]), nil
}

// clock is a movable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is one plugin under test with its registry.
type env struct {
	rl  *RateLimit
	reg *prometheus.Registry
	st  *core.Status
}

// redisCfg is the redis section for addr with every default.
func redisCfg(t testing.TB, addr string, edit func(*Config)) Config {
	t.Helper()
	doc := "redis:\n  addrs: [\"" + addr + "\"]\n"
	var c struct {
		Redis Config `yaml:"redis"`
	}
	if err := core.DecodeYAML([]byte(doc), nil, &c); err != nil {
		t.Fatal(err)
	}
	c.Redis.ApplyDefaults()
	if err := errors.Join(c.Redis.Validate()...); err != nil {
		t.Fatal(err)
	}
	r := c.Redis
	if edit != nil {
		edit(&r)
	}
	return r
}

func newEnv(t testing.TB, cfg Config, opts ...Option) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	st := core.NewStatus("test", nil)
	deps := core.Deps{Log: zap.NewNop(), Throttle: core.NewLogThrottle(zap.NewNop(), time.Minute), Metrics: reg, Status: st}
	rl, err := New(cfg, deps, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rl.Shutdown(context.Background()) })
	// What Start does besides warming up: the counter commands are on
	// against Redis 7 (a lone O(1) rule then takes evalCounter).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	rl.checkVersions(ctx)
	cancel()
	return &env{rl: rl, reg: reg, st: st}
}

func mustConf(t testing.TB, s string) *Conf {
	t.Helper()
	c, err := ParseConf([]byte(s))
	if err != nil {
		t.Fatalf("ParseConf(%s): %v", s, err)
	}
	return c
}

// result is one decision as the client would see it.
type result struct {
	status int // 0: the request goes on to the upstream
	hdr    http.Header
	body   string
}

func (e *env) do(c *Conf, r *testReq) result {
	w := httptest.NewRecorder()
	w.Code = 0
	e.rl.RequestFilter(c, w, r)
	if w.Code == 0 && w.Body.Len() == 0 {
		return result{hdr: r.resp}
	}
	return result{status: w.Code, hdr: w.Header(), body: w.Body.String()}
}

func (e *env) decisions(o outcome) int {
	return int(testutil.ToFloat64(e.rl.met.decisions[o]))
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t testing.TB) string {
	t.Helper()
	p, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// dtoMetric reads histogram sample counts from the registry.
type dtoMetric struct{}

func (dtoMetric) histCount(t testing.TB, e *env, result string) uint64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "apisix_edge_ratelimit_redis_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

func splitLines(s string) []string { return strings.Split(strings.ReplaceAll(s, "\r", ""), "\n") }

func cutPrefix(s, p string) (string, bool) { return strings.CutPrefix(s, p) }

func nopLog() *zap.Logger { return zap.NewNop() }

// doPlugin runs a framework plugin (e.g. the guarded module) on r.
func doPlugin(p plugin.Plugin, conf any, r *testReq) result {
	w := httptest.NewRecorder()
	w.Code = 0
	p.RequestFilter(conf, w, r)
	if w.Code == 0 && w.Body.Len() == 0 {
		return result{hdr: r.resp}
	}
	return result{status: w.Code, hdr: w.Header(), body: w.Body.String()}
}

// startAndSync starts the plugin as the runner does and waits for its
// first reading of Redis' clock, so that the sliding log is decided as in
// production (by commands). With a test clock (WithClock) there is no
// reading to wait for.
func startAndSync(t testing.TB, e *env) {
	t.Helper()
	e.rl.Start(context.Background())
	if e.rl.clock {
		return // an injected clock (WithClock) reads no Redis clock
	}
	deadline := time.Now().Add(5 * time.Second)
	for !e.rl.synced.Load() {
		if time.Now().After(deadline) {
			t.Fatal("got no reading of Redis' clock within 5s of Start")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
