package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestRedisHzAndExpireCycleCap(t *testing.T) {
	for _, tc := range []struct {
		info string
		hz   int
		cap  time.Duration
	}{
		{"# Server\r\nredis_version:7.0.15\r\nhz:10\r\nconfigured_hz:10\r\n", 10, 25 * time.Millisecond},
		{"# Server\r\nhz:37\r\nconfigured_hz:100\r\nlru_clock:1\r\n", 100, 2500 * time.Microsecond},
		{"# Server\r\nredis_version:4.0.0\r\nhz:50\r\n", 50, 5 * time.Millisecond},
		{"# Server\r\nredis_version:7.0.15\r\n", 0, 0},
		{"# Server\r\nconfigured_hz:x\r\n", 0, 0},
	} {
		hz := redisHz(tc.info)
		if hz != tc.hz {
			t.Errorf("redisHz(%q): got %d, want %d", tc.info, hz, tc.hz)
		}
		if hz > 0 && expireCycleCap(hz) != tc.cap {
			t.Errorf("expireCycleCap(%d): got %v, want %v", hz, expireCycleCap(hz), tc.cap)
		}
	}
}

// TestLowRedisHzWarnsOnce: against a redis-server at its default hz 10
// (an expire cycle of up to 25 ms, over the 20 ms call timeout) the plugin
// logs one warning however often it rereads the server, and none at hz 100.
func TestLowRedisHzWarnsOnce(t *testing.T) {
	for _, tc := range []struct {
		conf []string
		want int
	}{{nil, 1}, {[]string{"hz 100"}, 0}} {
		rd := backing.MustRedis(t, backing.RedisOptions{Config: tc.conf})
		logs, seen := observer.New(zapcore.WarnLevel)
		deps := core.Deps{Log: zap.New(logs), Throttle: core.NewLogThrottle(zap.NewNop(), time.Minute),
			Metrics: prometheus.NewRegistry(), Status: core.NewStatus("test", nil)}
		rl, err := New(redisCfg(t, rd.Addr(), nil), deps)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 { // Start, then two recoveries
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			rl.checkVersions(ctx)
			cancel()
		}
		_ = rl.Shutdown(context.Background())
		if got := seen.FilterMessageSnippet("redis hz is low").Len(); got != tc.want {
			t.Errorf("redis %v: got %d low-hz warnings, want %d: %v", tc.conf, got, tc.want, seen.All())
		}
	}
}
