package testbed_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

func upstreamOK(up *testbed.UpstreamRequest) testbed.UpstreamResponse {
	return testbed.UpstreamResponse{
		Status: 202,
		Headers: http.Header{
			"X-Up-Header":  {"u"},
			"Content-Type": {"text/plain"},
			"Server":       {"upstream"},
		},
		Body: []byte("upstream-body"),
	}
}

func TestStop(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	tests := []struct {
		name       string
		route      testbed.Route
		wantStatus int
		wantBody   string
		wantHdr    map[string]string
		wantPhase  testbed.Phase
		wantPhases []testbed.Phase
	}{
		{
			name: "status headers body",
			route: testbed.Route{ID: "stop1", PreReq: []testbed.PluginConf{
				conf("fx-stop", `{"status":403,"headers":{"X-Stop":"yes","Content-Type":"text/x"},"body":"denied"}`)}},
			wantStatus: 403, wantBody: "denied",
			wantHdr:    map[string]string{"X-Stop": "yes", "Content-Type": "text/x"},
			wantPhase:  testbed.PhasePreReq,
			wantPhases: []testbed.Phase{testbed.PhasePreReq},
		},
		{
			name: "body only is 200",
			route: testbed.Route{ID: "stop2", PreReq: []testbed.PluginConf{
				conf("fx-stop", `{"body":"hi"}`)}},
			wantStatus: 200, wantBody: "hi",
			wantPhase:  testbed.PhasePreReq,
			wantPhases: []testbed.Phase{testbed.PhasePreReq},
		},
		{
			name: "status only has no body",
			route: testbed.Route{ID: "stop3", PreReq: []testbed.PluginConf{
				conf("fx-stop", `{"status":429}`)}},
			wantStatus: 429, wantBody: "",
			wantPhase:  testbed.PhasePreReq,
			wantPhases: []testbed.Phase{testbed.PhasePreReq},
		},
		{
			name: "post-req stop keeps pre-req resp headers",
			route: testbed.Route{ID: "stop4",
				PreReq:   []testbed.PluginConf{conf("fx-rewrite", `{"resp_headers":{"X-Pre":"1"}}`)},
				PostReq:  []testbed.PluginConf{conf("fx-stop", `{"status":401,"body":"no"}`)},
				PostResp: []testbed.PluginConf{conf("fx-resp", `{"status":500}`)},
			},
			wantStatus: 401, wantBody: "no",
			wantHdr:    map[string]string{"X-Pre": "1"},
			wantPhase:  testbed.PhasePostReq,
			wantPhases: []testbed.Phase{testbed.PhasePreReq, testbed.PhasePostReq},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			res := do(t, g, &tt.route, &testbed.Request{Path: "/x", Upstream: func(up *testbed.UpstreamRequest) testbed.UpstreamResponse {
				called = true
				return upstreamOK(up)
			}})
			if res.Status != tt.wantStatus {
				t.Errorf("status: got %d, want %d (err %v)", res.Status, tt.wantStatus, res.Err)
			}
			if string(res.Body) != tt.wantBody {
				t.Errorf("body: got %q, want %q", res.Body, tt.wantBody)
			}
			for k, v := range tt.wantHdr {
				if got := res.Headers.Get(k); got != v {
					t.Errorf("header %s: got %q, want %q", k, got, v)
				}
			}
			if called || res.UpstreamCalled {
				t.Errorf("upstream called: got true, want false")
			}
			if res.StoppedBy != tt.wantPhase {
				t.Errorf("stopped by: got %q, want %q", res.StoppedBy, tt.wantPhase)
			}
			if !slices.Equal(res.Phases, tt.wantPhases) {
				t.Errorf("phases: got %v, want %v", res.Phases, tt.wantPhases)
			}
		})
	}
}

