package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/redis/go-redis/v9"
)

// rlConfig is a runner config with the admin listener on adminPort (0:
// off) and the given redis section body (indented YAML under "redis:").
func rlConfig(adminPort int, redis string) string {
	admin := "admin:\n  listen: \"off\"\n"
	if adminPort != 0 {
		admin = fmt.Sprintf("admin:\n  listen: 127.0.0.1:%d\n", adminPort)
	}
	return admin + "redis:\n" + redis
}

// rlStandalone is the redis section for one server.
func rlStandalone(addr string) string {
	return fmt.Sprintf("  addrs: [%q]\n", addr)
}

func rlRoute(id, conf string) *testbed.Route {
	return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: conf}}}
}

func rlReq(ip string) *testbed.Request {
	return &testbed.Request{Method: "GET", Path: "/", SrcIP: net.ParseIP(ip)}
}

func rlAdminPort(t *testing.T) int {
	t.Helper()
	p, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rlStatus reads the redis backend state from /status.
func rlStatus(t *testing.T, port int) string {
	t.Helper()
	_, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/status", port))
	var st core.Snapshot
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status: %v in %q", err, body)
	}
	return string(st.Backends["redis"].State)
}

// TestRLExactness: N+k requests in one window through the real binary give
// N allowed (proxied, with the limit headers) and k rejected (Stop 429 with
// Retry-After), and the counter is per key.
func TestRLExactness(t *testing.T) {
	backing.MustRequire(t, backing.RedisServer)
	rd := backing.MustRedis(t, backing.RedisOptions{})
	r := startRunner(t, rlConfig(0, rlStandalone(rd.Addr())), testbed.RunnerOptions{})
	g := newGateway(t, r)
	route := rlRoute("rl-exact", `{"limit":5,"window":"1m","rejected_msg":"slow down"}`)
	const n, k = 5, 4
	for i := 0; i < n+k; i++ {
		res := do(t, g, route, rlReq("198.51.100.1"))
		if i < n {
			if res.Status != 200 || !res.UpstreamCalled {
				t.Fatalf("request %d: got %d upstream %v (%v), want 200 proxied", i, res.Status, res.UpstreamCalled, res.Err)
			}
			if got, want := res.Headers.Get("X-RateLimit-Remaining"), strconv.Itoa(n-1-i); got != want || res.Headers.Get("X-RateLimit-Limit") != "5" {
				t.Fatalf("request %d: got remaining %q limit %q, want %q and 5", i, got, res.Headers.Get("X-RateLimit-Limit"), want)
			}
			if res.Headers.Get("X-RateLimit-Reset") == "" || res.Headers.Get("X-RateLimit-Status") != "" {
				t.Fatalf("request %d: got headers %v, want a reset and no status", i, res.Headers)
			}
			continue
		}
		if res.Status != 429 || res.UpstreamCalled {
			t.Fatalf("request %d: got %d upstream %v, want 429 without upstream", i, res.Status, res.UpstreamCalled)
		}
		if res.Headers.Get("Retry-After") == "" || res.Headers.Get("X-RateLimit-Remaining") != "0" || string(res.Body) != `{"error_msg":"slow down"}` {
			t.Fatalf("request %d: got headers %v body %q", i, res.Headers, res.Body)
		}
	}
	if res := do(t, g, route, rlReq("198.51.100.2")); res.Status != 200 {
		t.Fatalf("another address: got %d, want 200", res.Status)
	}
}

// TestRLInvalidConfRejects500: a conf that fails validation never turns
// limiting off: the route's requests get 500 from the guard.
func TestRLInvalidConfRejects500(t *testing.T) {
	r := startRunner(t, rlConfig(0, rlStandalone("127.0.0.1:1")), testbed.RunnerOptions{})
	g := newGateway(t, r)
	for _, conf := range []string{`{"limit":0,"window":"1s"}`, `{"limit":5,"window":"1s","fail_mod":"open"}`, `not json`} {
		res := do(t, g, rlRoute("rl-bad-"+strconv.Itoa(len(conf)), conf), nil)
		if res.Status != 500 || res.UpstreamCalled || string(res.Body) != core.InvalidConfBody {
			t.Errorf("conf %s: got %d upstream %v body %q, want 500 %s", conf, res.Status, res.UpstreamCalled, res.Body, core.InvalidConfBody)
		}
	}
	if !strings.Contains(r.Output(), "limit: is required") {
		t.Errorf("runner output does not name the field and rule:\n%s", r.Output())
	}
}

