package ratelimit

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestExactnessAndSliding moves the clock (the script is given the
// runner's time through WithClock) and checks each decision of a
// 3-per-second sliding window against real Redis.
func TestExactnessAndSliding(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(clk.now))
	c := mustConf(t, `{"limit":3,"window":"1s"}`)
	ms := time.Millisecond
	steps := []struct {
		at        time.Duration // since the start
		status    int           // 0: allowed
		remaining string
		reset     string
		outcome   outcome
	}{
		{0, 0, "2", "1", outAllowed},
		{400 * ms, 0, "1", "1", outAllowed},
		{400 * ms, 0, "0", "1", outAllowed},
		{500 * ms, 429, "0", "1", outRejected},       // next slot at 1000
		{999 * ms, 429, "0", "1", outRejectedCached}, // no Redis trip
		{1000 * ms, 0, "0", "1", outAllowed},         // the entry of t=0 left
		{1001 * ms, 429, "0", "1", outRejected},      // 400,400,1000 in window
		{1400 * ms, 0, "1", "1", outAllowed},         // both 400s left: 1000,1400
		{2399 * ms, 0, "1", "1", outAllowed},         // 1400,2399 (1000 left at 2000)
		{2400 * ms, 0, "1", "1", outAllowed},         // 2399,2400 (1400 left)
		{2401 * ms, 0, "0", "1", outAllowed},         // 2399,2400,2401
		{2402 * ms, 429, "0", "1", outRejected},      // retry at 3399
	}
	start := clk.now()
	for i, s := range steps {
		clk.t = start.Add(s.at)
		before := e.decisions(s.outcome)
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != s.status {
			t.Fatalf("step %d at %s: got status %d, want %d", i, s.at, res.status, s.status)
		}
		if got := res.hdr.Get(hdrRemaining); got != s.remaining {
			t.Errorf("step %d: got remaining %q, want %q", i, got, s.remaining)
		}
		if got := res.hdr.Get(hdrReset); got != s.reset {
			t.Errorf("step %d: got reset %q, want %q", i, got, s.reset)
		}
		if res.hdr.Get(hdrLimit) != "3" || res.hdr.Get(hdrStatus) != "" {
			t.Errorf("step %d: got limit %q status %q, want 3 and no status", i, res.hdr.Get(hdrLimit), res.hdr.Get(hdrStatus))
		}
		if s.status != 0 && (res.hdr.Get(hdrRetryAfter) == "" || res.body != `{"error_msg":"too many requests"}`) {
			t.Errorf("step %d: got Retry-After %q body %q", i, res.hdr.Get(hdrRetryAfter), res.body)
		}
		if got := e.decisions(s.outcome); got != before+1 {
			t.Errorf("step %d: got %s counted %d times, want %d", i, s.outcome, got, before+1)
		}
	}
	// The key expires with the window.
	cl := rd.Client()
	defer cl.Close()
	keys, err := cl.Keys(context.Background(), "edge:rl:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("got keys %v (%v), want one counter", keys, err)
	}
	if ttl := cl.PTTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > time.Second {
		t.Fatalf("got TTL %s, want (0, 1s]", ttl)
	}
}

