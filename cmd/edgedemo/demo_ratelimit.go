package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

func init() {
	register(part{name: "ratelimit", config: rlPartConfig, run: rlPartRun})
}

// rlPartConfig points the redis section at the demo's Redis, or at a
// closed port (the limiter then runs degraded, as the runner would without
// Redis).
func rlPartConfig(e *demoEnv) (string, error) {
	addr := ""
	if e.Redis != nil {
		addr = e.Redis.Addr()
	} else {
		p, err := backing.FreePort()
		if err != nil {
			return "", err
		}
		addr = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return fmt.Sprintf("redis:\n  addrs: [%q]\n  breaker:\n    open_timeout: 200ms\n", addr), nil
}

func rlPartRun(ctx context.Context, e *demoEnv, w io.Writer) error {
	route := &testbed.Route{ID: "demo-ratelimit", PreReq: []testbed.PluginConf{{
		Name: "ratelimit", Value: `{"limit":5,"window":"10s","key":"header:X-Api-Key"}`,
	}}}
	send := func(key string) (*testbed.Result, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return e.Gateway.Do(rctx, route, &testbed.Request{
			Method: "GET", Path: "/", SrcIP: net.IPv4(198, 51, 100, 7),
			Headers: map[string][]string{"X-Api-Key": {key}},
		})
	}
	line := func(i int, res *testbed.Result) {
		var b strings.Builder
		for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-RateLimit-Status"} {
			if v := res.Headers.Get(h); v != "" {
				fmt.Fprintf(&b, " %s=%s", strings.TrimPrefix(h, "X-RateLimit-"), v)
			}
		}
		fmt.Fprintf(w, "  #%d  %d %s\n", i, res.Status, b.String())
	}
	fmt.Fprintf(w, "route conf %s\n", route.PreReq[0].Value)
	if e.Redis == nil {
		fmt.Fprintln(w, "no redis-server: every decision is degraded (fail_mode open allows):")
		for i := 1; i <= 3; i++ {
			res, err := send("demo-key")
			if err != nil {
				return err
			}
			line(i, res)
		}
		return nil
	}
	fmt.Fprintln(w, "7 requests with one API key, Redis healthy:")
	for i := 1; i <= 7; i++ {
		res, err := send("demo-key")
		if err != nil {
			return err
		}
		line(i, res)
	}
	fmt.Fprintln(w, "Redis killed; requests for 600 ms (fail_mode open allows, marked degraded):")
	if err := e.Redis.Kill(); err != nil {
		return err
	}
	counts := map[string]int{}
	var worst time.Duration
	for i, start := 1, time.Now(); time.Since(start) < 600*time.Millisecond; i++ {
		res, err := send("other-key")
		if err != nil {
			return err
		}
		if i <= 2 {
			line(i, res)
		}
		counts[fmt.Sprintf("%d %s", res.Status, res.Headers.Get("X-RateLimit-Status"))]++
		worst = max(worst, res.Latency)
	}
	fmt.Fprintf(w, "  ... %v, slowest %v; breaker: %s\n", counts, worst.Round(time.Microsecond), rlPartBreaker(e))
	if err := e.Redis.Restart(); err != nil {
		return err
	}
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		res, err := send("fresh-key")
		if err != nil {
			return err
		}
		if res.Status == 200 && res.Headers.Get("X-RateLimit-Status") == "" {
			fmt.Fprintf(w, "Redis restarted: Redis-backed decisions again after %v (the breaker probes by itself)\n",
				time.Since(start).Round(10*time.Millisecond))
			time.Sleep(100 * time.Millisecond)
			return rlPartMetrics(e, w)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no Redis-backed decision within 5s of the restart")
}

// rlPartMetrics prints the limiter's decision counters.
func rlPartMetrics(e *demoEnv, w io.Writer) error {
	b, err := adminGet(e.AdminURL, "/metrics")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "apisix_edge_ratelimit_decisions_total{") && !strings.HasSuffix(l, " 0") ||
			strings.HasPrefix(l, "apisix_edge_ratelimit_breaker_transitions_total{") && !strings.HasSuffix(l, " 0") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	return nil
}

// rlPartBreaker reads the breaker state from /status.
func rlPartBreaker(e *demoEnv) string {
	b, err := adminGet(e.AdminURL, "/status")
	if err != nil {
		return err.Error()
	}
	var st struct {
		Backends map[string]struct {
			State  string         `json:"state"`
			Detail map[string]any `json:"detail"`
		} `json:"backends"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return err.Error()
	}
	r := st.Backends["redis"]
	return fmt.Sprintf("%v (/status redis: %s)", r.Detail["breaker"], r.State)
}