func TestRewrite(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "rw", PreReq: []testbed.PluginConf{conf("fx-rewrite", `{
		"path": "/new path",
		"set_headers": {"X-Up": "1", "Host": "up.example"},
		"del_headers": ["X-Del"],
		"set_args": {"a": "1"},
		"del_args": ["b"],
		"resp_headers": {"X-Resp": "r", "Server": "evil", "Content-Type": "x/y", "Location": "/z",
			"WWW-Authenticate": "Basic", "Content-Language": "fr", "Connection": "close"}
	}`)}}
	res := do(t, g, route, &testbed.Request{
		Method:   "POST",
		Path:     "/old",
		Args:     url.Values{"a": {"0"}, "b": {"2"}, "c": {"3"}},
		Headers:  http.Header{"X-Del": {"gone"}, "X-Keep": {"k"}, "Host": {"client.example"}},
		Body:     []byte("payload"),
		Upstream: upstreamOK,
	})
	if res.Status != 202 {
		t.Fatalf("status: got %d, want 202 (err %v)", res.Status, res.Err)
	}
	up := res.Upstream
	checks := []struct{ what, got, want string }{
		{"upstream method", up.Method, "POST"},
		{"upstream path", up.Path, "/new%20path"},
		{"upstream args", up.Args.Encode(), "a=1&c=3"},
		{"upstream X-Up", up.Headers.Get("X-Up"), "1"},
		{"upstream X-Del", up.Headers.Get("X-Del"), ""},
		{"upstream X-Keep", up.Headers.Get("X-Keep"), "k"},
		{"upstream host", up.Host, "up.example"},
		{"upstream Host header", up.Headers.Get("Host"), "up.example"},
		{"upstream body", string(up.Body), "payload"},
		{"upstream URI", up.URI(), "/new%20path?a=1&c=3"},
		{"client X-Resp", res.Headers.Get("X-Resp"), "r"},
		{"client X-Up-Header", res.Headers.Get("X-Up-Header"), "u"},
		{"client Server (from upstream; runner's dropped)", res.Headers.Get("Server"), "upstream"},
		{"client Content-Type (from upstream; runner's dropped)", res.Headers.Get("Content-Type"), "text/plain"},
		{"client Location", res.Headers.Get("Location"), ""},
		{"client WWW-Authenticate", res.Headers.Get("WWW-Authenticate"), ""},
		{"client Content-Language", res.Headers.Get("Content-Language"), ""},
		{"client Connection", res.Headers.Get("Connection"), ""},
		{"client body", string(res.Body), "upstream-body"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	if _, ok := up.Headers["X-Del"]; ok {
		t.Errorf("upstream X-Del present: got %v, want deleted", up.Headers["X-Del"])
	}
	if !res.UpstreamCalled {
		t.Errorf("upstream called: got false, want true")
	}

	// post-req sees the pre-req rewrite.
	route2 := &testbed.Route{ID: "rw2",
		PreReq:  []testbed.PluginConf{conf("fx-rewrite", `{"path":"/p1","set_headers":{"X-One":"1"}}`)},
		PostReq: []testbed.PluginConf{conf("fx-echo", `{"var":"http_x_one"}`)},
	}
	res = do(t, g, route2, &testbed.Request{Path: "/"})
	if got := res.Upstream.Headers.Get("X-Echo-Var"); got != "1" {
		t.Errorf("post-req var http_x_one: got %q, want %q", got, "1")
	}
	if got := res.Upstream.Path; got != "/p1" {
		t.Errorf("path after both phases: got %q, want %q", got, "/p1")
	}
}

func TestExtraInfo(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	tests := []struct {
		name       string
		conf       string
		req        testbed.Request
		wantVar    string
		wantAbsent bool
		wantBody   string
		wantQs     int
	}{
		{name: "remote_addr v4", conf: `{"var":"remote_addr"}`,
			req: testbed.Request{SrcIP: net.ParseIP("10.1.2.3")}, wantVar: "10.1.2.3", wantQs: 1},
		{name: "remote_addr v6", conf: `{"var":"remote_addr"}`,
			req: testbed.Request{SrcIP: net.ParseIP("2001:db8::1")}, wantVar: "2001:db8::1", wantQs: 1},
		{name: "explicit var", conf: `{"var":"request_id"}`,
			req: testbed.Request{Vars: map[string]string{"request_id": "abc"}}, wantVar: "abc", wantQs: 1},
		{name: "absent var", conf: `{"var":"no_such_var"}`, wantAbsent: true, wantQs: 1},
		{name: "header var", conf: `{"var":"http_x_user"}`,
			req: testbed.Request{Headers: http.Header{"X-User": {"bob"}}}, wantVar: "bob", wantQs: 1},
		{name: "var and body", conf: `{"var":"route_id","body":true}`,
			req: testbed.Request{Body: []byte("hello body")}, wantVar: "xi", wantBody: "hello body", wantQs: 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			route := &testbed.Route{ID: "xi", Version: i, PreReq: []testbed.PluginConf{conf("fx-echo", tt.conf)}}
			res := do(t, g, route, &tt.req)
			if res.Status != 200 {
				t.Fatalf("status: got %d, want 200 (err %v)", res.Status, res.Err)
			}
			h := res.Upstream.Headers
			if got := h.Get("X-Echo-Var"); got != tt.wantVar {
				t.Errorf("X-Echo-Var: got %q, want %q", got, tt.wantVar)
			}
			if got := h.Get("X-Echo-Var-Absent") == "true"; got != tt.wantAbsent {
				t.Errorf("var absent: got %v, want %v", got, tt.wantAbsent)
			}
			if got := h.Get("X-Echo-Body"); got != tt.wantBody {
				t.Errorf("X-Echo-Body: got %q, want %q", got, tt.wantBody)
			}
			if res.ExtraInfo != tt.wantQs {
				t.Errorf("ExtraInfo questions: got %d, want %d", res.ExtraInfo, tt.wantQs)
			}
		})
	}
}