// TestConcurrentExactness: N+k concurrent requests in one window with
// Redis' own clock give exactly N allowed (members are unique under
// concurrency, the script is atomic).
func TestConcurrentExactness(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	for _, pipe := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipeline=%v", pipe), func(t *testing.T) {
			e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
				r.Pipeline = &pipe
				r.Timeout = core.Duration(2 * time.Second) // exactness, not speed, under -race
			}))
			c := mustConf(t, `{"limit":100,"window":"1m","key":"header:X-Key","name":"conc-`+strconv.FormatBool(pipe)+`"}`)
			const n, k = 100, 60
			var wg sync.WaitGroup
			statuses := make([]int, n+k)
			for i := 0; i < n+k; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					r := newReq("192.0.2.1")
					r.hdr.Set("X-Key", "same")
					statuses[i] = e.do(c, r).status
				}(i)
			}
			wg.Wait()
			allowed, rejected := 0, 0
			for _, s := range statuses {
				switch s {
				case 0:
					allowed++
				case 429:
					rejected++
				}
			}
			if allowed != n || rejected != k {
				t.Fatalf("got %d allowed %d rejected, want %d and %d", allowed, rejected, n, k)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	yearIdx := strconv.FormatInt(time.Now().UnixMilli()/(8784*time.Hour).Milliseconds(), 10)
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), nil))
	cl := rd.Client()
	defer cl.Close()
	tests := []struct {
		name     string
		conf     string
		req      func(*testReq)
		wantKey  string
		fallback bool
	}{
		{"remote_addr", `{"limit":5,"window":"1m","name":"k1"}`, nil, "edge:rl:{n:k1||a:192.0.2.9}", false},
		{"header", `{"limit":5,"window":"1m","name":"k2","key":"header:X-Api-Key"}`, func(r *testReq) { r.hdr.Set("X-Api-Key", "key-1") }, "edge:rl:{n:k2||h:key-1}", false},
		{"header missing falls back", `{"limit":5,"window":"1m","name":"k3","key":"header:X-Api-Key"}`, nil, "edge:rl:{n:k3||a:192.0.2.9}", true},
		{"arg", `{"limit":5,"window":"1m","name":"k4","key":"arg:user"}`, func(r *testReq) { r.args.Set("user", "bob") }, "edge:rl:{n:k4||q:bob}", false},
		{"var", `{"limit":5,"window":"1m","name":"k5","key":"var:route_id"}`, func(r *testReq) { r.vars = map[string]string{"route_id": "r7"} }, "edge:rl:{n:k5||v:r7}", false},
		{"consumer", `{"limit":5,"window":"1m","name":"k6","key":"consumer"}`, func(r *testReq) { core.SetVerifiedConsumer(r, "alice") }, "edge:rl:{n:k6||c:alice}", false},
		{"consumer missing falls back", `{"limit":5,"window":"1m","name":"k7","key":"consumer"}`, nil, "edge:rl:{n:k7||a:192.0.2.9}", true},
		{"consumer header is never read", `{"limit":5,"window":"1m","name":"k7b","key":"consumer"}`, func(r *testReq) { r.hdr.Set(core.ConsumerHeader, "mallory") }, "edge:rl:{n:k7b||a:192.0.2.9}", true},
		{"parts", `{"limit":5,"window":"1m","name":"k10","key":["consumer","header:X-Api-Key"]}`, func(r *testReq) {
			core.SetVerifiedConsumer(r, "alice")
			r.hdr.Set("X-Api-Key", "key-1")
		}, "edge:rl:{n:k10||c:alice|h:key-1}", false},
		{"const", `{"limit":5,"window":"1m","name":"k11","key":"const:global"}`, nil, "edge:rl:{n:k11||k:global}", false},
		{"route", `{"limit":5,"window":"1m","name":"k12","key":["route","remote_addr"]}`, func(r *testReq) { r.vars = map[string]string{"route_id": "r9"} }, "edge:rl:{n:k12||r:r9|a:192.0.2.9}", false},
		// The O(1) algorithms add the window's index (366-day windows: it
		// changes once a year, not during the test).
		{"fixed_window rule", `{"limit":5,"window":"8784h","name":"k13","algorithm":"fixed_window"}`, nil, "edge:rl:{n:k13||a:192.0.2.9}:f31622400000:" + yearIdx, false},
		{"rules share the common part as hash tag", `{"name":"k14","key":"consumer","rules":[{"limit":5,"window":"1s"},{"limit":50,"window":"8784h","algorithm":"sliding_window","key":["consumer","arg:u"]}]}`, func(r *testReq) {
			core.SetVerifiedConsumer(r, "bob")
			r.args.Set("u", "x")
		}, "edge:rl:{n:k14||c:bob}:s31622400000|q:x:" + yearIdx, false},
		{"huge header is hashed", `{"limit":5,"window":"1m","name":"k8","key":"header:X-Api-Key"}`, func(r *testReq) { r.hdr.Set("X-Api-Key", string(make([]byte, 100000))) },
			"edge:rl:{n:k8||h:" + boundKey(string(make([]byte, 100000))) + "}", false},
		{"tenant", `{"limit":5,"window":"1m","name":"k9","tenant_header":"X-Tenant"}`, func(r *testReq) { r.hdr.Set("X-Tenant", "acme") }, "edge:rl:{n:k9|acme|a:192.0.2.9}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReq("192.0.2.9")
			if tt.req != nil {
				tt.req(r)
			}
			before := testutil.ToFloat64(e.rl.met.fallbacks)
			if res := e.do(mustConf(t, tt.conf), r); res.status != 0 {
				t.Fatalf("got status %d, want allowed", res.status)
			}
			if n := cl.Exists(context.Background(), tt.wantKey).Val(); n != 1 {
				keys, _ := cl.Keys(context.Background(), "edge:rl:*").Result()
				t.Fatalf("got no key %.80q (keys: %.300q)", tt.wantKey, keys)
			}
			if got := testutil.ToFloat64(e.rl.met.fallbacks) - before; (got == 1) != tt.fallback {
				t.Fatalf("got %v fallbacks counted, want fallback=%v", got, tt.fallback)
			}
		})
	}
}

