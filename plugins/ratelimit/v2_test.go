package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// midnight is 2023-11-15 00:00:00 UTC, a multiple of 24h since the epoch.
var midnight = time.Date(2023, 11, 15, 0, 0, 0, 0, time.UTC)

// TestFixedWindowResetsAtAlignedBoundary: a 24h fixed window starts at
// midnight UTC, whatever the time of the first request; the last
// millisecond of a day still counts against it, the first of the next day
// does not.
func TestFixedWindowResetsAtAlignedBoundary(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(clk.now))
	c := mustConf(t, `{"limit":3,"window":"24h","algorithm":"fixed_window"}`)
	ms := time.Millisecond
	steps := []struct {
		at        time.Time
		status    int
		remaining string
		reset     string
	}{
		{midnight.Add(-2 * time.Hour), 0, "2", "7200"},
		{midnight.Add(-time.Hour), 0, "1", "3600"},
		{midnight.Add(-ms), 0, "0", "1"},
		{midnight.Add(-ms), 429, "0", "1"}, // full until midnight
		{midnight, 0, "2", "86400"},        // a new day: the count starts over
		{midnight.Add(23 * time.Hour), 0, "1", "3600"},
		{midnight.Add(24*time.Hour - ms), 0, "0", "1"},
		{midnight.Add(24*time.Hour - ms), 429, "0", "1"},
		{midnight.Add(24 * time.Hour), 0, "2", "86400"},
	}
	for i, s := range steps {
		clk.mu.Lock()
		clk.t = s.at
		clk.mu.Unlock()
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != s.status || res.hdr.Get(hdrRemaining) != s.remaining || res.hdr.Get(hdrReset) != s.reset {
			t.Fatalf("step %d at %s: got status %d remaining %q reset %q, want %d %q %q", i, s.at.Format(time.RFC3339Nano),
				res.status, res.hdr.Get(hdrRemaining), res.hdr.Get(hdrReset), s.status, s.remaining, s.reset)
		}
	}
}

// TestSlidingWindowWeighsThePreviousWindow checks the estimate at given
// points, Retry-After included.
func TestSlidingWindowWeighsThePreviousWindow(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(clk.now))
	c := mustConf(t, `{"limit":10,"window":"10s","algorithm":"sliding_window","key":"header:X-K"}`)
	base := midnight
	send := func(at time.Duration, key string) result {
		clk.mu.Lock()
		clk.t = base.Add(at)
		clk.mu.Unlock()
		r := newReq("192.0.2.1")
		r.hdr.Set("X-K", key)
		return e.do(c, r)
	}
	// 10 at 9s: the first window is full.
	for i := 0; i < 10; i++ {
		if res := send(9*time.Second, "a"); res.status != 0 {
			t.Fatalf("request %d at 9s: got %d, want allowed", i, res.status)
		}
	}
	if res := send(9*time.Second, "a"); res.status != 429 || res.hdr.Get(hdrRetryAfter) != "2" {
		t.Fatalf("11th at 9s: got %d Retry-After %q, want 429 and 2 (at 11s the previous 10 weigh 0.9: 9)", res.status, res.hdr.Get(hdrRetryAfter))
	}
	// At 15s, half of the previous window overlaps: 10 × 0.5 = 5, so 5 fit.
	allowed := 0
	for i := 0; i < 8; i++ {
		if send(15*time.Second, "a").status == 0 {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("at 15s: got %d allowed, want 5", allowed)
	}
	// At 20s: the previous window (10-20s) had 5, fully weighted: 5 fit.
	allowed = 0
	for i := 0; i < 8; i++ {
		if send(20*time.Second, "a").status == 0 {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("at 20s: got %d allowed, want 5", allowed)
	}
	// Two windows idle: nothing weighs.
	if res := send(45*time.Second, "a"); res.status != 0 || res.hdr.Get(hdrRemaining) != "9" {
		t.Fatalf("at 45s: got %d remaining %q, want allowed, 9", res.status, res.hdr.Get(hdrRemaining))
	}
}

// TestSlidingWindowErrorBound sends steady and adversarial traffic and
// checks the documented bound: in any sliding window of length W at most
// limit × (1 + f) requests are admitted (f: the elapsed share of the
// current fixed window, so always < 2 × limit), and steady traffic above
// the limit is admitted at the limit's rate within 5%.
func TestSlidingWindowErrorBound(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(clk.now))
	const limit = 100
	window := time.Second
	for _, tc := range []struct {
		name string
		gap  func(i int) time.Duration // time between requests
	}{
		{"steady 2x", func(int) time.Duration { return 5 * time.Millisecond }},
		{"bursts at the boundaries", func(i int) time.Duration {
			if i%250 == 0 {
				return 990 * time.Millisecond
			}
			return 40 * time.Microsecond
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustConf(t, `{"limit":100,"window":"1s","algorithm":"sliding_window","name":"bound-`+strings.ReplaceAll(tc.name, " ", "-")+`"}`)
			clk.mu.Lock()
			clk.t = midnight
			clk.mu.Unlock()
			var admitted []time.Time
			for i := 0; i < 3000; i++ {
				clk.add(tc.gap(i))
				if e.do(c, newReq("192.0.2.1")).status == 0 {
					admitted = append(admitted, clk.now())
				}
			}
			// Largest count in any sliding window [t-W, t) ending at an admission.
			worst, lo := 0, 0
			for hi := range admitted {
				for admitted[hi].Sub(admitted[lo]) >= window {
					lo++
				}
				worst = max(worst, hi-lo+1)
			}
			if worst >= 2*limit {
				t.Fatalf("got %d admitted within one window, want < 2 × %d", worst, limit)
			}
			span := admitted[len(admitted)-1].Sub(admitted[0])
			if tc.name == "steady 2x" {
				rate := float64(len(admitted)) / span.Seconds()
				if rate < 0.95*limit || rate > 1.05*limit {
					t.Fatalf("steady traffic: got %.1f admitted/s, want %d ± 5%%", rate, limit)
				}
			}
			t.Logf("%s: at most %d admitted in a sliding window of %s (limit %d); %d over %s", tc.name, worst, window, limit, len(admitted), span)
		})
	}
}

