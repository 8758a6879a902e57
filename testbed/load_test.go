package testbed_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

func TestLoad(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "load", PreReq: []testbed.PluginConf{
		conf("fx-rewrite", `{"resp_headers":{"X-RateLimit-Status":"allowed"}}`)}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tests := []struct {
		name string
		opts testbed.LoadOptions
	}{
		{"request count", testbed.LoadOptions{Concurrency: 4, Requests: 400, Interval: 20 * time.Millisecond}},
		{"duration", testbed.LoadOptions{Concurrency: 2, Duration: 200 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.Gateway, o.Route, o.CountHeader = g, route, "X-RateLimit-Status"
			o.NewRequest = func(w, i int) *testbed.Request {
				return &testbed.Request{Path: "/", SrcIP: net.IPv4(10, 0, byte(i>>8), byte(i))}
			}
			rep, err := testbed.Load(ctx, o)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if o.Requests > 0 && rep.Requests != int64(o.Requests) {
				t.Errorf("requests: got %d, want %d", rep.Requests, o.Requests)
			}
			if rep.Requests == 0 || rep.Errors != 0 {
				t.Errorf("requests/errors: got %d/%d, want >0/0 (%v)", rep.Requests, rep.Errors, rep.ErrorKinds)
			}
			if rep.Status[200] != rep.Requests || rep.HeaderValues["allowed"] != rep.Requests {
				t.Errorf("outcomes: got status %v header %v, want all %d 200/allowed", rep.Status, rep.HeaderValues, rep.Requests)
			}
			l := rep.Latency
			if !(l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) || l.Max <= 0 {
				t.Errorf("latency order: got %+v, want min<=p50<=p90<=p99<=max, max>0", l)
			}
			if o.Interval > 0 {
				var sum int64
				for _, p := range rep.Series {
					sum += p.Requests
				}
				if len(rep.Series) == 0 || sum != rep.Requests {
					t.Errorf("series: got %d points summing to %d, want >0 points summing to %d", len(rep.Series), sum, rep.Requests)
				}
			}
			s := rep.String()
			if !strings.Contains(s, "p99") || !strings.Contains(s, "X-RateLimit-Status:allowed=") {
				t.Errorf("String: got %q, want a table with p99 and outcome counts", s)
			}
			if _, err := json.Marshal(rep); err != nil {
				t.Errorf("json: %v", err)
			}
		})
	}
}