func TestPostResp(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	tests := []struct {
		name       string
		conf       string
		wantStatus int
		wantBody   string
		wantHdr    map[string]string
		wantNoHdr  []string
	}{
		{name: "no answer keeps upstream, drops excluded headers", conf: `{}`,
			wantStatus: 202, wantBody: "upstream-body",
			wantHdr:   map[string]string{"X-Up-Header": "u"},
			wantNoHdr: []string{"Content-Type", "Server"}},
		{name: "any header replaces all headers", conf: `{"headers":{"X-Post":"1"}}`,
			wantStatus: 202, wantBody: "upstream-body",
			wantHdr:   map[string]string{"X-Post": "1"},
			wantNoHdr: []string{"X-Up-Header", "Content-Type"}},
		{name: "status and body", conf: `{"status":201,"body":"new"}`,
			wantStatus: 201, wantBody: "new", wantHdr: map[string]string{"X-Up-Header": "u"}},
		{name: "body only keeps upstream status", conf: `{"body":"only"}`,
			wantStatus: 202, wantBody: "only"},
		{name: "status only keeps upstream body", conf: `{"status":299}`,
			wantStatus: 299, wantBody: "upstream-body"},
		{name: "read body and var", conf: `{"read_body":true,"read_var":"request_method"}`,
			wantStatus: 202, wantBody: "upstream-body",
			wantHdr: map[string]string{"X-Orig-Body": "upstream-body", "X-Var": "PUT"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := g.Stats()
			route := &testbed.Route{ID: "pr", Version: i, PostResp: []testbed.PluginConf{conf("fx-resp", tt.conf)}}
			res := do(t, g, route, &testbed.Request{Method: "PUT", Upstream: upstreamOK})
			if res.Status != tt.wantStatus {
				t.Errorf("status: got %d, want %d (err %v)", res.Status, tt.wantStatus, res.Err)
			}
			if string(res.Body) != tt.wantBody {
				t.Errorf("body: got %q, want %q", res.Body, tt.wantBody)
			}
			for k, v := range tt.wantHdr {
				if got := res.Headers.Get(k); got != v {
					t.Errorf("header %s: got %q, want %q", k, got, v)
				}
			}
			for _, k := range tt.wantNoHdr {
				if got, ok := res.Headers[http.CanonicalHeaderKey(k)]; ok {
					t.Errorf("header %s: got %q, want absent", k, got)
				}
			}
			after := g.Stats()
			if d := after.Calls - before.Calls; d != 0 {
				t.Errorf("HTTPReqCall frames in post-resp: got %d, want 0", d)
			}
			if d := after.RespCalls - before.RespCalls; d != 1 {
				t.Errorf("HTTPRespCall frames: got %d, want 1", d)
			}
			if !res.UpstreamCalled {
				t.Errorf("upstream called: got false, want true")
			}
		})
	}
}

