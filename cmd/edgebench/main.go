// Command edgebench drives a plugin runner the way APISIX does and measures
// it: throughput, p50/p90/p99/max latency and outcome counts per concurrency
// level.
//
// Talk to a running runner:
//
//	edgebench -socket /path/apisix-1.sock -pre-req 'my-plugin={"k":1}' -c 1,8,64 -d 5s
//
// or spawn one with APISIX's environment:
//
//	edgebench -spawn ./go-runner -runner-config conf.yaml -n 100000 -c 8
//
// With no -pre-req, -post-req or -post-resp the route has an empty
// ext-plugin-pre-req chain: the no-op baseline (PrepareConf and one
// HTTPReqCall per request, no plugin runs).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type config struct {
	socket, spawn, runnerConfig, runnerArgs string
	confExpire                              int
	levels                                  []int
	duration                                time.Duration
	requests                                int
	warmup                                  int
	route                                   testbed.Route
	method, path, body                      string
	headers                                 http.Header
	vars                                    map[string]string
	distinctIP                              bool
	countHeader                             string
	interval                                time.Duration
	timeout                                 time.Duration
	jsonOut                                 bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("edgebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{headers: http.Header{}, vars: map[string]string{}}
	var conc, preReq, postReq, postResp, hdrs, vars listFlag
	var concStr string
	fs.StringVar(&c.socket, "socket", "", "runner socket path (or unix:PATH)")
	fs.StringVar(&c.spawn, "spawn", "", "spawn this runner binary with APISIX's environment")
	fs.StringVar(&c.runnerConfig, "runner-config", "", "with -spawn: pass `run -c FILE` to the runner")
	fs.StringVar(&c.runnerArgs, "runner-args", "", "with -spawn: runner arguments (space separated; default \"run\")")
	fs.IntVar(&c.confExpire, "conf-expire", 3600, "with -spawn: APISIX_CONF_EXPIRE_TIME")
	fs.StringVar(&concStr, "c", "1", "concurrency levels, comma separated (e.g. 1,8,64)")
	fs.DurationVar(&c.duration, "d", 5*time.Second, "duration per level (ignored when -n is set)")
	fs.IntVar(&c.requests, "n", 0, "requests per level (0: run for -d)")
	fs.IntVar(&c.warmup, "warmup", 0, "unmeasured requests before each level")
	fs.Var(&preReq, "pre-req", "ext-plugin-pre-req conf entry `name=JSON` (repeatable)")
	fs.Var(&postReq, "post-req", "ext-plugin-post-req conf entry `name=JSON` (repeatable)")
	fs.Var(&postResp, "post-resp", "ext-plugin-post-resp conf entry `name=JSON` (repeatable)")
	fs.StringVar(&c.route.ID, "route-id", "1", "route id (part of the conf token key)")
	fs.BoolVar(&c.route.AllowDegradation, "allow-degradation", false, "set allow_degradation on the plugins")
	fs.StringVar(&c.method, "method", "GET", "request method")
	fs.StringVar(&c.path, "path", "/", "request path")
	fs.StringVar(&c.body, "body", "", "request body")
	fs.Var(&hdrs, "header", "request header `k:v` (repeatable)")
	fs.Var(&vars, "var", "nginx variable `k=v` answered to ExtraInfo (repeatable)")
	fs.BoolVar(&c.distinctIP, "distinct-ip", false, "use a different source IP for every request")
	fs.StringVar(&c.countHeader, "count-header", "", "count the values of this response header (e.g. X-RateLimit-Status)")
	fs.DurationVar(&c.interval, "interval", 0, "print a time series with this bucket width (e.g. 250ms)")
	fs.DurationVar(&c.timeout, "timeout", 0, "per-request timeout (0: APISIX's 60 s socket timeouts)")
	fs.BoolVar(&c.jsonOut, "json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("parse flags: unexpected arguments %q", fs.Args())
	}
	if (c.socket == "") == (c.spawn == "") {
		return nil, errors.New("parse flags: give exactly one of -socket and -spawn")
	}
	var err error
	conc = strings.Split(concStr, ",")
	if c.levels, err = parseLevels(conc); err != nil {
		return nil, err
	}
	if c.route.PreReq, err = parseConfs(preReq); err != nil {
		return nil, err
	}
	if c.route.PostReq, err = parseConfs(postReq); err != nil {
		return nil, err
	}
	if c.route.PostResp, err = parseConfs(postResp); err != nil {
		return nil, err
	}
	if c.route.PreReq == nil && c.route.PostReq == nil && c.route.PostResp == nil {
		c.route.PreReq = []testbed.PluginConf{} // the no-op baseline
	}
	for _, h := range hdrs {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("parse flags: header %q: want k:v", h)
		}
		c.headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	for _, kv := range vars {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse flags: var %q: want k=v", kv)
		}
		c.vars[k] = v
	}
	if c.requests < 0 || c.duration <= 0 && c.requests == 0 {
		return nil, errors.New("parse flags: need -n > 0 or -d > 0")
	}
	return c, nil
}

