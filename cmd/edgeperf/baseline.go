package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// coreCompare is the no-op chain (an empty ext-plugin-pre-req: PrepareConf
// once, then one HTTPReqCall per request and no plugin) on two runner
// binaries in the same run: this one (-runner) and a baseline (-baseline,
// e.g. built from the commit before a change of the runner core). The two
// are measured in alternating slices at each level, so the ratio compares
// measurements taken seconds apart.
type coreCompare struct {
	baseline string
	cells    []coreCell
	err      error
}

type coreCell struct {
	level     int
	cur, base []*testbed.LoadReport
}

func measureCore(ctx context.Context, o *options, pr *progress) *coreCompare {
	cc := &coreCompare{baseline: o.baseline}
	dir, err := os.MkdirTemp("", "edgeperf-core-")
	if err != nil {
		cc.err = fmt.Errorf("core compare: %w", err)
		return cc
	}
	defer os.RemoveAll(dir)
	// nothing to dial: no backing service is needed by an empty chain
	cfg := filepath.Join(dir, "go-runner.yaml")
	if err := os.WriteFile(cfg, []byte("admin:\n  listen: \"off\"\nredis:\n  addrs: [\"127.0.0.1:1\"]\nclickhouse:\n  addrs: [\"127.0.0.1:1\"]\n"), 0o644); err != nil {
		cc.err = fmt.Errorf("core compare: %w", err)
		return cc
	}
	type side struct {
		r  *testbed.Runner
		gw *testbed.Gateway
	}
	start := func(bin string) (*side, error) {
		r, err := testbed.StartRunner(testbed.RunnerOptions{Path: bin, Args: []string{"run", "-c", cfg}})
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := r.WaitReady(wctx); err != nil {
			_ = r.Stop(ctx)
			return nil, fmt.Errorf("runner %s: %w", bin, err)
		}
		gw := testbed.NewGateway(r.SocketPath(), testbed.GatewayOptions{SendTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second})
		r.OnExit(func(testbed.ExitInfo) { gw.FlushTokens() })
		return &side{r, gw}, nil
	}
	cur, err := start(o.runner)
	if err != nil {
		cc.err = err
		return cc
	}
	defer func() { cur.gw.Close(); _ = cur.r.Stop(context.Background()) }()
	base, err := start(o.baseline)
	if err != nil {
		cc.err = err
		return cc
	}
	defer func() { base.gw.Close(); _ = base.r.Stop(context.Background()) }()
	route := &testbed.Route{ID: "noop-core", PreReq: []testbed.PluginConf{}}
	run := func(s *side, lvl int, d time.Duration) (*testbed.LoadReport, error) {
		return testbed.Load(ctx, testbed.LoadOptions{Gateway: s.gw, Route: route, Concurrency: lvl, Duration: d})
	}
	for _, lvl := range o.levels {
		c := coreCell{level: lvl}
		for _, s := range []*side{cur, base} { // warm both up, unmeasured
			if _, err := run(s, lvl, o.warmup); err != nil {
				cc.err = err
				return cc
			}
		}
		for i := range o.rounds {
			order := []*side{base, cur}
			if i%2 == 1 {
				order = []*side{cur, base}
			}
			for _, s := range order {
				rep, err := run(s, lvl, o.slice)
				if err != nil {
					cc.err = err
					return cc
				}
				if s == cur {
					c.cur = append(c.cur, rep)
				} else {
					c.base = append(c.base, rep)
				}
			}
		}
		cc.cells = append(cc.cells, c)
		ratio := pooledThroughput(c.cur) / pooledThroughput(c.base)
		pr.printf("core      c=%-3d %8.0f req/s  p50 %-8s  baseline %8.0f req/s  p50 %-8s  ratio %.2f", lvl,
			pooledThroughput(c.cur), testbed.FormatDuration(medianDur(c.cur, p50Of)),
			pooledThroughput(c.base), testbed.FormatDuration(medianDur(c.base, p50Of)), ratio)
	}
	return cc
}

func p50Of(r *testbed.LoadReport) time.Duration { return r.Latency.P50 }
func p99Of(r *testbed.LoadReport) time.Duration { return r.Latency.P99 }

func (r *report) writeCore(p func(string, ...any)) {
	cc := r.core
	if cc == nil {
		return
	}
	p("## Runner core against a baseline binary\n\n")
	p("The no-op chain (an empty `ext-plugin-pre-req`: one HTTPReqCall per request, no plugin) on this runner and on `%s`, in alternating slices at each level (`-baseline`). Target: ratio ≥ 1.0 (the runner core at least as fast as before).\n\n", filepath.Base(cc.baseline))
	if cc.err != nil {
		p("Not measured: %v\n\n", cc.err)
		return
	}
	p("| c | this runner req/s | p50 | p99 | baseline req/s | p50 | p99 | ratio | per slice |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range cc.cells {
		var slices string
		for i := range c.cur {
			if i < len(c.base) {
				slices += fmt.Sprintf("%.2f ", c.cur[i].Throughput/c.base[i].Throughput)
			}
		}
		p("| %d | %.0f | %s | %s | %.0f | %s | %s | %.2f | %s|\n", c.level,
			pooledThroughput(c.cur), testbed.FormatDuration(medianDur(c.cur, p50Of)), testbed.FormatDuration(medianDur(c.cur, p99Of)),
			pooledThroughput(c.base), testbed.FormatDuration(medianDur(c.base, p50Of)), testbed.FormatDuration(medianDur(c.base, p99Of)),
			pooledThroughput(c.cur)/pooledThroughput(c.base), slices)
	}
	p("\n")
}