func TestPostRespFailure(t *testing.T) {
	g := testbed.NewGateway(t.TempDir()+"/none.sock", testbed.GatewayOptions{})
	tests := []struct {
		name       string
		degrade    bool
		wantStatus int
	}{
		{"503 with upstream body", false, 503},
		{"degradation keeps upstream status", true, 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			route := &testbed.Route{ID: "prf", AllowDegradation: tt.degrade,
				PostResp: []testbed.PluginConf{conf("fx-resp", `{}`)}}
			res := do(t, g, route, &testbed.Request{Upstream: upstreamOK})
			if res.Status != tt.wantStatus {
				t.Errorf("status: got %d, want %d", res.Status, tt.wantStatus)
			}
			if string(res.Body) != "upstream-body" {
				t.Errorf("body: got %q, want %q", res.Body, "upstream-body")
			}
			if len(res.Headers) != 0 {
				t.Errorf("headers: got %v, want none", res.Headers)
			}
			if res.Err == nil || res.Degraded != tt.degrade {
				t.Errorf("err/degraded: got %v/%v, want non-nil/%v", res.Err, res.Degraded, tt.degrade)
			}
		})
	}
}

func TestConfTokenExpiry(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{ConfExpireTime: 1})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "exp", PreReq: []testbed.PluginConf{conf("fx-rewrite", `{"resp_headers":{"X-Ok":"1"}}`)}}
	res := do(t, g, route, &testbed.Request{})
	if res.Status != 200 || res.Prepares != 1 {
		t.Fatalf("first request: got status %d prepares %d, want 200 1 (err %v)", res.Status, res.Prepares, res.Err)
	}
	// The framework keeps confs for time.Duration(1*1.2) * time.Second = 1 s
	// (the float is truncated before the multiplication); the gateway keeps
	// its token for an hour.
	time.Sleep(1700 * time.Millisecond)
	res = do(t, g, route, &testbed.Request{})
	if res.Status != 200 || res.Headers.Get("X-Ok") != "1" {
		t.Fatalf("after expiry: got status %d X-Ok %q, want 200 \"1\" (err %v)", res.Status, res.Headers.Get("X-Ok"), res.Err)
	}
	if res.TokenRetries != 1 || res.Prepares != 1 {
		t.Errorf("after expiry: got retries %d prepares %d, want 1 1", res.TokenRetries, res.Prepares)
	}
	st := g.Stats()
	if st.Prepares != 2 || st.TokenRetries != 1 || st.Flushes != 1 {
		t.Errorf("stats: got prepares %d retries %d flushes %d, want 2 1 1", st.Prepares, st.TokenRetries, st.Flushes)
	}
}

func TestKillRespawn(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	stale := newGateway(t, r, testbed.GatewayOptions{}) // not told about exits
	r.OnExit(func(testbed.ExitInfo) { g.FlushTokens() })
	route := &testbed.Route{ID: "k", PreReq: []testbed.PluginConf{conf("fx-rewrite", `{"resp_headers":{"X-Ok":"1"}}`)}}
	degr := &testbed.Route{ID: "kd", AllowDegradation: true, PreReq: route.PreReq}
	routeS := &testbed.Route{ID: "ks", PreReq: route.PreReq}
	// route gets token 1 on g; stale gets tokens 2, 3 and 4 (routeS). After
	// the restart the new runner hands out 1 again, so stale's 4 is unknown.
	for _, c := range []struct {
		gw *testbed.Gateway
		rt *testbed.Route
	}{
		{g, route},
		{stale, &testbed.Route{ID: "d1", PreReq: route.PreReq}},
		{stale, &testbed.Route{ID: "d2", PreReq: route.PreReq}},
		{stale, routeS},
	} {
		if res := do(t, c.gw, c.rt, &testbed.Request{}); res.Status != 200 {
			t.Fatalf("before kill: got %d, want 200 (err %v)", res.Status, res.Err)
		}
	}
	pid := r.PID()
	if err := r.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	res := do(t, g, route, &testbed.Request{})
	if res.Status != 503 || res.Err == nil {
		t.Errorf("during respawn gap: got %d err %v, want 503 and an error", res.Status, res.Err)
	}
	res = do(t, g, degr, &testbed.Request{})
	if res.Status != 200 || !res.Degraded || !res.UpstreamCalled || res.Headers.Get("X-Ok") != "" {
		t.Errorf("degraded during gap: got status %d degraded %v upstream %v X-Ok %q, want 200 true true \"\"",
			res.Status, res.Degraded, res.UpstreamCalled, res.Headers.Get("X-Ok"))
	}
	waitReady(t, r)
	if r.PID() == 0 || r.PID() == pid {
		t.Fatalf("pid after respawn: got %d, want a new pid (old %d)", r.PID(), pid)
	}
	if got := r.Restarts(); got != 1 {
		t.Errorf("restarts: got %d, want 1", got)
	}
	ex := r.Exits()
	if len(ex) != 1 || ex[0].PID != pid || ex[0].Expected {
		t.Errorf("exits: got %+v, want one unexpected exit of %d", ex, pid)
	}
	// flushed by the exit hook: prepares again, no retry
	res = do(t, g, route, &testbed.Request{})
	if res.Status != 200 || res.Prepares != 1 || res.TokenRetries != 0 {
		t.Errorf("after respawn (flushed): got status %d prepares %d retries %d, want 200 1 0",
			res.Status, res.Prepares, res.TokenRetries)
	}
	// stale tokens: conf token not found → flush, re-prepare, retry
	res = do(t, stale, routeS, &testbed.Request{})
	if res.Status != 200 || res.TokenRetries != 1 || res.Prepares != 1 {
		t.Errorf("after respawn (stale): got status %d retries %d prepares %d, want 200 1 1 (err %v)",
			res.Status, res.TokenRetries, res.Prepares, res.Err)
	}
}

