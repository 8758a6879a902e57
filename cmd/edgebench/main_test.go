package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

var fixtureBin string

func TestMain(m *testing.M) {
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/testbed/internal/fixturerunner")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, c *config)
	}{
		{name: "baseline", args: []string{"-socket", "/s"}, check: func(t *testing.T, c *config) {
			if c.route.PreReq == nil || len(c.route.PreReq) != 0 || c.route.PostReq != nil || c.route.PostResp != nil {
				t.Errorf("route: got %+v, want an empty pre-req chain only", c.route)
			}
			if !slices.Equal(c.levels, []int{1}) {
				t.Errorf("levels: got %v, want [1]", c.levels)
			}
		}},
		{name: "plugins and levels", args: []string{"-socket", "/s", "-c", "1, 8,64",
			"-pre-req", `a={"x":1}`, "-pre-req", `b=`, "-post-resp", `c={"k":"v=w"}`,
			"-header", "X-A: 1", "-header", "x-a:2", "-var", "k=v=w"},
			check: func(t *testing.T, c *config) {
				if !slices.Equal(c.levels, []int{1, 8, 64}) {
					t.Errorf("levels: got %v, want [1 8 64]", c.levels)
				}
				want := []testbed.PluginConf{{Name: "a", Value: `{"x":1}`}, {Name: "b", Value: ""}}
				if !slices.Equal(c.route.PreReq, want) {
					t.Errorf("pre-req: got %v, want %v", c.route.PreReq, want)
				}
				if c.route.PostReq != nil {
					t.Errorf("post-req: got %v, want nil", c.route.PostReq)
				}
				if len(c.route.PostResp) != 1 || c.route.PostResp[0].Value != `{"k":"v=w"}` {
					t.Errorf("post-resp: got %v", c.route.PostResp)
				}
				if got := c.headers.Values("X-A"); !slices.Equal(got, []string{"1", "2"}) {
					t.Errorf("headers: got %v, want [1 2]", got)
				}
				if c.vars["k"] != "v=w" {
					t.Errorf("var k: got %q, want %q", c.vars["k"], "v=w")
				}
			}},
		{name: "runner args", args: []string{"-spawn", "/bin/r", "-runner-config", "c.yaml"},
			check: func(t *testing.T, c *config) {
				if got := c.runnerArgList(); !slices.Equal(got, []string{"run", "-c", "c.yaml"}) {
					t.Errorf("runner args: got %v, want [run -c c.yaml]", got)
				}
			}},
		{name: "no target", args: nil, wantErr: "exactly one of -socket and -spawn"},
		{name: "both targets", args: []string{"-socket", "/s", "-spawn", "/r"}, wantErr: "exactly one"},
		{name: "bad level", args: []string{"-socket", "/s", "-c", "1,x"}, wantErr: "concurrency"},
		{name: "bad conf", args: []string{"-socket", "/s", "-pre-req", "noequals"}, wantErr: "name=JSON"},
		{name: "bad header", args: []string{"-socket", "/s", "-header", "nocolon"}, wantErr: "k:v"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err: got %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags: %v", err)
			}
			tt.check(t, c)
		})
	}
}

func TestDistinctIP(t *testing.T) {
	c := &config{method: "GET", path: "/", distinctIP: true}
	a, b := c.newRequest(0, 0), c.newRequest(1, 1)
	if a.SrcIP.Equal(b.SrcIP) {
		t.Errorf("source IPs: got %v and %v, want different", a.SrcIP, b.SrcIP)
	}
}

func TestRunSpawn(t *testing.T) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, []string{"-spawn", fixtureBin, "-runner-args", "run", "-c", "1,4", "-n", "200",
		"-pre-req", `fx-rewrite={"resp_headers":{"X-RateLimit-Status":"allowed"}}`,
		"-count-header", "X-RateLimit-Status", "-distinct-ip", "-json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit code: got %d, want 0; stderr: %s", code, errOut.String())
	}
	var got output
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if len(got.Reports) != 2 {
		t.Fatalf("reports: got %d, want 2", len(got.Reports))
	}
	for i, rep := range got.Reports {
		if rep.Concurrency != []int{1, 4}[i] || rep.Requests != 200 || rep.Errors != 0 ||
			rep.Status[200] != 200 || rep.HeaderValues["allowed"] != 200 {
			t.Errorf("report %d: got conc %d requests %d errors %d status %v header %v, want %d 200 0 200=200 allowed=200",
				i, rep.Concurrency, rep.Requests, rep.Errors, rep.Status, rep.HeaderValues, []int{1, 4}[i])
		}
	}
	if got.Gateway.Prepares != 1 || got.Gateway.Calls != 400 {
		t.Errorf("gateway: got prepares %d calls %d, want 1 400", got.Gateway.Prepares, got.Gateway.Calls)
	}

	// table output against a socket, no plugins (the baseline)
	r, err := testbed.StartRunner(testbed.RunnerOptions{Path: fixtureBin})
	if err != nil {
		t.Fatalf("StartRunner: %v", err)
	}
	defer r.Stop(context.Background())
	if err := r.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	out.Reset()
	code = run(ctx, []string{"-socket", "unix:" + r.SocketPath(), "-d", "100ms", "-interval", "50ms"}, &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), "p99") || !strings.Contains(out.String(), "offset") {
		t.Errorf("table run: got code %d output %q, want 0 and a table with a series", code, out.String())
	}
}
