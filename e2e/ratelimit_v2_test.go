package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// TestRLConsumerSpoofRefused: a route keyed on consumer with no jwtcache
// before it; five requests from one address with five different
// client-sent X-Edge-Consumer values share one counter (the header is
// never read), so with limit 1 only one is allowed.
func TestRLConsumerSpoofRefused(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	r := startRunner(t, rlConfig(0, rlStandalone(rd.Addr())), testbed.RunnerOptions{})
	g := newGateway(t, r)
	route := rlRoute("rl-spoof", `{"limit":1,"window":"1m","key":"consumer"}`)
	var codes []string
	for i := 0; i < 5; i++ {
		req := rlReq("198.51.100.9")
		req.Headers = http.Header{"X-Edge-Consumer": {"attacker-" + strconv.Itoa(i)}}
		codes = append(codes, strconv.Itoa(do(t, g, route, req).Status))
	}
	if got := strings.Join(codes, " "); got != "200 429 429 429 429" {
		t.Fatalf("five forged consumers: got %s, want 200 429 429 429 429", got)
	}
}

// TestRLRulesOneRoundTrip: three rules (one per algorithm) on one route
// through the binary: one script call per request in Redis' commandstats,
// nothing consumed by the rule that did not reject, the IETF fields of
// the tightest rule.
func TestRLRulesOneRoundTrip(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	r := startRunner(t, rlConfig(0, rlStandalone(rd.Addr())), testbed.RunnerOptions{})
	g := newGateway(t, r)
	route := rlRoute("rl-rules", `{"headers":"both","rules":[
		{"limit":3,"window":"1m"},
		{"limit":100,"window":"1h","algorithm":"sliding_window"},
		{"limit":1000,"window":"24h","algorithm":"fixed_window","key":"const:all"}]}`)
	rlWaitRedisDecision(t, g, route, "198.51.100.20", 5*time.Second) // warm: script loaded, pool dialed
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	if err := cl.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var codes []string
	for i := 0; i < 5; i++ {
		res := do(t, g, route, rlReq("198.51.100.21"))
		codes = append(codes, strconv.Itoa(res.Status))
		if i == 0 && (res.Headers.Get("RateLimit") != `"r0";r=2;t=60` || res.Headers.Get("RateLimit-Policy") != `"r0";q=3;w=60, "r1";q=100;w=3600, "r2";q=1000;w=86400`) {
			t.Errorf("first: got RateLimit %q RateLimit-Policy %q", res.Headers.Get("RateLimit"), res.Headers.Get("RateLimit-Policy"))
		}
	}
	if got := strings.Join(codes, " "); got != "200 200 200 429 429" {
		t.Fatalf("got %s, want 200 200 200 429 429", got)
	}
	stats, err := cl.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	// One rejection reached Redis (the second came from the over-limit cache).
	if !strings.Contains(stats, "cmdstat_evalsha:calls=4,") {
		t.Fatalf("got commandstats\n%s\nwant 4 EVALSHA for 4 Redis decisions of 3 rules each", stats)
	}
	// The rules share no key part (the third is global), so the route's
	// counters share one hash tag: {ns||}, then rule and address.
	keys, _ := cl.Keys(ctx, "edge:rl:{*||}:s3600000|a:*").Result()
	if len(keys) != 2 { // the warm-up's address and this one
		t.Fatalf("got sliding_window keys %v, want 2", keys)
	}
	for _, k := range keys {
		if v := cl.Get(ctx, k).Val(); strings.Contains(k, "198.51.100.21") && v != "3" {
			t.Errorf("sliding_window counter %s = %q, want a count of 3 (rejections consume nothing)", k, v)
		}
	}
}

