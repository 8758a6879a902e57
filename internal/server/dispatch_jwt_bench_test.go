package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/plugins/jwtcache"
	"github.com/apisix-edge/edge-runner/testbed/idp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// BenchmarkDispatchJWTCacheHit is edgeperf's jwt-hit call without the
// socket: the guarded jwtcache plugin on a cached RS256 token, with the
// scenario's headers and conf, next to the same call on an empty chain.
func BenchmarkDispatchJWTCacheHit(b *testing.B) {
	key, err := idp.NewRSA("k1", 2048)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := idp.Start(key)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	var cfg jwtcache.Config
	cfg.Providers = []jwtcache.ProviderConfig{{Name: "idp", URL: srv.URL(), Issuer: srv.Issuer()}}
	cfg.ApplyDefaults()
	if err := errors.Join(cfg.Validate()...); err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	deps := core.NewDeps(zap.NewNop(), reg)
	m, err := jwtcache.New(cfg, deps)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Start(ctx)
	defer func() { _ = m.Shutdown(context.Background()) }()
	guards := core.NewGuardMetrics(reg, deps.Throttle, &core.Inflight{})
	rpc := newRPCMetrics(prometheus.NewRegistry(), core.NewLogThrottle(zap.NewNop(), time.Minute))
	d := &dispatcher{plugins: map[string]plugin.Plugin{jwtcache.Name: guards.Guard(m)}, cache: newConfCache(time.Hour, 64, 0), m: rpc}
	c := &conn{}

	tok, err := key.Sign(idp.Claims("alice", srv.Issuer(), "edge-bench", time.Now(), nil))
	if err != nil {
		b.Fatal(err)
	}
	headers := []string{"host", "api.bench.test", "user-agent", "edgeperf/1", "accept", "application/json",
		"x-tenant-id", "acme", "authorization", "Bearer " + tok}
	conf := fmt.Sprintf(`{"provider":"idp","issuer":%q,"audience":"edge-bench"}`, srv.Issuer())
	for _, tt := range []struct {
		name    string
		plugins []string
		action  hrc.Action
	}{
		{"noop", nil, hrc.ActionNONE},
		{"hit", []string{jwtcache.Name, conf}, hrc.ActionRewrite},
	} {
		b.Run(tt.name, func(b *testing.B) {
			tok := prepareInProcess(b, d, c, "route#"+tt.name, tt.plugins...)
			call := encodeReqCall(tok, headers...)
			// the first call waits for the keys and verifies the token
			_, ab := d.dispatch(c, typeHTTPReqCall, call)
			if got := hrc.GetRootAsResp(ab.FinishedBytes(), 0).ActionType(); got != tt.action {
				b.Fatalf("answer %v, want %v", got, tt.action)
			}
			putBuilder(ab)
			b.ReportAllocs()
			for b.Loop() {
				_, ab := d.dispatch(c, typeHTTPReqCall, call)
				putBuilder(ab)
			}
		})
	}
}
