package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/apisix-edge/edge-runner/testbed/idp"
)

// TestCompatFrameworkRunner: the plugins are public packages that work in
// a runner built on the reference framework's own runner.Run, not only in
// ours. The binary (testbed/internal/compatrunner) registers all three; the
// test bed drives it like APISIX, with a real Redis and a real JWKS server.
func TestCompatFrameworkRunner(t *testing.T) {
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/testbed/internal/compatrunner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	redis := backing.MustRedis(t, backing.RedisOptions{})
	key, err := idp.NewRSA("k1", 2048)
	if err != nil {
		t.Fatal(err)
	}
	provider, err := idp.Start(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = provider.Close() })
	cfg := fmt.Sprintf("redis:\n  addrs: [%q]\njwks:\n  providers:\n    - name: kc\n      url: %s\n", redis.Addr(), provider.URL())
	path := filepath.Join(t.TempDir(), "go-runner.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := testbed.MustStartRunner(t, testbed.RunnerOptions{Path: bin, Args: []string{"-c", path}})
	g := newGateway(t, r)

	limited := &testbed.Route{ID: "rl", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":1,"window":"1m"}`}}}
	if res := do(t, g, limited, nil); res.Status != 200 || !res.UpstreamCalled {
		t.Fatalf("ratelimit, first request: got %d (upstream %v), want 200", res.Status, res.UpstreamCalled)
	}
	if res := do(t, g, limited, nil); res.Status != 429 || res.UpstreamCalled {
		t.Fatalf("ratelimit, second request: got %d (upstream %v), want 429", res.Status, res.UpstreamCalled)
	}

	auth := &testbed.Route{ID: "jwt", PreReq: []testbed.PluginConf{{Name: "jwtcache", Value: `{"provider":"kc","claims_to_headers":{"sub":"X-User-ID"}}`}}}
	if res := do(t, g, auth, nil); res.Status != 401 || res.UpstreamCalled {
		t.Fatalf("jwtcache without a token: got %d (upstream %v), want 401", res.Status, res.UpstreamCalled)
	}
	tok, err := key.Sign(idp.Claims("alice", "https://idp.test", "api", time.Now(), nil))
	if err != nil {
		t.Fatal(err)
	}
	res := do(t, g, auth, &testbed.Request{Method: "GET", Path: "/", Headers: http.Header{"Authorization": {"Bearer " + tok}}})
	if res.Status != 200 || !res.UpstreamCalled || res.Upstream.Headers.Get("X-User-ID") != "alice" {
		t.Fatalf("jwtcache with a token: got %d (upstream %+v), want 200 and X-User-ID alice", res.Status, res.Upstream)
	}

	// an invalid conf still fails closed: the guard keeps the plugin in
	// the framework's chain
	bad := &testbed.Route{ID: "bad", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":-1}`}}}
	if res := do(t, g, bad, nil); res.Status != 500 || res.UpstreamCalled {
		t.Fatalf("invalid ratelimit conf: got %d (upstream %v), want 500", res.Status, res.UpstreamCalled)
	}
}