func TestLoadCountsErrors(t *testing.T) {
	g := testbed.NewGateway(t.TempDir()+"/none.sock", testbed.GatewayOptions{})
	rep, err := testbed.Load(context.Background(), testbed.LoadOptions{
		Gateway: g, Route: &testbed.Route{ID: "x", PreReq: []testbed.PluginConf{}}, Requests: 10, Concurrency: 3,
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if rep.Requests != 10 || rep.Errors != 10 || rep.Status[503] != 10 || len(rep.ErrorKinds) == 0 {
		t.Errorf("got requests %d errors %d status %v kinds %d, want 10 10 503=10 >0",
			rep.Requests, rep.Errors, rep.Status, len(rep.ErrorKinds))
	}
	if _, err := testbed.Load(context.Background(), testbed.LoadOptions{}); err == nil {
		t.Errorf("Load without gateway: got nil error, want an error")
	}
}

// TestLoadRateAndOnResult: OnResult sees every counted request exactly once
// with its index, and Rate paces the run instead of a closed loop.
func TestLoadRateAndOnResult(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "rate", PreReq: []testbed.PluginConf{}}
	var mu sync.Mutex
	seen := map[int]int{}
	var withResult int
	rep, err := testbed.Load(context.Background(), testbed.LoadOptions{
		Gateway: g, Route: route, Concurrency: 4, Duration: 500 * time.Millisecond, Rate: 200,
		OnResult: func(lr testbed.LoadResult) {
			mu.Lock()
			defer mu.Unlock()
			seen[lr.Index]++
			if lr.Result != nil && lr.Err == nil && lr.Request != nil && lr.Latency > 0 && !lr.Start.IsZero() {
				withResult++
			}
		},
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if int64(len(seen)) != rep.Requests || int64(withResult) != rep.Requests {
		t.Errorf("OnResult: got %d distinct indexes, %d complete results, want %d each", len(seen), withResult, rep.Requests)
	}
	for i, n := range seen {
		if n != 1 {
			t.Errorf("OnResult: index %d seen %d times, want 1", i, n)
		}
	}
	// 200/s for 0.5 s is about 100 requests; a closed loop would send
	// thousands. The bounds are loose: pacing is what is tested, not timing.
	if rep.Requests < 20 || rep.Requests > 400 {
		t.Errorf("paced requests: got %d, want about 100 (20..400)", rep.Requests)
	}
}

// TestLoadStop: closing Stop ends a long run early, with no error and
// every request counted.
func TestLoadStop(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	stop := make(chan struct{})
	var mu sync.Mutex
	var seen int64
	done := make(chan struct{})
	var rep *testbed.LoadReport
	var err error
	go func() {
		defer close(done)
		rep, err = testbed.Load(context.Background(), testbed.LoadOptions{
			Gateway: g, Route: &testbed.Route{ID: "stop", PreReq: []testbed.PluginConf{}},
			Concurrency: 3, Duration: time.Hour, Stop: stop,
			OnResult: func(testbed.LoadResult) { mu.Lock(); seen++; mu.Unlock() },
		})
	}()
	time.Sleep(100 * time.Millisecond)
	close(stop)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Load did not return after Stop was closed")
	}
	if err != nil {
		t.Fatalf("Load: got error %v, want nil", err)
	}
	if rep.Requests == 0 || rep.Requests != seen || rep.Errors != 0 {
		t.Errorf("got requests %d, OnResult calls %d, errors %d; want >0, equal, 0", rep.Requests, seen, rep.Errors)
	}
}

// TestLoadPair: one worker alternates the two routes in turns;
// each report counts its own requests and outcomes, and the time of its own
// turns only.
func TestLoadPair(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	noop := &testbed.Route{ID: "pair-noop", PreReq: []testbed.PluginConf{}}
	slow := &testbed.Route{ID: "pair-slow", PreReq: []testbed.PluginConf{
		conf("fx-sleep", `{"ms":5}`),
		conf("fx-rewrite", `{"resp_headers":{"X-RateLimit-Status":"allowed"}}`)}}
	const n = 20
	var mu sync.Mutex
	var order []string
	seen := map[string]map[int]bool{"a": {}, "b": {}}
	onResult := func(leg string) func(testbed.LoadResult) {
		return func(lr testbed.LoadResult) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, leg)
			seen[leg][lr.Index] = true
		}
	}
	start := time.Now()
	ra, rb, err := testbed.LoadPair(context.Background(),
		testbed.LoadOptions{Gateway: g, Route: noop, Requests: n, Turn: 3, CountHeader: "X-RateLimit-Status", OnResult: onResult("a")},
		testbed.LoadOptions{Gateway: g, Route: slow, Turn: 2, CountHeader: "X-RateLimit-Status", OnResult: onResult("b")})
	wall := time.Since(start)
	if err != nil {
		t.Fatalf("LoadPair: %v", err)
	}
	for _, tt := range []struct {
		name   string
		rep    *testbed.LoadReport
		header string
	}{{"a", ra, ""}, {"b", rb, "allowed"}} {
		if tt.rep.Requests != n || tt.rep.Errors != 0 || tt.rep.Status[200] != n || tt.rep.HeaderValues[tt.header] != n {
			t.Errorf("%s: got %d requests, %d errors, status %v, header %v; want %d, 0, all 200, all %q",
				tt.name, tt.rep.Requests, tt.rep.Errors, tt.rep.Status, tt.rep.HeaderValues, n, tt.header)
		}
		if len(seen[tt.name]) != n {
			t.Errorf("%s: got %d distinct request indexes, want %d", tt.name, len(seen[tt.name]), n)
		}
		if got := tt.rep.Throughput * tt.rep.Elapsed.Seconds(); got < n-0.01 || got > n+0.01 {
			t.Errorf("%s: throughput × elapsed = %.3f, want %d", tt.name, got, n)
		}
	}
	// turns of 3 and 2 requests: a a a b b, a a a b b, ...; the loop ends
	// when both have sent n
	for i, leg := range order {
		if want := []string{"a", "a", "a", "b", "b"}[i%5]; i < 5*(n/3) && leg != want {
			t.Fatalf("request %d went to %s, want %s (order %v)", i, leg, want, order)
		}
	}
	// every turn of b sleeps 5 ms in the runner; the two legs' turns are
	// disjoint parts of the call
	if min := n * 5 * time.Millisecond; rb.Elapsed < min {
		t.Errorf("b elapsed: got %v, want at least %v (its %d sleeps)", rb.Elapsed, min, n)
	}
	if sum := ra.Elapsed + rb.Elapsed; sum > wall {
		t.Errorf("elapsed a + b: got %v, want at most the call's %v", sum, wall)
	}

	_, _, err = testbed.LoadPair(context.Background(),
		testbed.LoadOptions{Gateway: g, Route: noop, Requests: n, Rate: 100}, testbed.LoadOptions{Gateway: g, Route: slow})
	if err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("LoadPair with Rate: got error %v, want Rate and Interval not supported", err)
	}
}