// TestFailModes: with Redis unreachable, each fail_mode answers as
// specified and every decision is marked degraded.
func TestFailModes(t *testing.T) {
	e := newEnv(t, redisCfg(t, closedAddr(t), nil))
	t.Run("open", func(t *testing.T) {
		c := mustConf(t, `{"limit":1,"window":"1m"}`)
		for i := 0; i < 3; i++ {
			res := e.do(c, newReq("192.0.2.1"))
			if res.status != 0 || res.hdr.Get(hdrStatus) != "degraded" {
				t.Fatalf("request %d: got status %d status header %q, want allowed and degraded", i, res.status, res.hdr.Get(hdrStatus))
			}
		}
	})
	t.Run("closed", func(t *testing.T) {
		c := mustConf(t, `{"limit":1,"window":"1m","fail_mode":"closed"}`)
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 503 || res.hdr.Get(hdrStatus) != "degraded" || res.hdr.Get(hdrRetryAfter) == "" {
			t.Fatalf("got status %d headers %v, want 503 degraded with Retry-After", res.status, res.hdr)
		}
	})
	t.Run("local", func(t *testing.T) {
		c := mustConf(t, `{"limit":3,"window":"1m","fail_mode":"local","name":"loc"}`)
		for i := 0; i < 5; i++ {
			res := e.do(c, newReq("192.0.2.1"))
			want := 0
			if i >= 3 {
				want = 429
			}
			if res.status != want || res.hdr.Get(hdrStatus) != "degraded" {
				t.Fatalf("request %d: got status %d status %q, want %d degraded", i, res.status, res.hdr.Get(hdrStatus), want)
			}
		}
		if res := e.do(c, newReq("192.0.2.2")); res.status != 0 {
			t.Fatalf("another address: got %d, want allowed (counted per key)", res.status)
		}
	})
	t.Run("show_headers false hides the limit headers", func(t *testing.T) {
		c := mustConf(t, `{"limit":1,"window":"1m","show_headers":false}`)
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 0 || len(res.hdr) != 0 {
			t.Fatalf("got status %d headers %v, want allowed without headers", res.status, res.hdr)
		}
	})
	if got := e.decisions(outDegradedOpen); got != 4 {
		t.Errorf("got %d degraded_open, want 4", got)
	}
	if got := e.decisions(outLocalRejected); got != 2 {
		t.Errorf("got %d local_rejected, want 2", got)
	}
	if got := e.st.Backend(BackendName).State(); got != core.StateDown {
		t.Errorf("got backend state %s, want down (breaker open)", got)
	}
}

// TestBreakerSkipsRedisWhileOpen: once the breaker is open no decision
// makes a Redis call (the latency histogram stops counting).
func TestBreakerSkipsRedisWhileOpen(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.Breaker.OpenTimeout = core.Duration(time.Minute) // no probe during the test
		r.Breaker.MinFailingTime = 0                       // consecutive failures alone open it
	}))
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	if res := e.do(c, newReq("192.0.2.1")); res.status != 0 || res.hdr.Get(hdrStatus) != "" {
		t.Fatalf("healthy: got %d %v", res.status, res.hdr)
	}
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	calls := func() uint64 {
		m := &dtoMetric{}
		return m.histCount(t, e, "error")
	}
	for i := 0; i < 10; i++ {
		if res := e.do(c, newReq("192.0.2.1")); res.status != 0 || res.hdr.Get(hdrStatus) != "degraded" {
			t.Fatalf("after kill, request %d: got %d %v, want allowed degraded", i, res.status, res.hdr)
		}
	}
	if got := testutil.ToFloat64(e.rl.met.breaker); got != 2 {
		t.Fatalf("got breaker gauge %v, want 2 (open)", got)
	}
	n := calls()
	if n != 5 {
		t.Errorf("got %d failed Redis calls, want 5 (consecutive_failures) before the breaker opened", n)
	}
	for i := 0; i < 100; i++ {
		e.do(c, newReq("192.0.2.1"))
	}
	if got := calls(); got != n {
		t.Fatalf("got %d failed Redis calls after 100 more requests, want %d: an open breaker makes no call", got, n)
	}
	if got := testutil.ToFloat64(e.rl.met.transitions.WithLabelValues("open")); got != 1 {
		t.Fatalf("got %v transitions to open, want 1", got)
	}
}

