package server

import (
	"testing"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// BenchmarkDispatch is the runner's own cost of one HTTPReqCall, without
// the socket: decoding, the conf lookup, the chain, the answer.
func BenchmarkDispatch(b *testing.B) {
	plugins := map[string]plugin.Plugin{"auth": &authPlugin{}, "limit": &limitPlugin{}}
	m := newRPCMetrics(prometheus.NewRegistry(), core.NewLogThrottle(zap.NewNop(), time.Minute))
	d := &dispatcher{plugins: plugins, cache: newConfCache(time.Hour, 64, 0), m: m}
	c := &conn{}
	headers := []string{"host", "api.example", "user-agent", "curl/8", "accept", "*/*", "x-request-id", "r-1", "ok", "1"}
	for _, tt := range []struct {
		name    string
		plugins []string
	}{
		{"noop", nil},
		{"header_rewrite", []string{"auth", "{}"}},
		{"stop", []string{"auth", "{}", "limit", "{}"}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			_, pb := d.dispatch(c, typePrepareConf, encodePrepare("route#"+tt.name, tt.plugins...))
			putBuilder(pb)
			tok, ok := d.cache.byKey("route#" + tt.name)
			if !ok {
				b.Fatal("conf not prepared")
			}
			call := encodeReqCall(tok, headers...)
			b.ReportAllocs()
			for b.Loop() {
				_, ab := d.dispatch(c, typeHTTPReqCall, call)
				putBuilder(ab)
			}
		})
	}
}
