package ratelimit

import (
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// BenchmarkRequestFilter is one decision per iteration against a real
// redis-server, from 32×GOMAXPROCS goroutines, with and without the
// batcher, on keys under their limit; and on a key over its limit (the
// local cache answers). It reports decisions per Redis round trip;
// RL_WORKERS=n overrides redis.pipeline_workers.
func BenchmarkRequestFilter(b *testing.B) {
	rd := backing.MustRedis(b, backing.RedisOptions{})
	for _, bc := range []struct {
		name string
		pipe bool
		conf string
		hot  bool
	}{
		{"redis/pipeline", true, `{"limit":1000000,"window":"1s","key":"header:X-Key"}`, false},
		{"redis/no_pipeline", false, `{"limit":1000000,"window":"1s","key":"header:X-Key"}`, false},
		{"over_limit_cache", true, `{"limit":1,"window":"1m","key":"header:X-Key"}`, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pipe := bc.pipe
			e := newEnv(b, redisCfg(b, rd.Addr(), func(r *Config) {
				r.Pipeline = &pipe
				if w, _ := strconv.Atoi(os.Getenv("RL_WORKERS")); w > 0 {
					r.PipelineWorkers = w
				}
			}))
			c := mustConf(b, bc.conf)
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := newReq("192.0.2.1")
					k := "hot"
					if !bc.hot {
						k = "k" + strconv.FormatInt(n.Add(1)%1000, 10)
					}
					r.hdr.Set("X-Key", k)
					e.do(c, r)
				}
			})
			b.StopTimer()
			if bt := e.rl.batch; bt != nil && bt.stats.roundTrips.Load() > 0 {
				b.ReportMetric(float64(bt.stats.sent.Load())/float64(bt.stats.roundTrips.Load()), "decisions/roundtrip")
			}
			if deg := e.decisions(outDegradedOpen); deg > 0 {
				b.Logf("%d degraded decisions", deg)
			}
		})
	}
}