// TestRulesConsumeNothingOnRejection: three rules decided in one round
// trip (one EVALSHA per decision in INFO commandstats); a request one rule
// rejects leaves the others' counts alone; the headers describe the most
// restrictive rule.
func TestRulesConsumeNothingOnRejection(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	clk := newClock()
	clk.t = midnight
	for _, pipe := range []bool{true, false} {
		t.Run("pipeline="+strconv.FormatBool(pipe), func(t *testing.T) {
			e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) { r.Pipeline = &pipe }), WithClock(clk.now))
			c := mustConf(t, `{"name":"rules-`+strconv.FormatBool(pipe)+`","rules":[
				{"limit":2,"window":"1s"},
				{"limit":5,"window":"1h","algorithm":"fixed_window"},
				{"limit":4,"window":"1m","algorithm":"sliding_window","key":"const:all"}]}`)
			if err := e.rl.loadScript(ctx); err != nil {
				t.Fatal(err)
			}
			cl.ConfigResetStat(ctx)
			send := func() result { return e.do(c, newReq("192.0.2.1")) }
			// 1s rule: 2 allowed, the third rejected by it alone.
			for i, want := range []int{0, 0, 429} {
				if res := send(); res.status != want {
					t.Fatalf("request %d: got %d, want %d", i, res.status, want)
				}
			}
			calls := evalCalls(t, rd)
			if calls != 3 {
				t.Fatalf("got %d script calls for 3 decisions of 3 rules, want 3 (one round trip each)", calls)
			}
			// The rejection consumed nothing: 2 in the hour, 2 in the global minute.
			clk.add(time.Second)
			res := send()
			if res.status != 0 || res.hdr.Get(hdrLimit) != "4" || res.hdr.Get(hdrRemaining) != "1" {
				t.Fatalf("after 1s: got %d limit %q remaining %q, want allowed by the global 4/min rule with 1 left (it is the tightest)",
					res.status, res.hdr.Get(hdrLimit), res.hdr.Get(hdrRemaining))
			}
			if res = send(); res.status != 0 || res.hdr.Get(hdrRemaining) != "0" {
				t.Fatalf("after 1s, second: got %d remaining %q, want allowed, 0", res.status, res.hdr.Get(hdrRemaining))
			}
			clk.add(time.Second)
			res = send()
			if res.status != 429 || res.hdr.Get(hdrLimit) != "4" {
				t.Fatalf("after 2s: got %d limit %q, want 429 by the global rule", res.status, res.hdr.Get(hdrLimit))
			}
			// The 1s log got nothing from that rejection, the hour has 4.
			keys, _ := cl.Keys(ctx, "edge:rl:{n:rules-"+strconv.FormatBool(pipe)+"*").Result()
			for _, k := range keys {
				switch {
				case strings.HasSuffix(k, ":l1000"):
					if n := cl.ZCard(ctx, k).Val(); n != 0 {
						// the two of the second second left at 2s exactly
						t.Errorf("1s log %s: got %d entries, want 0", k, n)
					}
				case strings.Contains(k, ":f3600000:"):
					if v := cl.Get(ctx, k).Val(); v != "4" {
						t.Errorf("hour counter %s: got %q, want a count of 4", k, v)
					}
				}
			}
			clk.add(time.Hour)
		})
	}
}