// TestRLValidateConsumerWarning: go-runner validate warns (exit 0) when a
// ratelimit conf keys on consumer and no jwtcache precedes it in the same
// conf list, and not when one does.
func TestRLValidateConsumerWarning(t *testing.T) {
	dir := t.TempDir()
	alone := filepath.Join(dir, "alone.json")
	if err := os.WriteFile(alone, []byte(`{"uri":"/x","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"ratelimit","value":"{\"limit\":5,\"window\":\"1s\",\"key\":[\"consumer\",\"route\"]}"}]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args    []string
		code    int
		want    string
		warning bool
	}{
		{[]string{"validate", alone}, 0, "alone.json: ok", true},
		{[]string{"validate", "-c", "../apisix/go-runner.yaml", "../apisix/routes/all.json"}, 0, "all.json: ok", false},
	} {
		cmd := exec.Command(runnerBin, tt.args...)
		cmd.Env = append(os.Environ(), "REDIS_PASSWORD=x", "CLICKHOUSE_PASSWORD=x")
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code != tt.code || !strings.Contains(string(out), tt.want) || strings.Contains(string(out), "warning: ") != tt.warning {
			t.Errorf("%v: got exit %d %q, want %d containing %q, warning %v", tt.args, code, out, tt.code, tt.want, tt.warning)
		}
	}
}

// TestRLDelayedSyncTwoRunners: two runner processes share one Redis, a
// delayed-sync route (fixed_window, limit 100 a day, sync every 50 ms),
// and requests alternate between them. Together they admit at least the
// limit, and at most the limit plus what each received within one
// interval and one flush round trip of slack (runners × interval × rate);
// Redis' counter ends equal to what they admitted.
func TestRLDelayedSyncTwoRunners(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	var gws []*testbed.Gateway
	for range 2 {
		r := startRunner(t, rlConfig(0, rlStandalone(rd.Addr())), testbed.RunnerOptions{})
		gws = append(gws, newGateway(t, r))
	}
	const interval = 50 * time.Millisecond
	route := rlRoute("rl-sync", `{"limit":100,"window":"24h","algorithm":"fixed_window","sync_interval":"50ms","name":"sync2"}`)
	for _, g := range gws { // each runner's pool dialed and scripts loaded
		rlWaitRedisDecision(t, g, rlRoute("rl-sync-warm", `{"limit":1000,"window":"24h","algorithm":"fixed_window","sync_interval":"50ms","name":"warm"}`), "198.51.100.30", 5*time.Second)
	}
	sent := [2][]time.Time{}
	admitted := 0
	for i := 0; i < 400; i++ {
		w := i % 2
		sent[w] = append(sent[w], time.Now())
		res := do(t, gws[w], route, rlReq("198.51.100.31"))
		if res.Status == 200 {
			if res.Headers.Get("X-RateLimit-Status") != "" {
				t.Fatalf("request %d: degraded with Redis up", i)
			}
			admitted++
		}
		time.Sleep(time.Millisecond)
	}
	// The bound: per runner, the most requests it received within any
	// span of two intervals (one interval plus a flush's slack).
	bound := 100
	for _, ts := range sent {
		most, lo := 0, 0
		for hi := range ts {
			for ts[hi].Sub(ts[lo]) > 2*interval {
				lo++
			}
			most = max(most, hi-lo+1)
		}
		bound += most
	}
	if admitted < 100 || admitted > bound {
		t.Fatalf("got %d admitted by two runners, want 100 to %d", admitted, bound)
	}
	time.Sleep(3 * interval) // the last flushes
	cl := rd.Client()
	defer cl.Close()
	keys, _ := cl.Keys(context.Background(), "edge:rl:{n:sync2*").Result()
	if len(keys) != 1 {
		t.Fatalf("got keys %v", keys)
	}
	if v := cl.Get(context.Background(), keys[0]).Val(); v != strconv.Itoa(admitted) {
		t.Fatalf("got Redis counter %q, want a count of %d", v, admitted)
	}
	t.Logf("%d admitted (limit 100, bound %d from the observed rates)", admitted, bound)
}