func TestRespawnDefaultDelay(t *testing.T) {
	t.Parallel()
	r2, err := testbed.StartRunner(testbed.RunnerOptions{Path: fixtureBin})
	if err != nil {
		t.Fatalf("StartRunner: %v", err)
	}
	defer r2.Stop(context.Background())
	waitReady(t, r2)
	if err := r2.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	time.Sleep(time.Second)
	if pid := r2.PID(); pid != 0 {
		t.Errorf("pid 1 s after kill with the 3 s default delay: got %d, want 0", pid)
	}
	waitReady(t, r2)
	if got := r2.Restarts(); got != 1 {
		t.Errorf("restarts: got %d, want 1", got)
	}
}

func TestColdStartConnections(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	const c = 8
	route := &testbed.Route{ID: "cold", PreReq: []testbed.PluginConf{conf("fx-slowparse", `{"ms":500}`)}}
	run := func() []*testbed.Result {
		var wg sync.WaitGroup
		start := make(chan struct{})
		out := make([]*testbed.Result, c)
		for i := 0; i < c; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				res, err := g.Do(context.Background(), route, &testbed.Request{})
				if err != nil {
					t.Errorf("Do: %v", err)
				}
				out[i] = res
			}(i)
		}
		close(start)
		wg.Wait()
		return out
	}
	for _, res := range run() {
		if res != nil && res.Status != 200 {
			t.Errorf("cold status: got %d, want 200 (err %v)", res.Status, res.Err)
		}
	}
	st := g.Stats()
	if st.PeakOpenConns != 2*c || st.Dials != 2*c {
		t.Errorf("cold start connections: got peak %d dials %d, want %d %d", st.PeakOpenConns, st.Dials, 2*c, 2*c)
	}
	// APISIX serializes PrepareConf with the "prepare_conf" lock and checks
	// the shared dict again after taking it: one prepare for the key.
	if st.Prepares != 1 {
		t.Errorf("prepares: got %d, want 1", st.Prepares)
	}
	if st.IdleConns != 2*c {
		t.Errorf("idle conns after cold start: got %d, want %d", st.IdleConns, 2*c)
	}
	run()
	st2 := g.Stats()
	if st2.Dials != st.Dials || st2.Prepares != 1 {
		t.Errorf("warm run: got dials %d prepares %d, want %d 1", st2.Dials, st2.Prepares, st.Dials)
	}
}

func TestUnknownAndBadPluginsSkipped(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "unk", PreReq: []testbed.PluginConf{
		conf("no-such-plugin", `{}`),
		conf("fx-badconf", `{"typo":`),
		conf("fx-rewrite", `{"resp_headers":{"X-Ran":"yes"}}`),
	}}
	res := do(t, g, route, &testbed.Request{})
	if res.Status != 200 || res.Headers.Get("X-Ran") != "yes" || !res.UpstreamCalled {
		t.Errorf("got status %d X-Ran %q upstream %v, want 200 \"yes\" true (err %v)",
			res.Status, res.Headers.Get("X-Ran"), res.UpstreamCalled, res.Err)
	}
	// An empty chain is the no-op baseline.
	res = do(t, g, &testbed.Route{ID: "empty", PreReq: []testbed.PluginConf{}}, &testbed.Request{})
	if res.Status != 200 || res.RoundTrips != 2 {
		t.Errorf("empty chain: got status %d round trips %d, want 200 2", res.Status, res.RoundTrips)
	}
}

