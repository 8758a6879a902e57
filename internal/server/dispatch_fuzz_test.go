package server

import (
	"testing"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// FuzzDispatch feeds arbitrary frames to the dispatcher, as a client of the
// socket can: it must answer every one (an error frame at worst) without
// panicking, and the answer must fit a frame.
func FuzzDispatch(f *testing.F) {
	plugins := map[string]plugin.Plugin{"auth": &authPlugin{}, "limit": &limitPlugin{}}
	m := newRPCMetrics(prometheus.NewRegistry(), core.NewLogThrottle(zap.NewNop(), time.Minute))
	d := &dispatcher{plugins: plugins, cache: newConfCache(time.Hour, 64, 0), m: m}
	// seeds: a PrepareConf naming both plugins (token 1), and a call on it
	f.Add(byte(typePrepareConf), encodePrepare("route#1", "auth", "{}", "limit", "{}"))
	f.Add(byte(typeHTTPReqCall), encodeReqCall(1, "ok", "1", "authorization", "Bearer x"))
	f.Add(byte(typeRespCall), []byte{12, 0, 0, 0, 8, 0, 12, 0, 4, 0, 8, 0, 8, 0, 0, 0, 1, 0, 0, 0})
	f.Add(byte(9), []byte("x"))
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		c := &conn{}
		ans, b := d.dispatch(c, typ, body)
		if n := len(b.FinishedBytes()); n == 0 || n > maxFrameLen {
			t.Fatalf("answer of type %d: %d bytes", ans, n)
		}
		putBuilder(b)
	})
}