// evalCalls is the number of EVALSHA and EVAL calls since the last CONFIG
// RESETSTAT.
func evalCalls(t *testing.T, rd *backing.Redis) int {
	t.Helper()
	cl := rd.Client()
	defer cl.Close()
	s, err := cl.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range splitLines(s) {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if v, ok := cutPrefix(l, cmd); ok {
				x, _ := strconv.Atoi(v[:strings.IndexByte(v, ',')])
				n += x
			}
		}
	}
	return n
}

// TestShadowMode: a shadow route (and every route under the runner-wide
// switch) never rejects and sends no rate-limit header; would-be
// rejections are counted as shadow_rejected; counting is as usual.
func TestShadowMode(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	for _, tc := range []struct {
		name, conf string
		runner     bool
	}{
		{"route", `{"limit":2,"window":"1m","mode":"shadow","name":"sh1"}`, false},
		{"runner", `{"limit":2,"window":"1m","name":"sh2"}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) { r.Shadow = tc.runner }))
			c := mustConf(t, tc.conf)
			for i := 0; i < 5; i++ {
				res := e.do(c, newReq("192.0.2.1"))
				if res.status != 0 || len(res.hdr) != 0 {
					t.Fatalf("request %d: got status %d headers %v, want proxied with no header", i, res.status, res.hdr)
				}
			}
			// 2 allowed, 1 rejected by Redis and 2 from the over-limit cache, all let through.
			if a, s := e.decisions(outAllowed), e.decisions(outShadowRejected); a != 2 || s != 3 {
				t.Fatalf("got %d allowed %d shadow_rejected, want 2 and 3", a, s)
			}
			if r := e.decisions(outRejected) + e.decisions(outRejectedCached); r != 0 {
				t.Fatalf("got %d rejections counted, want 0", r)
			}
		})
	}
}

// TestWeightedCost: a fixed cost, a cost from a header (clamped to
// max_cost; missing or invalid: 1, counted) and cost on sliding_log.
func TestWeightedCost(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	// the test's clock: remaining counts must not cross a window boundary
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(newClock().now))
	for _, alg := range []string{"sliding_log", "sliding_window", "fixed_window"} {
		t.Run(alg, func(t *testing.T) {
			fixed := mustConf(t, `{"limit":10,"window":"1m","cost":3,"algorithm":"`+alg+`","name":"cf-`+alg+`"}`)
			var got []string
			for i := 0; i < 4; i++ {
				res := e.do(fixed, newReq("192.0.2.1"))
				got = append(got, fmt.Sprintf("%d/%s", res.status, res.hdr.Get(hdrRemaining)))
			}
			if want := "0/7 0/4 0/1 429/0"; strings.Join(got, " ") != want {
				t.Fatalf("cost 3 of 10: got %s, want %s", strings.Join(got, " "), want)
			}
			hc := mustConf(t, `{"limit":20,"window":"1m","cost":"header:X-Cost","max_cost":8,"algorithm":"`+alg+`","name":"ch-`+alg+`"}`)
			before := testutil.ToFloat64(e.rl.met.costFallback)
			got = got[:0]
			for _, v := range []string{"5", "", "junk", "-3", "100", "100"} {
				r := newReq("192.0.2.1")
				if v != "" {
					r.hdr.Set("X-Cost", v)
				}
				res := e.do(hc, r)
				got = append(got, fmt.Sprintf("%d/%s", res.status, res.hdr.Get(hdrRemaining)))
			}
			// 5, then 1, 1, 1 (missing, junk, negative), then 8 (clamped), then 8 does not fit in 4.
			if want := "0/15 0/14 0/13 0/12 0/4 429/0"; strings.Join(got, " ") != want {
				t.Fatalf("cost from header: got %s, want %s", strings.Join(got, " "), want)
			}
			if n := testutil.ToFloat64(e.rl.met.costFallback) - before; n != 3 {
				t.Fatalf("got %v cost fallbacks, want 3", n)
			}
		})
	}
}

// TestConsumerCannotBeForged: with key consumer and no verified identity
// (no jwtcache before it), five requests with five different client-sent
// X-Edge-Consumer values from one address share one counter: one allowed.
func TestConsumerCannotBeForged(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), nil))
	c := mustConf(t, `{"limit":1,"window":"1m","key":"consumer"}`)
	allowed := 0
	for i := 0; i < 5; i++ {
		r := newReq("192.0.2.1")
		r.hdr.Set(core.ConsumerHeader, "user-"+strconv.Itoa(i))
		if e.do(c, r).status == 0 {
			allowed++
		}
	}
	if allowed != 1 {
		t.Fatalf("got %d of 5 spoofed consumers allowed, want 1", allowed)
	}
	if n := testutil.ToFloat64(e.rl.met.fallbacks); n != 5 {
		t.Fatalf("got %v key fallbacks, want 5", n)
	}
	// A verified consumer has its own counter.
	r := newReq("192.0.2.1")
	core.SetVerifiedConsumer(r, "alice")
	if res := e.do(c, r); res.status != 0 {
		t.Fatalf("verified consumer: got %d, want allowed", res.status)
	}
}

// TestHeaderStyles: x, ietf, both, none; Retry-After on every rejection.
func TestHeaderStyles(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), nil))
	for _, tc := range []struct {
		style      string
		x, ietf    bool
		wantPolicy string
	}{
		{"x", true, false, ""},
		{"ietf", false, true, `"r0";q=2;w=60, "r1";q=100;w=86400`},
		{"both", true, true, `"r0";q=2;w=60, "r1";q=100;w=86400`},
		{"none", false, false, ""},
	} {
		t.Run(tc.style, func(t *testing.T) {
			c := mustConf(t, `{"headers":"`+tc.style+`","name":"hs-`+tc.style+`","rules":[{"limit":2,"window":"1m"},{"limit":100,"window":"24h","algorithm":"fixed_window"}]}`)
			res := e.do(c, newReq("192.0.2.1"))
			if (res.hdr.Get(hdrLimit) == "2") != tc.x || (res.hdr.Get(hdrPolicy) != "") != tc.ietf {
				t.Fatalf("got headers %v, want X-RateLimit %v, IETF %v", res.hdr, tc.x, tc.ietf)
			}
			if tc.ietf {
				if got := res.hdr.Get(hdrPolicy); got != tc.wantPolicy {
					t.Fatalf("got RateLimit-Policy %q, want %q", got, tc.wantPolicy)
				}
				if got := res.hdr.Get(hdrRateLimit); got != `"r0";r=1;t=60` {
					t.Fatalf("got RateLimit %q, want %q", got, `"r0";r=1;t=60`)
				}
			}
			e.do(c, newReq("192.0.2.1"))
			res = e.do(c, newReq("192.0.2.1"))
			if res.status != 429 || res.hdr.Get(hdrRetryAfter) == "" {
				t.Fatalf("third: got %d Retry-After %q, want 429 with Retry-After", res.status, res.hdr.Get(hdrRetryAfter))
			}
			if tc.ietf && !strings.HasPrefix(res.hdr.Get(hdrRateLimit), `"r0";r=0;t=`) {
				t.Fatalf("rejected: got RateLimit %q, want rule r0 with r=0", res.hdr.Get(hdrRateLimit))
			}
		})
	}
}

// TestUnlimitedOverrideAndNearLimit: a tenant override "unlimited" skips
// every rule without a Redis trip; decisions at or above 80% of a limit
// are counted as near the limit.
func TestUnlimitedOverrideAndNearLimit(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	cl.HSet(context.Background(), "edge:rl:overrides", "vip", "unlimited")
	// the test's clock: the five plain requests must share one window
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(newClock().now))
	c := mustConf(t, `{"limit":5,"window":"1m","tenant_header":"X-Tenant","algorithm":"fixed_window"}`)
	send := func(tenant string) result {
		r := newReq("192.0.2.1")
		r.hdr.Set("X-Tenant", tenant)
		return e.do(c, r)
	}
	for i := 0; i < 20; i++ {
		if res := send("vip"); res.status != 0 || res.hdr.Get(hdrLimit) != "" {
			t.Fatalf("vip request %d: got %d %v, want allowed with no limit header", i, res.status, res.hdr)
		}
	}
	if n := e.decisions(outUnlimited); n != 20 {
		t.Fatalf("got %d unlimited decisions, want 20", n)
	}
	for i := 0; i < 5; i++ {
		send("plain")
	}
	// Used 1..5 of 5: 4 and 5 are at or above 80%.
	if n := testutil.ToFloat64(e.rl.met.nearLimit); n != 2 {
		t.Fatalf("got %v near-limit decisions, want 2", n)
	}
}

// TestLargeLimitsAndWindows: the O(1) algorithms count up to 2^53 over a
// 366-day window exactly.
func TestLargeLimitsAndWindows(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	clk.t = midnight
	e := newEnv(t, redisCfg(t, rd.Addr(), nil), WithClock(clk.now))
	for _, alg := range []string{"fixed_window", "sliding_window"} {
		c := mustConf(t, `{"limit":9007199254740992,"window":"8784h","algorithm":"`+alg+`","cost":"header:X-Cost","max_cost":9007199254740992}`)
		var got []string
		for _, cost := range []string{"4503599627370495", "4503599627370496", "1", "1"} {
			r := newReq("192.0.2.1")
			r.hdr.Set("X-Cost", cost)
			res := e.do(c, r)
			got = append(got, fmt.Sprintf("%d/%s", res.status, res.hdr.Get(hdrRemaining)))
		}
		if want := "0/4503599627370497 0/1 0/0 429/0"; strings.Join(got, " ") != want {
			t.Fatalf("%s: got %s, want %s", alg, strings.Join(got, " "), want)
		}
	}
}

// TestMemoryPerKey measures MEMORY USAGE of one counter of each algorithm
// (the figures in docs/ratelimit.md).
func TestMemoryPerKey(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	e := newEnv(t, redisCfg(t, rd.Addr(), nil))
	for _, tc := range []struct {
		alg   string
		n     int
		under int64
	}{{"sliding_log", 1, 200}, {"sliding_log", 100, 8000}, {"sliding_window", 100, 120}, {"fixed_window", 100, 120}} {
		c := mustConf(t, `{"limit":1000000,"window":"1h","algorithm":"`+tc.alg+`","name":"mem","key":"header:X-Api-Key"}`)
		r := newReq("192.0.2.1")
		k := fmt.Sprintf("key-%s-%d", tc.alg, tc.n)
		r.hdr.Set("X-Api-Key", k)
		for i := 0; i < tc.n; i++ {
			e.do(c, r)
		}
		keys, _ := cl.Keys(ctx, "*"+k+"*").Result()
		if len(keys) != 1 {
			t.Fatalf("got keys %v", keys)
		}
		mem := cl.MemoryUsage(ctx, keys[0]).Val()
		t.Logf("%s after %d requests: MEMORY USAGE %d bytes (key %d bytes)", tc.alg, tc.n, mem, len(keys[0]))
		if mem > tc.under {
			t.Errorf("%s: got %d bytes, want under %d", tc.alg, mem, tc.under)
		}
	}
}

// TestFaultsEachAlgorithm: for each algorithm (one rule, and three rules
// at once) and each fault (Redis killed, frozen, 100 ms slow through
// toxiproxy): no decision waits much past redis.timeout, every decision
// during the fault is degraded by fail_mode (open, and local: still
// limited), and Redis-backed decisions resume after the repair.
func TestFaultsEachAlgorithm(t *testing.T) {
	confs := map[string]string{
		"sliding_log":    `{"limit":3,"window":"1m","fail_mode":"local"}`,
		"sliding_window": `{"limit":3,"window":"1m","algorithm":"sliding_window","fail_mode":"local"}`,
		"fixed_window":   `{"limit":3,"window":"1m","algorithm":"fixed_window","fail_mode":"local"}`,
		"three_rules": `{"fail_mode":"local","rules":[{"limit":3,"window":"1m"},{"limit":10,"window":"1h","algorithm":"sliding_window"},
			{"limit":100,"window":"24h","algorithm":"fixed_window","key":"const:all"}]}`,
	}
	for _, fault := range []string{"killed", "frozen", "slow"} {
		t.Run(fault, func(t *testing.T) {
			rd := backing.MustRedis(t, backing.RedisOptions{})
			px := backing.MustProxy(t, rd.Addr())
			e := newEnv(t, redisCfg(t, px.Addr(), func(r *Config) {
				r.Breaker.OpenTimeout = core.Duration(50 * time.Millisecond)
				r.Breaker.MinFailingTime = core.Duration(10 * time.Millisecond)
			}))
			for name, conf := range confs {
				c := mustConf(t, conf)
				// The first call dials and loads the script within the 20 ms
				// timeout, which a busy test host can miss.
				waitFor(t, name+" decided by Redis while healthy", func() bool {
					res := e.do(c, newReq("192.0.2.50"))
					return res.status == 0 && res.hdr.Get(hdrStatus) == ""
				})
			}
			switch fault {
			case "killed":
				if err := rd.Kill(); err != nil {
					t.Fatal(err)
				}
			case "frozen":
				freeze(t, rd)
			case "slow":
				if err := px.SetLatency(100 * time.Millisecond); err != nil {
					t.Fatal(err)
				}
			}
			for name, conf := range confs {
				c := mustConf(t, conf)
				codes := ""
				for i := 0; i < 5; i++ {
					start := time.Now()
					res := e.do(c, newReq("192.0.2.60"))
					if took := time.Since(start); took > 200*time.Millisecond {
						t.Errorf("%s during %s: a decision took %s", name, fault, took)
					}
					if res.hdr.Get(hdrStatus) != statusDegrade {
						t.Fatalf("%s during %s, request %d: got %d %v, want degraded", name, fault, i, res.status, res.hdr)
					}
					codes += strconv.Itoa(res.status) + " "
				}
				if codes != "0 0 0 429 429 " {
					t.Errorf("%s during %s: got statuses %s, want the local limit of 3", name, fault, codes)
				}
			}
			switch fault {
			case "killed":
				if err := rd.Restart(); err != nil {
					t.Fatal(err)
				}
			case "frozen":
				if err := rd.Thaw(); err != nil {
					t.Fatal(err)
				}
			case "slow":
				if err := px.ClearLatency(); err != nil {
					t.Fatal(err)
				}
			}
			for name, conf := range confs {
				c := mustConf(t, conf)
				waitFor(t, name+" Redis-backed again after "+fault, func() bool {
					res := e.do(c, newReq("192.0.2.70"))
					time.Sleep(5 * time.Millisecond)
					return res.status == 0 && res.hdr.Get(hdrStatus) == ""
				})
			}
		})
	}
}

// TestDelayedSyncTwoRunners: two plugin instances with their own Redis
// clients share one Redis, as two runners would. Each receives k requests
// per interval on one hot key and flushes (the test calls the flush the
// ticker would make, on a moved clock). Over the window they admit at
// least the limit and at most limit + runners × k (runners × interval ×
// rate), and a third runner started later knows the total at once.
func TestDelayedSyncTwoRunners(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	for _, alg := range []string{"fixed_window", "sliding_window"} {
		t.Run(alg, func(t *testing.T) {
			clk := newClock()
			clk.t = midnight
			conf := `{"limit":100,"window":"1h","algorithm":"` + alg + `","sync_interval":"1m","name":"sync-` + alg + `"}`
			slow := func(r *Config) { r.Timeout = core.Duration(time.Second) } // a busy test host
			a := newEnv(t, redisCfg(t, rd.Addr(), slow), WithClock(clk.now))
			b := newEnv(t, redisCfg(t, rd.Addr(), slow), WithClock(clk.now))
			ca, cb := mustConf(t, conf), mustConf(t, conf)
			const k = 15
			admitted := 0
			for interval := 0; interval < 12; interval++ {
				for i := 0; i < k; i++ {
					for _, x := range []struct {
						e *env
						c *Conf
					}{{a, ca}, {b, cb}} {
						if res := x.e.do(x.c, newReq("192.0.2.1")); res.status == 0 {
							if res.hdr.Get(hdrStatus) != "" {
								t.Fatalf("interval %d: got a degraded decision with Redis up", interval)
							}
							admitted++
						}
					}
				}
				a.rl.flushSync()
				b.rl.flushSync()
				clk.add(time.Minute)
			}
			if admitted < 100 || admitted > 100+2*k {
				t.Fatalf("got %d admitted in one window by 2 runners, want 100 to %d", admitted, 100+2*k)
			}
			// Redis has every admitted request.
			cl := rd.Client()
			defer cl.Close()
			keys, _ := cl.Keys(context.Background(), "edge:rl:{n:sync-"+alg+"*").Result()
			if len(keys) != 1 {
				t.Fatalf("got keys %v", keys)
			}
			v := cl.Get(context.Background(), keys[0]).Val()
			if v != strconv.Itoa(admitted) {
				t.Fatalf("got Redis counter %q, want a count of %d", v, admitted)
			}
			// A runner that starts now reads the total before its first decision.
			c3 := newEnv(t, redisCfg(t, rd.Addr(), slow), WithClock(clk.now))
			if res := c3.do(mustConf(t, conf), newReq("192.0.2.1")); res.status != 429 {
				t.Fatalf("a new runner: got %d, want 429 (the window is full)", res.status)
			}
			t.Logf("%s: %d admitted (limit 100, 2 runners × %d per interval)", alg, admitted, k)
		})
	}
}

// TestDelayedSyncFallsBackToLocal: while flushes fail, a delayed-sync
// route is limited by the runner-local limiter (degraded); the increments
// reach Redis once it is back.
func TestDelayedSyncFallsBackToLocal(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	clk := newClock()
	clk.t = midnight
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.Breaker.OpenTimeout = core.Duration(10 * time.Millisecond)
	}), WithClock(clk.now))
	c := mustConf(t, `{"limit":5,"window":"1h","algorithm":"fixed_window","sync_interval":"1m","name":"syncfail"}`)
	for i := 0; i < 2; i++ {
		if res := e.do(c, newReq("192.0.2.1")); res.status != 0 || res.hdr.Get(hdrStatus) != "" {
			t.Fatalf("healthy %d: got %d %v", i, res.status, res.hdr)
		}
	}
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	e.rl.flushSync() // fails: the 2 stay pending
	var got []string
	for i := 0; i < 6; i++ {
		res := e.do(c, newReq("192.0.2.1"))
		got = append(got, fmt.Sprintf("%d%s", res.status, res.hdr.Get(hdrStatus)))
	}
	// The local limiter has seen none of the 2 of before: 5 fit.
	if want := "0degraded 0degraded 0degraded 0degraded 0degraded 429degraded"; strings.Join(got, " ") != want {
		t.Fatalf("flush failed: got %s, want %s", strings.Join(got, " "), want)
	}
	if err := rd.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a flush to succeed", func() bool {
		time.Sleep(20 * time.Millisecond)
		e.rl.flushSync()
		cl := rd.Client()
		defer cl.Close()
		keys, _ := cl.Keys(context.Background(), "edge:rl:{n:syncfail*").Result()
		return len(keys) == 1 && cl.Get(context.Background(), keys[0]).Val() == "7"
	})
	if res := e.do(c, newReq("192.0.2.1")); res.status != 429 || res.hdr.Get(hdrStatus) != "" {
		t.Fatalf("after recovery: got %d %q, want 429 from the synced total of 7", res.status, res.hdr.Get(hdrStatus))
	}
}

// TestCounterCommandsMatchTheScript: a lone O(1) rule decided by plain
// commands (evalCounter) gives the verdicts and headers the script gives,
// over a random walk of times and weights on a few keys, each plugin on
// its own Redis so that neither sees the other's counters. Both without
// the batcher, so that a refund lands before the next decision.
func TestCounterCommandsMatchTheScript(t *testing.T) {
	rdA := backing.MustRedis(t, backing.RedisOptions{})
	rdB := backing.MustRedis(t, backing.RedisOptions{})
	off := false
	for _, alg := range []string{"fixed_window", "sliding_window", "sliding_log"} {
		t.Run(alg, func(t *testing.T) {
			clk := newClock()
			// A generous timeout: a degraded decision (a slow machine, the
			// race detector) is not what this test compares.
			edit := func(c *Config) { c.Pipeline = &off; c.Timeout = core.Duration(5 * time.Second) }
			plain := newEnv(t, redisCfg(t, rdA.Addr(), edit), WithClock(clk.now))
			script := newEnv(t, redisCfg(t, rdB.Addr(), edit), WithClock(clk.now))
			if !plain.rl.counters.Load() {
				t.Fatal("got counter commands off against redis-server 7, want on")
			}
			script.rl.counters.Store(false)
			conf := `{"limit":7,"window":"10s","algorithm":"` + alg + `","key":"header:X-K","cost":"header:X-Cost","max_cost":5}`
			c := mustConf(t, conf)
			rng := rand.New(rand.NewPCG(1, 2))
			clk.mu.Lock()
			clk.t = midnight
			clk.mu.Unlock()
			var rejected int
			for i := range 3000 {
				clk.add(time.Duration(rng.IntN(700)) * time.Millisecond)
				key, cost := "k"+strconv.Itoa(rng.IntN(3)), strconv.Itoa(1+rng.IntN(4))
				var got [2]result
				for j, e := range []*env{plain, script} {
					r := newReq("192.0.2.1")
					r.hdr.Set("X-K", key)
					r.hdr.Set("X-Cost", cost)
					got[j] = e.do(c, r)
				}
				if got[0].status != got[1].status || fmt.Sprint(got[0].hdr) != fmt.Sprint(got[1].hdr) {
					t.Fatalf("decision %d (key %s cost %s at %s): got %d %v by commands, %d %v by the script",
						i, key, cost, clk.now().Format(time.RFC3339Nano), got[0].status, got[0].hdr, got[1].status, got[1].hdr)
				}
				if got[0].status == 429 {
					rejected++
				}
			}
			if rejected < 100 {
				t.Fatalf("got %d rejections in 3000 decisions, want at least 100 (the walk must reach the limit)", rejected)
			}
			cl := rdA.Client()
			defer cl.Close()
			stats, err := cl.Info(context.Background(), "commandstats").Result()
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"cmdstat_incrby:", "cmdstat_decrby:"}
			if alg == "sliding_log" {
				want = []string{"cmdstat_multi:", "cmdstat_zadd:", "cmdstat_zrem:"}
			}
			for _, w := range want {
				if !strings.Contains(stats, w) || strings.Contains(stats, "cmdstat_evalsha:") {
					t.Fatalf("got commandstats of the plugin on commands:\n%s\nwant %s, no EVALSHA", stats, w)
				}
			}
		})
	}
}

// TestSlidingLogByCommandsOnRedisClock: without an injected clock, the
// sliding log by commands waits for a reading of Redis' TIME (the script
// decides until then), then stamps its entries on Redis' clock: the
// entries' scores are within a second of what TIME says.
func TestSlidingLogByCommandsOnRedisClock(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), nil))
	startAndSync(t, e)
	c := mustConf(t, `{"limit":3,"window":"1m"}`)
	for i, want := range []int{0, 0, 0, 429} {
		if res := e.do(c, newReq("192.0.2.7")); res.status != want {
			t.Fatalf("request %d: got status %d, want %d", i, res.status, want)
		}
	}
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	keys, err := cl.Keys(ctx, "*a:192.0.2.7*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("got keys %v (%v), want the one log", keys, err)
	}
	zs, err := cl.ZRangeWithScores(ctx, keys[0], 0, -1).Result()
	if err != nil || len(zs) != 3 {
		t.Fatalf("got entries %v (%v), want 3 (the rejected one removed again)", zs, err)
	}
	now, err := cl.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range zs {
		if d := now.UnixMilli() - int64(z.Score); d < 0 || d > 1000 {
			t.Fatalf("got an entry stamped %d ms before Redis' TIME, want 0 to 1000", d)
		}
	}
	stats, err := cl.Info(ctx, "commandstats").Result()
	if err != nil || !strings.Contains(stats, "cmdstat_exec:") {
		t.Fatalf("got commandstats %q (%v), want EXEC (the decision by commands)", stats, err)
	}
}

// TestCountersOffWhenPExpireNXIsRefused: a master that answers PEXPIRE NX
// with an error (as a Redis older than 7.0 does; here the command is
// renamed away) turns the counter commands off: that decision follows
// fail_mode and the next one goes to the script.
func TestCountersOffWhenPExpireNXIsRefused(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{Config: []string{`rename-command PEXPIRE ""`}})
	off := false
	e := newEnv(t, redisCfg(t, rd.Addr(), func(c *Config) {
		c.Pipeline = &off
		// The refusal must be what makes the decision degraded, not a
		// first call slower than the default 20 ms (seen under -race).
		c.Timeout = core.Duration(time.Second)
	}))
	if !e.rl.counters.Load() {
		t.Fatal("got counter commands off against redis-server 7, want on")
	}
	c := mustConf(t, `{"limit":5,"window":"1m","algorithm":"fixed_window"}`)
	if res := e.do(c, newReq("192.0.2.9")); res.status != 0 || res.hdr.Get(hdrStatus) != statusDegrade {
		t.Fatalf("got status %d %v, want allowed and degraded (fail_mode open)", res.status, res.hdr)
	}
	if e.rl.counters.Load() {
		t.Fatal("got counter commands still on after PEXPIRE NX was refused")
	}
	e.do(c, newReq("192.0.2.9"))
	cl := rd.Client()
	defer cl.Close()
	stats, err := cl.Info(context.Background(), "commandstats").Result()
	if err != nil || !strings.Contains(stats, "cmdstat_evalsha:") {
		t.Fatalf("got commandstats %q (%v), want the next decision sent to the script", stats, err)
	}
}
