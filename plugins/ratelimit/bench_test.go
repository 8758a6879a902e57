package ratelimit

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/redis/go-redis/v9"
)

// redisStats sums calls and usec of every command in INFO commandstats
// (Redis' own CPU time in the commands), and of EVALSHA and EVAL alone.
// A script's usec includes the commands it calls, which are also counted
// on their own lines: the total then counts only the scripts.
func redisStats(b *testing.B, cl *redis.Client) (scripts int64, usec float64) {
	s, err := cl.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var all, inScripts float64
	for _, l := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" || name == "cmdstat_config|resetstat" {
			continue
		}
		script := name == "cmdstat_evalsha" || name == "cmdstat_eval"
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				if script {
					n, _ := strconv.ParseInt(v, 10, 64)
					scripts += n
				}
			case "usec":
				x, _ := strconv.ParseFloat(v, 64)
				all += x
				if script {
					inScripts += x
				}
			}
		}
	}
	if scripts > 0 {
		return scripts, inScripts
	}
	return 0, all
}

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
		{"sliding_window", true, `{"limit":1000000,"window":"1s","key":"header:X-Key","algorithm":"sliding_window"}`, false},
		{"fixed_window", true, `{"limit":1000000,"window":"1s","key":"header:X-Key","algorithm":"fixed_window"}`, false},
		{"three_rules", true, `{"key":"header:X-Key","rules":[{"limit":1000000,"window":"1s"},{"limit":100000000,"window":"1h","algorithm":"sliding_window"},{"limit":1000000000,"window":"24h","algorithm":"fixed_window"}]}`, false},
		{"delayed_sync_hot_key", true, `{"limit":1000000000,"window":"1h","key":"header:X-Key","algorithm":"fixed_window","sync_interval":"100ms"}`, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pipe := bc.pipe
			e := newEnv(b, redisCfg(b, rd.Addr(), func(r *Config) {
				r.Pipeline = &pipe
				if w, _ := strconv.Atoi(os.Getenv("RL_WORKERS")); w > 0 {
					r.PipelineWorkers = w
				}
			}))
			startAndSync(b, e)
			c := mustConf(b, bc.conf)
			cl := rd.Client()
			defer cl.Close()
			cl.ConfigResetStat(context.Background())
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
			// Redis' CPU per decision it made (the over-limit cache and the
			// delayed sync answer most without Redis).
			if n := e.decisions(outAllowed) + e.decisions(outRejected); n > 0 {
				_, usec := redisStats(b, cl)
				b.ReportMetric(usec/float64(n), "redis_us/decision")
				b.ReportMetric(float64(n)/float64(b.N), "decisions_by_redis/op")
			}
			if deg := e.decisions(outDegradedOpen); deg > 0 {
				b.Logf("%d degraded decisions", deg)
			}
		})
	}
}

// BenchmarkLoneDecision is one decision at a time (concurrency 1): the
// latency a lone request adds, sent by a worker (the hand-off of v1), by
// its own caller through the batcher, or with the batcher off.
func BenchmarkLoneDecision(b *testing.B) {
	rd := backing.MustRedis(b, backing.RedisOptions{})
	for _, bc := range []struct {
		name       string
		pipe, runs bool
	}{{"worker_handoff", true, false}, {"caller_runs", true, true}, {"no_pipeline", false, false}} {
		b.Run(bc.name, func(b *testing.B) {
			pipe := bc.pipe
			e := newEnv(b, redisCfg(b, rd.Addr(), func(r *Config) { r.Pipeline = &pipe }))
			callerRuns = bc.runs
			defer func() { callerRuns = true }()
			c := mustConf(b, `{"limit":1000000000,"window":"1h","key":"header:X-Key","algorithm":"fixed_window"}`)
			r := newReq("192.0.2.1")
			r.hdr.Set("X-Key", "k")
			e.do(c, r)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				r.resp = http.Header{}
				e.do(c, r)
			}
		})
	}
}
