// Command edgedemo is `make run`: the product for a newcomer with no APISIX
// at hand. It starts a local redis-server and clickhouse-server when they
// are installed (the runner also runs, degraded, without them), writes a dev
// runner config, spawns go-runner exactly as APISIX does, drives a short,
// scripted traffic through the test bed and prints what happened.
//
//	edgedemo -runner bin/go-runner
//
// The demo is made of parts, one per plugin (demo_<plugin>.go), each adding
// its runner-config section and its scripted traffic.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// demoEnv is what every part sees.
type demoEnv struct {
	// Redis and ClickHouse are nil when their server is not installed.
	Redis      *backing.Redis
	ClickHouse *backing.ClickHouse
	// Dir is a temporary directory for the run, removed at the end.
	Dir string
	// Runner and Gateway are set once the runner is up (after every part's
	// config has been collected).
	Runner  *testbed.Runner
	Gateway *testbed.Gateway
	// AdminURL is the runner's admin listener, e.g. http://127.0.0.1:9542.
	AdminURL string
}

// part is one section of the demo.
type part struct {
	name string
	// config returns the part's top-level runner-config section(s) as YAML,
	// or "" for none. It may start what the part needs (for example a JWKS
	// endpoint) and register its cleanup with e.
	config func(e *demoEnv) (string, error)
	// run drives the part's traffic and prints its report to w.
	run func(ctx context.Context, e *demoEnv, w io.Writer) error
}

var parts []part

// register adds a part; parts run in file-name order after the plumbing.
func register(p part) { parts = append(parts, p) }

var cleanups []func()

func (e *demoEnv) cleanup(fn func()) { cleanups = append(cleanups, fn) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, w io.Writer) int {
	fs := flag.NewFlagSet("edgedemo", flag.ContinueOnError)
	bin := fs.String("runner", "bin/go-runner", "the go-runner binary")
	keep := fs.Bool("keep-config", false, "print the generated runner config")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	dir, err := os.MkdirTemp("", "edgedemo")
	if err != nil {
		fmt.Fprintln(w, "edgedemo:", err)
		return 1
	}
	e := &demoEnv{Dir: dir}
	e.cleanup(func() { os.RemoveAll(dir) })

	fmt.Fprintln(w, "== backing services")
	e.Redis = startRedis(w)
	if e.Redis != nil {
		e.cleanup(func() { e.Redis.Close() })
	}
	e.ClickHouse = startClickHouse(w)
	if e.ClickHouse != nil {
		e.cleanup(func() { e.ClickHouse.Close() })
	}

	port, err := backing.FreePort()
	if err != nil {
		fmt.Fprintln(w, "edgedemo:", err)
		return 1
	}
	e.AdminURL = "http://127.0.0.1:" + strconv.Itoa(port)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "log:\n  level: warn\n  summary_interval: 5s\nadmin:\n  listen: 127.0.0.1:%d\n", port)
	for _, p := range parts {
		sec, err := p.config(e)
		if err != nil {
			fmt.Fprintf(w, "edgedemo: %s: %v\n", p.name, err)
			return 1
		}
		cfg.WriteString(sec)
		if sec != "" && !strings.HasSuffix(sec, "\n") {
			cfg.WriteString("\n")
		}
	}
	cfgPath := filepath.Join(dir, "go-runner.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		fmt.Fprintln(w, "edgedemo:", err)
		return 1
	}
	if *keep {
		fmt.Fprintf(w, "\n== runner config\n%s", cfg.String())
	}

	fmt.Fprintf(w, "\n== go-runner run -c <dev config>, spawned as APISIX does\n")
	r, err := testbed.StartRunner(testbed.RunnerOptions{Path: *bin, Args: []string{"run", "-c", cfgPath}})
	if err != nil {
		fmt.Fprintln(w, "edgedemo:", err)
		return 1
	}
	e.cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(sctx)
	})
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = r.WaitReady(wctx)
	cancel()
	if err != nil {
		fmt.Fprintf(w, "edgedemo: runner not ready: %v\n%s", err, r.Output())
		return 1
	}
	e.Runner = r
	e.Gateway = testbed.NewGateway(r.SocketPath(), testbed.GatewayOptions{})
	e.cleanup(func() { e.Gateway.Close() })
	fmt.Fprintf(w, "listening on %s, admin on %s\n", r.ListenAddress(), e.AdminURL)

	failed := 0
	all := append([]part{{name: "plumbing", run: runPlumbing}}, parts...)
	for _, p := range all {
		if ctx.Err() != nil {
			break
		}
		if p.run == nil {
			continue
		}
		fmt.Fprintf(w, "\n== %s\n", p.name)
		if err := p.run(ctx, e, w); err != nil {
			fmt.Fprintf(w, "%s: FAILED: %v\n", p.name, err)
			failed++
		}
	}
	fmt.Fprintf(w, "\n== /status\n")
	printStatus(w, e.AdminURL)
	if failed > 0 {
		fmt.Fprintf(w, "\n%d part(s) failed; runner output:\n%s", failed, r.Output())
		return 1
	}
	return 0
}