// TestTenantOverride: an override in the Redis hash applies to its tenant
// only, is cached, and the last known value is kept through an outage
// (here with fail_mode local, which then enforces the overridden limit).
func TestTenantOverride(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	cl.HSet(ctx, "edge:rl:overrides", "acme", "2", "api/big", "4/1m")
	clk := newClock()
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.Breaker.OpenTimeout = core.Duration(time.Minute)
	}), WithClock(clk.now))
	c := mustConf(t, `{"limit":3,"window":"10s","name":"api","tenant_header":"X-Tenant","fail_mode":"local"}`)
	send := func(tenant string) result {
		r := newReq("192.0.2.1")
		r.hdr.Set("X-Tenant", tenant)
		return e.do(c, r)
	}
	allowedOf := func(tenant string, n int) (allowed int, limit string) {
		for i := 0; i < n; i++ {
			res := send(tenant)
			if res.status == 0 {
				allowed++
			}
			limit = res.hdr.Get(hdrLimit)
		}
		return allowed, limit
	}
	lookups := func(r string) int { return int(testutil.ToFloat64(e.rl.met.lookups[r])) }
	for _, tt := range []struct {
		tenant    string
		wantAllow int
		wantLimit string
	}{{"acme", 2, "2"}, {"big", 4, "4"}, {"plain", 3, "3"}} {
		if got, lim := allowedOf(tt.tenant, 6); got != tt.wantAllow || lim != tt.wantLimit {
			t.Errorf("tenant %s: got %d allowed, limit header %q; want %d and %q", tt.tenant, got, lim, tt.wantAllow, tt.wantLimit)
		}
	}
	if lookups(lookupRedis) != 3 {
		t.Errorf("got %d Redis lookups, want 3 (one per tenant, then cached)", lookups(lookupRedis))
	}
	if lookups(lookupCacheHit) != 15 {
		t.Errorf("got %d cache hits, want 15", lookups(lookupCacheHit))
	}
	// Outage: the cache entries expire, Redis is gone; the last known
	// overrides keep applying to the local limiter.
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Hour)
	if got, lim := allowedOf("acme", 5); got != 2 || lim != "2" {
		t.Errorf("outage, tenant acme: got %d allowed, limit %q; want 2 and \"2\" (kept override)", got, lim)
	}
	if lookups(lookupStale) == 0 {
		t.Errorf("got no stale lookups counted during the outage")
	}
	if got, lim := allowedOf("never-seen", 5); got != 3 || lim != "3" {
		t.Errorf("outage, unknown tenant: got %d allowed, limit %q; want the conf's 3", got, lim)
	}
	if lookups(lookupNone) == 0 {
		t.Errorf("got no 'none' lookups for a tenant never seen during the outage")
	}
}

// TestMemoryPressure: with a tiny maxmemory and allkeys-lru, Redis evicts
// counters and keeps answering; every decision is still made by Redis.
func TestMemoryPressure(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{MaxMemory: "2mb", MaxMemoryPolicy: "allkeys-lru"})
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) { r.Timeout = core.Duration(time.Second) }))
	c := mustConf(t, `{"limit":1000,"window":"1m","key":"header:X-Key"}`)
	const n = 12000
	for i := 0; i < n; i++ {
		r := newReq("192.0.2.1")
		r.hdr.Set("X-Key", "user-"+strconv.Itoa(i))
		if res := e.do(c, r); res.status != 0 || res.hdr.Get(hdrStatus) != "" {
			t.Fatalf("request %d: got %d %v, want allowed by Redis", i, res.status, res.hdr)
		}
	}
	cl := rd.Client()
	defer cl.Close()
	info := cl.Info(context.Background(), "stats").Val()
	var evicted int
	for _, line := range splitLines(info) {
		if v, ok := cutPrefix(line, "evicted_keys:"); ok {
			evicted, _ = strconv.Atoi(v)
		}
	}
	if evicted == 0 {
		t.Fatalf("got no evictions: the test did not create memory pressure")
	}
	if got := e.decisions(outAllowed); got != n {
		t.Fatalf("got %d allowed by Redis, want %d", got, n)
	}
	t.Logf("%d keys evicted, all %d decisions made by Redis", evicted, n)
}

