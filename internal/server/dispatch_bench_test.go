package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// prepareInProcess dispatches a PrepareConf for key with plugins (name,
// conf pairs) and returns the token it was cached under.
func prepareInProcess(b *testing.B, d *dispatcher, c *conn, key string, plugins ...string) uint32 {
	b.Helper()
	_, pb := d.dispatch(c, typePrepareConf, encodePrepare(key, plugins...))
	putBuilder(pb)
	tok, ok := d.cache.byKey(key)
	if !ok {
		b.Fatal("conf not prepared")
	}
	return tok
}

// BenchmarkDispatch is the runner's own cost of one HTTPReqCall, without
// the socket: decoding, the conf lookup, the chain, the answer.
func BenchmarkDispatch(b *testing.B) {
	plugins := map[string]plugin.Plugin{"auth": &authPlugin{}, "limit": &limitPlugin{}, "jwtlike": &jwtLikePlugin{}}
	m := newRPCMetrics(prometheus.NewRegistry(), core.NewLogThrottle(zap.NewNop(), time.Minute))
	d := &dispatcher{plugins: plugins, cache: newConfCache(time.Hour, 64, 0), m: m}
	c := &conn{}
	headers := []string{"host", "api.example", "user-agent", "curl/8", "accept", "*/*", "x-request-id", "r-1", "ok", "1"}
	// the headers of edgeperf's jwt-hit scenario, a bearer token of the
	// size of an RS256-2048 JWT
	jwtHeaders := []string{"host", "api.bench.test", "user-agent", "edgeperf/1", "accept", "application/json",
		"x-tenant-id", "acme", "authorization", "Bearer " + strings.Repeat("x", 680)}
	for _, tt := range []struct {
		name    string
		plugins []string
		headers []string
	}{
		{"noop", nil, headers},
		{"header_rewrite", []string{"auth", "{}"}, headers},
		{"stop", []string{"auth", "{}", "limit", "{}"}, headers},
		{"jwt_like", []string{"jwtlike", "{}"}, jwtHeaders},
	} {
		b.Run(tt.name, func(b *testing.B) {
			tok := prepareInProcess(b, d, c, "route#"+tt.name, tt.plugins...)
			call := encodeReqCall(tok, tt.headers...)
			b.ReportAllocs()
			for b.Loop() {
				_, ab := d.dispatch(c, typeHTTPReqCall, call)
				putBuilder(ab)
			}
		})
	}
}

// jwtLikePlugin does to the headers what jwtcache does on a cache hit: it
// reads the bearer token, removes the consumer header a client may have
// sent, sets it to the verified consumer, and records the consumer.
type jwtLikePlugin struct{ plugin.DefaultPlugin }

func (jwtLikePlugin) Name() string                     { return "jwtlike" }
func (jwtLikePlugin) ParseConf(in []byte) (any, error) { return nil, nil }
func (jwtLikePlugin) RequestFilter(_ any, w http.ResponseWriter, r pkgHTTP.Request) {
	hdr := r.Header()
	if !strings.HasPrefix(hdr.Get("Authorization"), "Bearer ") {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	hdr.Del(core.ConsumerHeader)
	hdr.Set(core.ConsumerHeader, "alice")
	core.SetVerifiedConsumer(r, "alice")
}
