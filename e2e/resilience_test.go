package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/apisix-edge/edge-runner/testbed/idp"
)

// TestResilienceMatrix backs the README's resilience matrix: each backing
// service down alone and in pairs, against all three plugins on one route
// (pre-req: jwtcache then ratelimit keyed on the verified consumer;
// post-resp: clickhouselogger). Whatever is down, every request that
// carries a valid token is answered 200 by the upstream; the rate limiter
// marks exactly the decisions Redis did not make; the logger accounts for
// every row; tokens verify from cached keys while the IdP is down.
func TestResilienceMatrix(t *testing.T) {
	key, err := idp.NewRSA("k1", 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name            string
		redis, ch, jwks bool // which are taken down
	}{
		{name: "redis", redis: true},
		{name: "clickhouse", ch: true},
		{name: "jwks", jwks: true},
		{name: "redis+clickhouse", redis: true, ch: true},
		{name: "redis+jwks", redis: true, jwks: true},
		{name: "clickhouse+jwks", ch: true, jwks: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backing.MustRequire(t, backing.RedisServer, backing.ClickHouseServer)
			rd := backing.MustRedis(t, backing.RedisOptions{})
			ch := backing.MustClickHouse(t, backing.ClickHouseOptions{})
			jw, err := idp.Start(key)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = jw.Close() })
			port, err := backing.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			admin := fmt.Sprintf("http://127.0.0.1:%d", port)
			cfg := fmt.Sprintf(`admin:
  listen: 127.0.0.1:%d
redis:
  addrs: ["%s"]
clickhouse:
  addrs: ["%s"]
  create_table: true
  flush_interval: 100ms
jwks:
  providers:
    - name: idp
      url: %s
      refresh_interval: 1s
      max_stale: 1m
`, port, rd.Addr(), ch.NativeAddr(), jw.URL())
			r := startRunner(t, cfg, testbed.RunnerOptions{})
			g := newGateway(t, r)
			route := &testbed.Route{ID: "all",
				PreReq: []testbed.PluginConf{
					{Name: "jwtcache", Value: `{"provider":"idp","audience":"api","claims_to_headers":{"sub":"X-User-ID"}}`},
					{Name: "ratelimit", Value: `{"limit":100000,"window":"1m","key":"consumer"}`},
				},
				PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: `{"route_id":"all"}`}},
			}
			token := func(i int) string {
				tok, err := key.Sign(idp.Claims(fmt.Sprintf("user-%d", i), "https://idp.test", "api", time.Now(), nil))
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			send := func(from, n int) (degraded int) {
				t.Helper()
				for i := from; i < from+n; i++ {
					res := do(t, g, route, &testbed.Request{Method: "GET", Path: "/api",
						Headers: http.Header{"Authorization": {"Bearer " + token(i)}}})
					if res.Status != 200 || !res.UpstreamCalled {
						t.Fatalf("request %d: got %d (upstream called %v, body %q), want 200 from the upstream", i, res.Status, res.UpstreamCalled, res.Body)
					}
					if res.Upstream.Headers.Get("X-User-Id") != fmt.Sprintf("user-%d", i) {
						t.Fatalf("request %d: upstream got X-User-ID %q, want the verified subject", i, res.Upstream.Headers.Get("X-User-Id"))
					}
					if res.Headers.Get("X-RateLimit-Limit") == "" {
						t.Fatalf("request %d: no X-RateLimit-Limit: the limiter did not decide", i)
					}
					if res.Headers.Get("X-RateLimit-Status") == "degraded" {
						degraded++
					}
				}
				return degraded
			}

			// Healthy: keys fetched (the first request waits for them only
			// briefly), decisions by Redis, rows inserted.
			eventually(t, 5*time.Second, "JWKS fetched", func() bool { return jw.Hits() > 0 })
			if d := send(0, 5); d != 0 {
				t.Fatalf("healthy: %d of 5 responses degraded, want 0", d)
			}
			eventually(t, 10*time.Second, "5 rows inserted", func() bool { return chlAccounting(t, admin).inserted == 5 })

			if tc.redis {
				if err := rd.Kill(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.ch {
				if err := ch.Kill(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.jwks {
				if err := jw.Down(); err != nil {
					t.Fatal(err)
				}
			}
			const n = 40
			degraded := send(100, n)
			switch {
			case tc.redis && degraded != n:
				t.Errorf("Redis down: %d of %d responses marked degraded, want all", degraded, n)
			case !tc.redis && degraded != 0:
				t.Errorf("Redis up: %d of %d responses marked degraded, want none", degraded, n)
			}
			want := float64(5 + n)
			if tc.ch {
				// Rows wait in memory (spool off) and are counted: the
				// accounting identity holds exactly, nothing was inserted.
				eventually(t, 10*time.Second, "rows accounted", func() bool { return chlAccounting(t, admin).enqueued == want })
				a := chlAccounting(t, admin)
				if a.inserted != 5 || a.enqueued != a.inserted+a.dropped+a.queue {
					t.Errorf("ClickHouse down: enqueued %v inserted %v dropped %v pending %v; want 5 inserted and enqueued = inserted + dropped + pending",
						a.enqueued, a.inserted, a.dropped, a.queue)
				}
			} else {
				eventually(t, 10*time.Second, fmt.Sprintf("%v rows inserted", want), func() bool { return chlAccounting(t, admin).inserted == want })
			}
			m := chlMetrics(t, admin)
			for name, v := range m {
				if strings.HasPrefix(name, "apisix_edge_jwt_verifications_total{") && strings.Contains(name, `outcome="rejected"`) && v > 0 {
					t.Errorf("%s = %v, want no rejected token while the keys are within max_stale", name, v)
				}
			}
			if tc.jwks && m[`apisix_edge_jwks_stale{provider="idp"}`] != 0 {
				t.Errorf("JWKS down within max_stale: apisix_edge_jwks_stale = %v, want 0", m[`apisix_edge_jwks_stale{provider="idp"}`])
			}
		})
	}
}