func startRedis(w io.Writer) *backing.Redis {
	if err := backing.Require(backing.RedisServer); err != nil {
		fmt.Fprintf(w, "redis-server: not installed (%v); ratelimit will run degraded\n", err)
		return nil
	}
	// hz 100: the setting docs/ratelimit.md recommends for the limiter's
	// Redis (expired keys deleted in slices of 2.5 ms, not 25).
	rd, err := backing.StartRedis(backing.RedisOptions{Config: []string{"hz 100"}})
	if err != nil {
		fmt.Fprintf(w, "redis-server: failed to start: %v; ratelimit will run degraded\n", err)
		return nil
	}
	fmt.Fprintf(w, "redis-server on %s\n", rd.Addr())
	return rd
}

func startClickHouse(w io.Writer) *backing.ClickHouse {
	if err := backing.Require(backing.ClickHouseServer); err != nil {
		fmt.Fprintf(w, "clickhouse-server: not installed (%v); the logger will drop and count rows\n", err)
		return nil
	}
	ch, err := backing.StartClickHouse(backing.ClickHouseOptions{})
	if err != nil {
		fmt.Fprintf(w, "clickhouse-server: failed to start: %v; the logger will drop and count rows\n", err)
		return nil
	}
	fmt.Fprintf(w, "clickhouse-server %s on %s (native)\n", ch.Version(), ch.NativeAddr())
	return ch
}

// runPlumbing shows the runner itself: the no-op chain and an unknown
// plugin name, which the framework skips as APISIX expects.
func runPlumbing(ctx context.Context, e *demoEnv, w io.Writer) error {
	var reps []*testbed.LoadReport
	for _, c := range []int{1, 8} {
		rep, err := testbed.Load(ctx, testbed.LoadOptions{
			Gateway: e.Gateway, Route: &testbed.Route{ID: "noop", PreReq: []testbed.PluginConf{}},
			Concurrency: c, Duration: time.Second,
		})
		if err != nil {
			return err
		}
		reps = append(reps, rep)
	}
	fmt.Fprintf(w, "no-op chain (PrepareConf once, then one HTTPReqCall per request), 1 s per level:\n%s",
		testbed.FormatReports(reps))
	res, err := e.Gateway.Do(ctx, &testbed.Route{ID: "unknown", PreReq: []testbed.PluginConf{{Name: "no-such-plugin", Value: "{}"}}},
		&testbed.Request{Method: "GET", Path: "/"})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "route naming plugin %q: status %d, upstream called %v (skipped, as APISIX expects)\n",
		"no-such-plugin", res.Status, res.UpstreamCalled)
	return nil
}

// adminGet fetches path from the admin listener.
func adminGet(base, path string) ([]byte, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(base + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, errors.New("admin " + path + ": " + resp.Status)
	}
	return b, nil
}

func printStatus(w io.Writer, base string) {
	b, err := adminGet(base, "/status")
	if err != nil {
		fmt.Fprintln(w, "status:", err)
		return
	}
	var v any
	if json.Unmarshal(b, &v) == nil {
		if out, err := json.MarshalIndent(v, "", "  "); err == nil {
			b = out
		}
	}
	fmt.Fprintf(w, "%s\n", b)
}