// TestRLFailModesDegraded: Redis unreachable (a closed port). open allows,
// closed answers 503, local limits per runner; all are marked degraded,
// and /status shows the redis backend down.
func TestRLFailModesDegraded(t *testing.T) {
	port := rlAdminPort(t)
	closed := rlAdminPort(t) // nothing listens there
	r := startRunner(t, rlConfig(port, rlStandalone(fmt.Sprintf("127.0.0.1:%d", closed))), testbed.RunnerOptions{})
	g := newGateway(t, r)
	tests := []struct {
		conf  string
		codes []int
	}{
		{`{"limit":1,"window":"1m"}`, []int{200, 200, 200}},
		{`{"limit":1,"window":"1m","fail_mode":"closed"}`, []int{503, 503}},
		{`{"limit":2,"window":"1m","fail_mode":"local"}`, []int{200, 200, 429, 429}},
	}
	for i, tt := range tests {
		route := rlRoute("rl-fail-"+strconv.Itoa(i), tt.conf)
		for j, want := range tt.codes {
			res := do(t, g, route, rlReq("198.51.100.1"))
			if res.Status != want || res.Headers.Get("X-RateLimit-Status") != "degraded" {
				t.Errorf("%s request %d: got %d status %q, want %d degraded", tt.conf, j, res.Status, res.Headers.Get("X-RateLimit-Status"), want)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for rlStatus(t, port) != "down" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if s := rlStatus(t, port); s != "down" {
		t.Fatalf("got /status redis %q, want down", s)
	}
	_, metrics := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	for _, want := range []string{
		`apisix_edge_ratelimit_decisions_total{outcome="degraded_open"} 3`,
		`apisix_edge_ratelimit_decisions_total{outcome="degraded_closed"} 2`,
		`apisix_edge_ratelimit_decisions_total{outcome="local_rejected"} 2`,
		`apisix_edge_ratelimit_breaker_state 2`,
		`apisix_edge_backend_state{backend="redis",state="down"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(r.Output(), "FAILING OPEN") {
		t.Errorf("runner output lacks the FAILING OPEN line:\n%s", r.Output())
	}
}

// rlOutcome is one response seen by rlHammer.
type rlOutcome struct {
	start, end time.Time
	status     int
	degraded   bool
}

// rlHammer sends requests from c workers on route until stop is closed.
func rlHammer(g *testbed.Gateway, route *testbed.Route, c int, stop <-chan struct{}) func() []rlOutcome {
	var mu sync.Mutex
	var out []rlOutcome
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = testbed.Load(context.Background(), testbed.LoadOptions{
			Gateway: g, Route: route, Concurrency: c, Duration: time.Hour, Stop: stop,
			RequestTimeout: 10 * time.Second,
			NewRequest: func(_, i int) *testbed.Request {
				n := i + 1 // numbered from 1
				// Half the traffic on one hot key (limited), half on fresh
				// keys (allowed), so that Redis is asked all the time.
				if n%2 == 1 {
					return rlReq(fmt.Sprintf("10.%d.%d.%d", byte(n>>16), byte(n>>8), byte(n)))
				}
				return rlReq("198.51.100.1")
			},
			OnResult: func(lr testbed.LoadResult) {
				o := rlOutcome{start: lr.Start, end: lr.Start.Add(lr.Latency)}
				if lr.Err == nil {
					o.status = lr.Result.Status
					o.degraded = lr.Result.Headers.Get("X-RateLimit-Status") == "degraded"
				}
				mu.Lock()
				out = append(out, o)
				mu.Unlock()
			},
		})
	}()
	return func() []rlOutcome {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return out
	}
}

// TestRLRedisKilledUnderLoad: Redis is killed under load and restarted.
// No response is anything but allowed (200) or limited (429); every
// response to a request made while Redis was dead is marked degraded; and
// Redis-backed decisions resume within 3 s of the restart.
func TestRLRedisKilledUnderLoad(t *testing.T) {
	for _, alg := range rlAlgorithms {
		t.Run(alg, func(t *testing.T) { rlRedisKilledUnderLoad(t, alg) })
	}
}

// rlAlgorithms are the algorithms every resilience test runs with.
var rlAlgorithms = []string{"sliding_log", "sliding_window", "fixed_window"}

func rlRedisKilledUnderLoad(t *testing.T, alg string) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	r := startRunner(t, rlConfig(0, rlStandalone(rd.Addr())), testbed.RunnerOptions{})
	g := newGateway(t, r)
	route := rlRoute("rl-kill", `{"limit":100,"window":"1s","algorithm":"`+alg+`"}`)
	stop := make(chan struct{})
	wait := rlHammer(g, route, 8, stop)
	time.Sleep(500 * time.Millisecond)
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(1500 * time.Millisecond)
	restartAt := time.Now()
	if err := rd.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	// Poll for the first Redis-backed decision after the restart.
	var resumed time.Time
	for time.Since(restarted) < 10*time.Second {
		res := do(t, g, route, rlReq("203.0.113.77"))
		if res.Status == 200 && res.Headers.Get("X-RateLimit-Status") == "" {
			resumed = time.Now()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	outs := wait()
	// The runner learns of the outage from its first failed call. Before
	// that, only keys Redis had already reported over their limit can be
	// answered (from the over-limit cache, exactly): never an allowed
	// request without Redis.
	var detected time.Time
	for _, o := range outs {
		if o.degraded && o.start.After(killed) && (detected.IsZero() || o.end.Before(detected)) {
			detected = o.end
		}
	}
	if detected.IsZero() || detected.Sub(killed) > time.Second {
		t.Fatalf("first degraded response %v after the kill, want within 1s", detected.Sub(killed))
	}
	var inOutage, total, limited int
	for _, o := range outs {
		total++
		if o.status != 200 && o.status != 429 {
			t.Errorf("got status %d at %s, want only 200 or 429", o.status, o.start.Sub(killed))
		}
		if o.status == 429 {
			limited++
		}
		if o.start.After(killed) && o.end.Before(restartAt) {
			if o.status == 200 && !o.degraded {
				t.Errorf("request at %s into the outage allowed without the degraded mark", o.start.Sub(killed))
			}
			if o.start.After(detected) {
				inOutage++
				if !o.degraded {
					t.Errorf("response %d at %s into the outage (after detection) not marked degraded", o.status, o.start.Sub(killed))
				}
			}
		}
	}
	if inOutage == 0 {
		t.Fatalf("no request ran during the outage (of %d)", total)
	}
	if resumed.IsZero() || resumed.Sub(restarted) > 3*time.Second {
		t.Fatalf("Redis-backed decisions resumed %v after the restart, want within 3s", resumed.Sub(restarted))
	}
	t.Logf("%d responses (%d limited); outage detected %v after the kill; %d responses after that, all degraded; Redis decisions resumed %v after restart",
		total, limited, detected.Sub(killed).Round(time.Microsecond), inOutage, resumed.Sub(restarted).Round(time.Millisecond))
}

// TestRLSentinelFailover: the runner follows a Sentinel failover; after the
// master is killed, Redis-backed decisions resume on the new master, and
// the limit still holds there.
func TestRLSentinelFailover(t *testing.T) {
	backing.MustRequire(t, backing.RedisServer, backing.RedisSentinel)
	sg := backing.MustSentinel(t, backing.SentinelOptions{Password: "s3cret"})
	addrs := `["` + strings.Join(sg.SentinelAddrs(), `", "`) + `"]`
	// A generous call timeout: this test is about the failover, and a
	// decision over the default 20 ms on a loaded machine answers degraded.
	cfg := rlConfig(0, fmt.Sprintf("  mode: sentinel\n  addrs: %s\n  master_name: %s\n  password: ${RL_REDIS_PASSWORD}\n  timeout: 1s\n", addrs, sg.MasterName()))
	r := startRunner(t, cfg, testbed.RunnerOptions{ExtraEnv: []string{"RL_REDIS_PASSWORD=s3cret"}})
	g := newGateway(t, r)
	routes := map[string]*testbed.Route{}
	for _, alg := range rlAlgorithms {
		routes[alg] = rlRoute("rl-sentinel-"+alg, `{"limit":3,"window":"1m","algorithm":"`+alg+`"}`)
		rlWaitRedisDecision(t, g, routes[alg], "198.51.100.1", 5*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old, err := sg.KillMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sg.WaitNewMaster(ctx, old); err != nil {
		t.Fatal(err)
	}
	// On the new master (an async replica: counts may be lost) decisions
	// are Redis-backed again, and a fresh key is limited exactly.
	took := rlWaitRedisDecision(t, g, routes[rlAlgorithms[0]], "198.51.100.2", 10*time.Second)
	for _, alg := range rlAlgorithms {
		route := routes[alg]
		if alg != rlAlgorithms[0] {
			rlWaitRedisDecision(t, g, route, "198.51.100.2", 10*time.Second)
		}
		for i := 1; i < 5; i++ {
			res := do(t, g, route, rlReq("198.51.100.2"))
			want := 200
			if i >= 3 {
				want = 429
			}
			if res.Status != want || res.Headers.Get("X-RateLimit-Status") != "" {
				t.Fatalf("%s after failover, request %d: got %d %q, want %d from Redis", alg, i, res.Status, res.Headers.Get("X-RateLimit-Status"), want)
			}
		}
	}
	t.Logf("Redis-backed decisions on the new master %v after sentinels elected it", took.Round(time.Millisecond))
}

// TestRLCluster: against a 3-master Redis Cluster every decision is made
// by Redis and each key, whatever its slot, is limited exactly.
func TestRLCluster(t *testing.T) {
	cl := backing.MustCluster(t, backing.ClusterOptions{})
	addrs := `["` + strings.Join(cl.Addrs(), `", "`) + `"]`
	// A generous call timeout, and Redis deciding before the checks
	// start: this test is about exact counts across slots, and a decision
	// over the default timeout on a loaded machine (or during the
	// cluster's first seconds) answers degraded (it failed so once in CI).
	r := startRunner(t, rlConfig(0, fmt.Sprintf("  mode: cluster\n  addrs: %s\n  timeout: 1s\n", addrs)), testbed.RunnerOptions{})
	g := newGateway(t, r)
	rlWaitRedisDecision(t, g, rlRoute("rl-cluster-warmup", `{"limit":1000,"window":"1m"}`), "198.51.100.9", 10*time.Second)
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"}
	// Each algorithm alone, and three rules on one request (their keys
	// share the user's hash tag, so one script call covers them).
	confs := map[string]string{
		"three_rules": `{"key":"header:X-User","tenant_header":"X-Tenant","rules":[{"limit":2,"window":"1m"},
			{"limit":5,"window":"1h","algorithm":"sliding_window"},{"limit":9,"window":"24h","algorithm":"fixed_window","key":["header:X-User","route"]}]}`,
	}
	for _, alg := range rlAlgorithms {
		confs[alg] = `{"limit":2,"window":"1m","key":"header:X-User","tenant_header":"X-Tenant","algorithm":"` + alg + `"}`
	}
	for name, conf := range confs {
		route := rlRoute("rl-cluster-"+name, conf)
		for _, u := range users {
			for i := 0; i < 3; i++ {
				req := rlReq("198.51.100.1")
				req.Headers = http.Header{"X-User": {u}, "X-Tenant": {"t-" + u}}
				res := do(t, g, route, req)
				want := 200
				if i == 2 {
					want = 429
				}
				if res.Status != want || res.Headers.Get("X-RateLimit-Status") != "" {
					t.Fatalf("%s, user %s request %d: got %d %q (%v), want %d from Redis", name, u, i, res.Status, res.Headers.Get("X-RateLimit-Status"), res.Err, want)
				}
			}
		}
	}
	// The counters are spread over the masters.
	c := cl.Client()
	defer c.Close()
	var mu sync.Mutex
	perNode := map[string]int{}
	_ = c.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
		keys, _ := n.Keys(ctx, "edge:rl:*").Result()
		mu.Lock()
		perNode[n.Options().Addr] = len(keys)
		mu.Unlock()
		return nil
	})
	used := 0
	for _, n := range perNode {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("got counters on %d masters (%v), want them spread", used, perNode)
	}
}

// rlWaitRedisDecision polls until a request on ip is decided by Redis (200
// without the degraded marker) and returns how long it took.
func rlWaitRedisDecision(t *testing.T, g *testbed.Gateway, route *testbed.Route, ip string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		res := do(t, g, route, rlReq(ip))
		if res.Status == 200 && res.Headers.Get("X-RateLimit-Status") == "" {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no Redis-backed decision within %v", within)
	return 0
}

// TestRLRedisDeadAtStartLogsThroughTheThrottle: a runner started while its
// Redis is unreachable (a port nothing listens on) keeps go-redis' own
// lines (its pool's failed dials, written to stderr with its default
// "redis: " logger) out of the log: they go through the log throttle,
// which the plugin installs before its client first dials.
func TestRLRedisDeadAtStartLogsThroughTheThrottle(t *testing.T) {
	dead, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	redisSection := rlStandalone(fmt.Sprintf("127.0.0.1:%d", dead)) + "  min_idle_conns: 8\n  dial_timeout: 50ms\n"
	for range 3 { // each start races the client's first dials against the logger
		r := startRunner(t, rlConfig(0, redisSection), testbed.RunnerOptions{})
		g := newGateway(t, r)
		route := rlRoute("1", `{"limit":10,"window":"1s"}`)
		for range 20 {
			if res := do(t, g, route, rlReq("10.0.0.1")); res.Status != 200 {
				t.Fatalf("redis unreachable, fail_mode open: got status %d, want 200", res.Status)
			}
		}
		eventually(t, 10*time.Second, "go-redis' failed dials in the throttle", func() bool {
			return strings.Contains(r.Output(), "ratelimit: go-redis")
		})
		_ = r.Stop(context.Background())
		for _, line := range strings.Split(r.Output(), "\n") {
			if strings.HasPrefix(line, "redis: ") || strings.Contains(line, "pool.go:") {
				t.Fatalf("go-redis wrote to stderr past the throttle: %q\n%s", line, r.Output())
			}
		}
	}
}