func TestRunnerFailures(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{ReadTimeout: 200 * time.Millisecond})
	tests := []struct {
		name       string
		confs      []testbed.PluginConf
		degrade    bool
		wantStatus int
		wantUp     bool
		check      func(error) bool
	}{
		{name: "panic closes the connection", confs: []testbed.PluginConf{conf("fx-panic", `{}`)},
			wantStatus: 503, check: func(err error) bool { return err != nil }},
		{name: "panic with degradation", confs: []testbed.PluginConf{conf("fx-panic", `{}`)}, degrade: true,
			wantStatus: 200, wantUp: true, check: func(err error) bool { return err != nil }},
		{name: "read timeout", confs: []testbed.PluginConf{conf("fx-sleep", `{"ms":1000}`)},
			wantStatus: 503, check: func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			route := &testbed.Route{ID: "f", Version: i, PreReq: tt.confs, AllowDegradation: tt.degrade}
			res := do(t, g, route, &testbed.Request{})
			if res.Status != tt.wantStatus || res.UpstreamCalled != tt.wantUp {
				t.Errorf("got status %d upstream %v, want %d %v", res.Status, res.UpstreamCalled, tt.wantStatus, tt.wantUp)
			}
			if !tt.check(res.Err) {
				t.Errorf("err: got %v", res.Err)
			}
			if res.ErrPhase != testbed.PhasePreReq {
				t.Errorf("err phase: got %q, want %q", res.ErrPhase, testbed.PhasePreReq)
			}
		})
	}
	// every failed connection was closed; the rest are idle in the pool
	st := g.Stats()
	if st.OpenConns != st.IdleConns {
		t.Errorf("open conns: got %d, want %d (idle only)", st.OpenConns, st.IdleConns)
	}

	none := testbed.NewGateway(t.TempDir()+"/none.sock", testbed.GatewayOptions{})
	res := do(t, none, &testbed.Route{ID: "n", PreReq: []testbed.PluginConf{}}, &testbed.Request{})
	if res.Status != 503 || res.Err == nil || !strings.Contains(res.Err.Error(), "failed to connect to the unix socket") {
		t.Errorf("no runner: got %d %v, want 503 and a connect error", res.Status, res.Err)
	}
}

func TestReloadReproducesIssue11347(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	g := newGateway(t, r, testbed.GatewayOptions{})
	route := &testbed.Route{ID: "rl", PreReq: []testbed.PluginConf{}}
	if res := do(t, g, route, &testbed.Request{}); res.Status != 200 {
		t.Fatalf("before reload: got %d, want 200", res.Status)
	}
	pid := r.PID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := r.PID(); got == 0 || got == pid {
		t.Errorf("pid after reload: got %d, want a new pid (old %d)", got, pid)
	}
	if r.Starts() != 2 || r.Restarts() != 0 {
		t.Errorf("starts/restarts: got %d/%d, want 2/0", r.Starts(), r.Restarts())
	}
	ex := r.Exits()
	if len(ex) != 1 || ex[0].PID != pid || !ex[0].Expected {
		t.Errorf("exits: got %+v, want the old process (%d), expected", ex, pid)
	}
	// The reference framework removes the socket file on exit even though
	// the new runner owns it by then: every request fails until a restart.
	if _, err := os.Stat(r.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after reload: got stat err %v, want not exist", err)
	}
	if res := do(t, g, route, &testbed.Request{}); res.Status != 503 {
		t.Errorf("after reload: got %d, want 503", res.Status)
	}
}

func TestRunnerEnvAndOutput(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	})
	r := startFixture(t, testbed.RunnerOptions{ConfExpireTime: 7, Output: w, ExtraEnv: []string{"X_TEST=1"}})
	env := r.Env()
	want := []string{"APISIX_LISTEN_ADDRESS=unix:" + r.SocketPath(), "APISIX_CONF_EXPIRE_TIME=7",
		"PATH=" + os.Getenv("PATH"), "X_TEST=1"}
	if !slices.Equal(env, want) {
		t.Errorf("env: got %q, want %q", env, want)
	}
	// The framework computes time.Duration(7*1.2) * time.Second = 8s.
	var out string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		out = buf.String()
		mu.Unlock()
		if strings.Contains(out, "conf cache ttl is 8s") {
			return
		}
	}
	t.Errorf("output: got %q, want the framework's ttl line (8s)", out)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
