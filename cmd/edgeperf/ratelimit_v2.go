package main

import (
	"slices"

	"github.com/apisix-edge/edge-runner/testbed"
)

// The ratelimit v2 scenarios (issue 14): the O(1) algorithms, three rules
// decided in one round trip, and delayed sync on a hot key, each against
// its own no-op slices like every other scenario.

// withRLV2 puts the ratelimit v2 scenarios after the healthy ones and
// before the first fault scenario (faults are last: they kill servers).
func withRLV2(e *env, scs []*scenario) []*scenario {
	i := slices.IndexFunc(scs, func(s *scenario) bool { return s.before != nil })
	if i < 0 {
		i = len(scs)
	}
	return slices.Concat(scs[:i], e.rlV2Scenarios(), scs[i:])
}

func (e *env) rlV2Scenarios() []*scenario {
	preNoop := func(id string) *testbed.Route { return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{}} }
	route := func(id, conf string) *testbed.Route {
		return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: conf}}}
	}
	// As the v1 healthy scenario: a distinct address per request, far
	// under every limit, so each request is a Redis decision.
	distinct := reqPool(1<<16, func(i int) *testbed.Request {
		return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: baseHeaders(), SrcIP: distinctIP(i)}
	})
	hot := reqPool(1, func(int) *testbed.Request {
		return &testbed.Request{Method: "GET", Path: "/api/v1/items/42", Headers: baseHeaders()}
	})
	metrics := []string{"apisix_edge_ratelimit_decisions_total", "apisix_edge_ratelimit_redis_", "apisix_edge_ratelimit_batcher_"}
	const (
		sw     = `{"limit":1000,"window":"1s","algorithm":"sliding_window"}`
		fw     = `{"limit":1000,"window":"1s","algorithm":"fixed_window"}`
		three  = `{"rules":[{"limit":1000,"window":"1s"},{"limit":100000,"window":"1h","algorithm":"sliding_window"},{"limit":1000000,"window":"24h","algorithm":"fixed_window"}]}`
		synced = `{"limit":1000000000,"window":"1h","algorithm":"fixed_window","sync_interval":"100ms"}`
	)
	return []*scenario{
		{key: "rl-sw", title: "ratelimit v2, sliding_window, every request a Redis decision", phases: "pre-req",
			route: route("rl-sw", sw), base: preNoop("noop-rl-sw"), newReq: distinct, header: "X-RateLimit-Status", metrics: metrics, bare: "sliding_window",
			note: "`" + sw + "`, a distinct source address per request"},
		{key: "rl-fw", title: "ratelimit v2, fixed_window, every request a Redis decision", phases: "pre-req",
			route: route("rl-fw", fw), base: preNoop("noop-rl-fw"), newReq: distinct, header: "X-RateLimit-Status", metrics: metrics, bare: "fixed_window",
			note: "`" + fw + "`, a distinct source address per request"},
		{key: "rl-3rules", title: "ratelimit v2, three rules (one per algorithm) in one round trip", phases: "pre-req",
			route: route("rl-3rules", three), base: preNoop("noop-rl-3rules"), newReq: distinct, header: "X-RateLimit-Status", metrics: metrics,
			note: "`" + three + "`, a distinct source address per request: one EVALSHA over three keys per decision"},
		{key: "rl-sync-hot", title: "ratelimit v2, delayed sync on one hot key", phases: "pre-req",
			route: route("rl-sync-hot", synced), base: preNoop("noop-rl-sync-hot"), newReq: hot, header: "X-RateLimit-Status", metrics: metrics,
			note: "`" + synced + "`, one client address: decided in memory, one Redis round trip per 100 ms"},
	}
}