func parseLevels(parts []string) ([]int, error) {
	var out []int
	for _, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("parse flags: concurrency %q: want a positive integer", p)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseConfs turns name=JSON entries into a conf list; the value is passed
// as is, like APISIX does. No entries gives nil (phase not configured).
func parseConfs(entries []string) ([]testbed.PluginConf, error) {
	var out []testbed.PluginConf
	for _, e := range entries {
		name, value, ok := strings.Cut(e, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("parse flags: plugin conf %q: want name=JSON", e)
		}
		out = append(out, testbed.PluginConf{Name: name, Value: value})
	}
	return out, nil
}

func (c *config) runnerArgList() []string {
	if c.runnerArgs != "" {
		return strings.Fields(c.runnerArgs)
	}
	args := []string{"run"}
	if c.runnerConfig != "" {
		args = append(args, "-c", c.runnerConfig)
	}
	return args
}

func (c *config) newRequest(_, i int) *testbed.Request {
	r := &testbed.Request{
		Method:  c.method,
		Path:    c.path,
		Headers: c.headers,
		Vars:    c.vars,
	}
	if c.body != "" {
		r.Body = []byte(c.body)
	}
	if c.distinctIP {
		n := i + 1
		r.SrcIP = net.IPv4(10, byte(n>>16), byte(n>>8), byte(n))
	}
	return r
}

type output struct {
	Reports []*testbed.LoadReport `json:"reports"`
	Gateway testbed.GatewayStats  `json:"gateway"`
	Runner  *runnerInfo           `json:"runner,omitempty"`
}

type runnerInfo struct {
	PID      int `json:"pid"`
	Restarts int `json:"restarts"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "edgebench:", err)
		}
		return 2
	}
	socket := c.socket
	var r *testbed.Runner
	if c.spawn != "" {
		r, err = testbed.StartRunner(testbed.RunnerOptions{
			Path: c.spawn, Args: c.runnerArgList(), ConfExpireTime: c.confExpire,
		})
		if err != nil {
			fmt.Fprintln(stderr, "edgebench:", err)
			return 1
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = r.Stop(sctx)
		}()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = r.WaitReady(wctx)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "edgebench: %v\nrunner output:\n%s", err, r.Output())
			return 1
		}
		socket = r.SocketPath()
	}
	g := testbed.NewGateway(socket, testbed.GatewayOptions{})
	defer g.Close()
	if r != nil {
		r.OnExit(func(testbed.ExitInfo) { g.FlushTokens() })
	}
	out := output{}
	for _, level := range c.levels {
		if c.warmup > 0 {
			if _, err := testbed.Load(ctx, testbed.LoadOptions{Gateway: g, Route: &c.route,
				Concurrency: level, Requests: c.warmup, NewRequest: c.newRequest}); err != nil {
				fmt.Fprintln(stderr, "edgebench:", err)
				return 1
			}
		}
		rep, err := testbed.Load(ctx, testbed.LoadOptions{
			Gateway: g, Route: &c.route, Concurrency: level,
			Duration: durationIf(c.requests == 0, c.duration), Requests: c.requests,
			NewRequest: c.newRequest, CountHeader: c.countHeader, Interval: c.interval,
			RequestTimeout: c.timeout,
		})
		if rep != nil {
			out.Reports = append(out.Reports, rep)
		}
		if err != nil {
			fmt.Fprintln(stderr, "edgebench:", err)
			break
		}
	}
	out.Gateway = g.Stats()
	if r != nil {
		out.Runner = &runnerInfo{PID: r.PID(), Restarts: r.Restarts()}
	}
	if c.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintln(stderr, "edgebench:", err)
			return 1
		}
	} else {
		fmt.Fprint(stdout, testbed.FormatReports(out.Reports))
		if c.interval > 0 {
			for _, rep := range out.Reports {
				fmt.Fprintf(stdout, "\nconcurrency %d:\n%s", rep.Concurrency, rep.SeriesString())
			}
		}
		st := out.Gateway
		fmt.Fprintf(stdout, "gateway: prepares=%d calls=%d resp-calls=%d extra-info=%d dials=%d token-retries=%d failures=%d\n",
			st.Prepares, st.Calls, st.RespCalls, st.ExtraInfo, st.Dials, st.TokenRetries, st.Failures)
		if out.Runner != nil && out.Runner.Restarts > 0 {
			fmt.Fprintf(stdout, "runner restarts: %d\n", out.Runner.Restarts)
		}
	}
	if ctx.Err() != nil {
		return 1
	}
	return 0
}

func durationIf(cond bool, d time.Duration) time.Duration {
	if cond {
		return d
	}
	return 0
}