func TestInvalidConfIsNeverAllowedThroughTheGuard(t *testing.T) {
	e := newEnv(t, redisCfg(t, closedAddr(t), nil))
	reg := e.reg
	g := core.NewGuardMetrics(reg, core.NewLogThrottle(nopLog(), time.Minute), &core.Inflight{})
	p := g.Guard(e.rl)
	conf, err := p.ParseConf([]byte(`{"limit":0,"window":"1s"}`))
	if err != nil {
		t.Fatalf("guarded ParseConf returned %v: the framework would drop the plugin", err)
	}
	res := doPlugin(p, conf, newReq("192.0.2.1"))
	if res.status != 500 || res.body != core.InvalidConfBody {
		t.Fatalf("got %d %q, want 500 %q", res.status, res.body, core.InvalidConfBody)
	}
}

// TestBreakerClosesAfterRestart: the breaker opens on a dead Redis, probes
// by itself, and a successful probe closes it (state, gauge, transition
// count and /status). It polls for the eventual state; it asserts no
// timing.
func TestBreakerClosesAfterRestart(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.Breaker.OpenTimeout = core.Duration(50 * time.Millisecond)
		r.Breaker.MinFailingTime = 0
	}))
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	e.do(c, newReq("192.0.2.1"))
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	for e.rl.brk.Load() != 2 {
		e.do(c, newReq("192.0.2.1"))
	}
	if got := e.st.Backend(BackendName).State(); got != core.StateDown {
		t.Fatalf("got /status %s with the breaker open, want down", got)
	}
	if err := rd.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if res := e.do(c, newReq("192.0.2.1")); res.hdr.Get(hdrStatus) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Redis-backed decision after the restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(e.rl.met.breaker); got != 0 {
		t.Errorf("got breaker gauge %v, want 0 (closed)", got)
	}
	if got := testutil.ToFloat64(e.rl.met.transitions.WithLabelValues("closed")); got != 1 {
		t.Errorf("got %v transitions to closed, want 1", got)
	}
	if got := e.st.Backend(BackendName).State(); got != core.StateOK {
		t.Errorf("got /status %s, want ok", got)
	}
}

// TestAddrPart: a client address' key part is what it was when it was
// built with net.IP.String (the counters in Redis keep their keys across
// the upgrade), for every form SrcIP can take.
func TestAddrPart(t *testing.T) {
	for _, tt := range []struct {
		name string
		ip   net.IP
		want string
	}{
		{"ipv4, 4 bytes", net.IP{192, 0, 2, 9}, "a:192.0.2.9"},
		{"ipv4, 16 bytes", net.ParseIP("192.0.2.9"), "a:192.0.2.9"},
		{"ipv6", net.ParseIP("2001:db8::1"), "a:2001:db8::1"},
		{"ipv6, longest zero run compressed", net.ParseIP("2001:db8:0:0:1:0:0:1"), "a:2001:db8::1:0:0:1"},
		{"ipv6 loopback", net.IPv6loopback, "a:::1"},
		{"ipv4-compatible-looking ipv6", net.ParseIP("::102:304"), "a:::102:304"},
		{"unspecified", net.IPv6unspecified, "a:::"},
		{"none", nil, "a:unknown"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := addrPart(tt.ip); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if tt.ip != nil {
				if old := "a:" + tt.ip.String(); addrPart(tt.ip) != old {
					t.Errorf("got %q, net.IP.String gives %q", addrPart(tt.ip), old)
				}
			}
		})
	}
}

// FuzzAddrPart: the source address comes from APISIX's frame as raw
// bytes. Any of them gives a key part without a panic: for 4 or 16 bytes
// the text net.IP.String gives, otherwise "a:unknown".
func FuzzAddrPart(f *testing.F) {
	f.Add([]byte{192, 0, 2, 9})
	f.Add([]byte(net.ParseIP("2001:db8::1")))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		got := addrPart(net.IP(b))
		want := "a:unknown"
		if len(b) == net.IPv4len || len(b) == net.IPv6len {
			want = "a:" + net.IP(b).String()
		}
		if got != want {
			t.Fatalf("addrPart(%v): got %q, want %q", b, got, want)
		}
	})
}
