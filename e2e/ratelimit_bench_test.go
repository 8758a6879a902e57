package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// The ratelimit performance figures of issue 3, measured against the no-op
// chain in the same runner process. The machine is shared and noisy, so
// throughput is measured in alternating 1 s slices (no-op, then the
// limiter) over several rounds and the median ratio is reported. Run with
//
//	go test ./e2e/ -run '^$' -bench BenchmarkRL -benchtime 1x -v
//
// These are measurements, not assertions: they log and report metrics.

const rlBenchConc = 64

func rlLoad(b *testing.B, g *testbed.Gateway, route *testbed.Route, d time.Duration, newReq func(w, i int) *testbed.Request, interval time.Duration) *testbed.LoadReport {
	b.Helper()
	rep, err := testbed.Load(context.Background(), testbed.LoadOptions{
		Gateway: g, Route: route, Concurrency: rlBenchConc, Duration: d,
		NewRequest: newReq, CountHeader: "X-RateLimit-Status", Interval: interval,
	})
	if err != nil {
		b.Fatal(err)
	}
	return rep
}

// rlDistinct gives every request its own source address: every decision
// is a Redis round trip on a key under its limit.
func rlDistinct(_, i int) *testbed.Request {
	return &testbed.Request{Method: "GET", Path: "/", SrcIP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))}
}

func rlMedian(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkRLThroughput: healthy local Redis, 64 connections, with and
// without the batcher (redis.pipeline); and a key over its limit (local
// cache).
func BenchmarkRLThroughput(b *testing.B) {
	rd := backing.MustRedis(b, backing.RedisOptions{})
	for _, pipe := range []bool{true, false} {
		b.Run(fmt.Sprintf("pipeline=%v", pipe), func(b *testing.B) {
			cfg := rlConfig(0, rlStandalone(rd.Addr())+fmt.Sprintf("  pipeline: %v\n", pipe))
			r := startRunner(b, cfg, testbed.RunnerOptions{})
			g := newGateway(b, r)
			noop := emptyRoute("noop")
			healthy := rlRoute("rl-healthy", `{"limit":1000000,"window":"1s"}`)
			over := rlRoute("rl-over", `{"limit":10,"window":"1h"}`)
			var hr, or []float64
			var lastH, lastO, lastN *testbed.LoadReport
			for round := 0; round < 5; round++ {
				n := rlLoad(b, g, noop, time.Second, nil, 0)
				h := rlLoad(b, g, healthy, time.Second, rlDistinct, 0)
				o := rlLoad(b, g, over, time.Second, nil, 0)
				hr = append(hr, h.Throughput/n.Throughput)
				or = append(or, o.Throughput/n.Throughput)
				lastH, lastO, lastN = h, o, n
				if h.HeaderValues["degraded"] > 0 {
					b.Logf("round %d: %d degraded decisions under healthy load", round, h.HeaderValues["degraded"])
				}
			}
			b.ReportMetric(rlMedian(hr), "healthy/noop")
			b.ReportMetric(rlMedian(or), "overlimit/noop")
			b.Logf("healthy ratios %.2f, median %.2f; over-limit ratios %.2f, median %.2f", hr, rlMedian(hr), or, rlMedian(or))
			b.Logf("last round:\n%s", testbed.FormatReports([]*testbed.LoadReport{lastN, lastH, lastO}))
			if os.Getenv("RL_BENCH_OUTPUT") != "" {
				b.Logf("runner output:\n%s", r.Output())
			}
		})
	}
}

// BenchmarkRLFaults: Redis killed, frozen (SIGSTOP), or 100 ms slow
// (toxiproxy latency) under 64 connections. The series has one point per
// 250 ms; the fault starts at 1 s. Reported: the no-op p99 in the same
// runner, the p99 of the whole fault after its first second, and (for
// kill and freeze) how long after the fault p99 first came back within
// 1.2x the no-op p99.
func BenchmarkRLFaults(b *testing.B) {
	for _, fault := range []string{"kill", "freeze", "latency100ms"} {
		b.Run(fault, func(b *testing.B) {
			rd := backing.MustRedis(b, backing.RedisOptions{})
			addr := rd.Addr()
			var px *backing.Proxy
			if fault == "latency100ms" {
				px = backing.MustProxy(b, rd.Addr())
				addr = px.Addr()
			}
			r := startRunner(b, rlConfig(0, rlStandalone(addr)), testbed.RunnerOptions{})
			g := newGateway(b, r)
			route := rlRoute("rl-fault", `{"limit":1000000,"window":"1s"}`)
			rlLoad(b, g, route, 500*time.Millisecond, rlDistinct, 0) // warm up
			base := rlLoad(b, g, emptyRoute("noop"), 2*time.Second, nil, 0)
			var faultAt atomic.Int64
			go func() {
				time.Sleep(time.Second)
				faultAt.Store(time.Now().UnixNano())
				var err error
				switch fault {
				case "kill":
					err = rd.Kill()
				case "freeze":
					err = rd.Freeze()
				default:
					err = px.SetLatency(100 * time.Millisecond)
				}
				if err != nil {
					b.Error(err)
				}
			}()
			rep := rlLoad(b, g, route, 5*time.Second, rlDistinct, 250*time.Millisecond)
			if fault == "freeze" {
				_ = rd.Thaw()
			}
			limit := time.Duration(float64(base.Latency.P99) * 1.2)
			back := time.Duration(-1)
			var worstAfter1s time.Duration
			for _, p := range rep.Series {
				if p.Offset < time.Second {
					continue
				}
				since := p.Offset - time.Second
				if back < 0 && p.P99 <= limit && since >= 0 {
					back = since + 250*time.Millisecond // the end of the first good interval
				}
				if since >= time.Second && p.P99 > worstAfter1s {
					worstAfter1s = p.P99
				}
			}
			b.ReportMetric(float64(base.Latency.P99.Microseconds()), "noop_p99_us")
			b.ReportMetric(float64(worstAfter1s.Microseconds()), "fault_p99_after_1s_us")
			b.Logf("%s: no-op p99 %v (1.2x = %v); worst 250ms-interval p99 from 1 s after the fault on: %v; first interval within 1.2x ended %v after the fault; decisions %v, throughput %.0f/s (no-op %.0f/s)",
				fault, base.Latency.P99, limit, worstAfter1s, back, rep.HeaderValues, rep.Throughput, base.Throughput)
			for _, p := range rep.Series {
				b.Logf("  t=%-6v n=%-6d p50=%-9v p99=%-9v max=%v", p.Offset, p.Requests, p.P50, p.P99, p.Max)
			}
		})
	}
}
