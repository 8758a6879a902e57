package testbed_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
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
