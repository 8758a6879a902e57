package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

type report struct {
	opts               *options
	started, finished  time.Time
	loadStart, loadEnd string
	machine            machine
	runnerConfig       string
	limits             *limits
	scenarios          []*scenarioResult
	accounting         string
	micro              *micro
	ingest             *ingestResult
	core               *coreCompare
}

func (r *report) scenario(key string) *scenarioResult {
	for _, s := range r.scenarios {
		if s.sc.key == key {
			return s
		}
	}
	return nil
}

func (r *report) cell(key string, level int) *cell {
	s := r.scenario(key)
	if s == nil {
		return nil
	}
	for _, c := range s.cells {
		if c.level == level {
			return c
		}
	}
	return nil
}

func (r *report) command() string {
	exe := filepath.Base(os.Args[0])
	if rel, err := filepath.Rel(r.opts.src, os.Args[0]); err == nil && !strings.HasPrefix(rel, "..") {
		exe = rel
	} else if strings.Contains(os.Args[0], "/") {
		exe = os.Args[0]
	}
	parts := []string{exe}
	for _, a := range r.opts.args {
		if rel, err := filepath.Rel(r.opts.src, a); err == nil && filepath.IsAbs(a) && !strings.HasPrefix(rel, "..") {
			a = rel
		}
		if a == "" || strings.ContainsAny(a, " \t'\"") {
			a = "'" + a + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\n")
	p("Written by `make bench` (`cmd/edgeperf`); do not edit by hand, run it again.\n\n")
	if r.opts.quick {
		p("> **Dry run (`-quick`)**: durations and sizes are tiny; the figures below only show that every part runs.\n\n")
	}
	const makeBench = "bin/edgeperf -runner bin/go-runner -baseline bin/go-runner-baseline -out docs/benchmarks.md"
	if cmd := r.command(); cmd == makeBench {
		p("- Command: `make bench`, i.e. `%s`\n", cmd)
	} else {
		p("- Command: `%s` (`make bench` runs `%s`)\n", cmd, makeBench)
	}
	p("- Date: %s (the run took %s)\n", r.started.UTC().Format("2006-01-02 15:04 MST"), r.finished.Sub(r.started).Round(time.Second))
	p("- Load average (1, 5, 15 min) at the start: %s; at the end: %s\n\n", r.loadStart, r.loadEnd)

	m := r.machine
	p("## Machine\n\n| | |\n|---|---|\n")
	cpu := fmt.Sprintf("%s, %d cores", m.cpu, m.cores)
	if m.hypervisor != "" {
		cpu += ", " + m.hypervisor
	}
	p("| CPU | %s |\n| memory | %s |\n| OS | %s, kernel %s |\n", cpu, m.memory, m.os, m.kernel)
	p("| Go | %s (edgeperf built with %s) |\n", m.goVersion, m.goRuntime)
	p("| Redis | %s; %s |\n| ClickHouse | clickhouse-server %s |\n", m.redisVersion, m.redisBenchmark, m.clickhouseVersion)
	p("| runner | %s, source at %s |\n\n", m.runnerVersion, m.commit)
	p("Everything shares these cores: the load generator (the test bed playing APISIX, in edgeperf's process), the runner, redis-server and clickhouse-server. ")
	p("Absolute figures are those of this machine; the ratios are what carries over.\n\n")

	r.writeMethod(p)
	r.writeResults(p)
	r.writeCore(p)
	r.writeLimits(p)
	r.writeIngest(p)
	r.writeMicro(p)
	r.writeReading(p)

	p("## Runner config and routes\n\n```yaml\n%s```\n\n", r.runnerConfig)
	p("| scenario | chain | baseline (no-op) |\n|---|---|---|\n")
	for _, s := range r.scenarios {
		p("| %s | %s | empty %s |\n", s.sc.key, routeText(s.sc), s.sc.phases)
	}
	p("\n")
	return b.String()
}

func routeText(sc *scenario) string {
	var parts []string
	for _, ph := range []struct {
		name  string
		confs []testbed.PluginConf
	}{{"pre-req", sc.route.PreReq}, {"post-resp", sc.route.PostResp}} {
		var cs []string
		for _, c := range ph.confs {
			cs = append(cs, fmt.Sprintf("`%s` `%s`", c.Name, c.Value))
		}
		if len(cs) > 0 {
			parts = append(parts, ph.name+": "+strings.Join(cs, ", "))
		}
	}
	return strings.Join(parts, "; ")
}

func (r *report) writeMethod(p func(string, ...any)) {
	o := r.opts
	p("## How it is measured\n\n")
	p("- The built runner is spawned as APISIX spawns it (`testbed.StartRunner`: its socket, its environment) with the config at the end of this page, ")
	p("against a redis-server, a clickhouse-server and a JWKS endpoint (`testbed/idp`, RS256-2048 key) started for the run on loopback. ")
	if o.redisSock {
		p("Redis is reached over its Unix socket (`-redis-socket`): by the runner and by the bare Redis measurements below. ")
	}
	p("`testbed.Load` drives it through the test bed, which speaks APISIX's ext-plugin protocol (PrepareConf, HTTPReqCall, HTTPRespCall, ExtraInfo) and plays a trivial upstream.\n")
	p("- Concurrency levels %v; closed loop (each worker sends its next request when the previous one is answered).\n", o.levels)
	p("- **Fair ratios on a noisy machine.** Each scenario is compared with its own no-op twin: the *same requests* (headers, token, addresses, variables) ")
	p("through a route whose ext-plugin phases are configured but empty (`ext-plugin-pre-req` and/or `ext-plugin-post-resp` with an empty conf list: PrepareConf and one call per phase, no plugin runs). ")
	p("So the ratio isolates what the plugins cost. At each level the scenario gets an unmeasured warm-up (%s), then %d round(s) of one no-op slice and one scenario slice of %s each, ", o.warmup, o.rounds, o.slice)
	p("alternating which goes first (ABBA), so both are measured within seconds of each other.\n")
	p("- **At c=1 the two take turns of %d requests** (`testbed.LoadPair`): each round is one closed loop of %s whose single worker sends %d no-op requests, then %d scenario requests, and so on (which leads alternates across rounds). ", pairTurn, 2*o.slice, pairTurn, pairTurn)
	p("With one request in flight the two never overlap, so neither slows the other down; and both meet the same moments of the machine. ")
	p("This matters here: on this virtual machine a lone request's latency swings between a fast and a slow state (a halted CPU woken or not) that change every few tens of milliseconds; alternating slices of 100 ms gave per-pair ratios from 0.3 to 3 for the same code, while turns read an A/A pair (two no-op routes) at 0.98–1.02 (p50 ratio 1.00). ")
	p("Turns of one request read closer to 1 than turns of 8 to 128, which agree: each request then runs in the caches the other route left. ")
	p("Each route's time is that of its own requests (each from its start to the next one's), so its req/s is the rate the loop reaches on it alone. ")
	p("Work a plugin leaves behind (a logger's inserts, a delayed sync, garbage collection) also runs beside the no-op requests at c=1; at c=8 and c=64 the slices keep it on the scenario's side.\n")
	p("- req/s is pooled over the slices (requests ÷ time); p50 and p99 are the median of the slices' own percentiles; **ratio** = scenario req/s ÷ no-op req/s of the interleaved slices; *per round* gives each pair's ratio, a measure of the noise.\n")
	p("- Order: healthy scenarios first, the healthy logger (`chl`) right before ClickHouse is killed (`chl-down`, compared with it), then Redis killed (`rl-down`); nothing after a kill needs the killed server.\n")
	p("- The physical limits run before the load, with the runner idle; the micro-benchmarks after it, with the runner and servers stopped (they start their own).\n\n")
}

func (r *report) writeResults(p func(string, ...any)) {
	p("## Results\n\n### Throughput against the no-op chain (ratio, same run)\n\n")
	p("| scenario | baseline |")
	for _, l := range r.opts.levels {
		p(" c=%d |", l)
	}
	p("\n|---|---|")
	for range r.opts.levels {
		p("---|")
	}
	p("\n")
	for _, s := range r.scenarios {
		p("| %s | %s |", s.sc.title, s.sc.phases)
		for _, l := range r.opts.levels {
			if c := r.cell(s.sc.key, l); c != nil {
				p(" %.2f× |", c.ratio())
			} else {
				p(" — |")
			}
		}
		p("\n")
	}
	p("\n")
	for _, l := range r.opts.levels {
		p("### Concurrency %d\n\n", l)
		p("| scenario | req/s | p50 | p99 | no-op req/s | no-op p50 | no-op p99 | ratio | per round | outcomes |\n")
		p("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range r.scenarios {
			c := r.cell(s.sc.key, l)
			if c == nil {
				p("| %s | not measured%s |||||||||\n", s.sc.key, errSuffix(s.err))
				continue
			}
			var rr []string
			for _, x := range c.roundRatios() {
				rr = append(rr, fmt.Sprintf("%.2f", x))
			}
			p("| %s | %.0f | %s | %s | %.0f | %s | %s | **%.2f×** | %s | %s |\n", s.sc.key, c.tput(), testbed.FormatDuration(c.p50()), testbed.FormatDuration(c.p99()),
				c.baseTput(), testbed.FormatDuration(c.baseP50()), testbed.FormatDuration(c.baseP99()), c.ratio(), strings.Join(rr, " "), c.outcomes())
		}
		p("\n")
	}
	r.cpuTable(p)
	p("### What each scenario did\n\n")
	p("Counter changes in the runner's `/metrics` over the whole scenario (all levels, warm-ups included), and the runner's resident memory after each level.\n\n")
	p("| scenario | setup | counters | runner RSS |\n|---|---|---|---|\n")
	for _, s := range r.scenarios {
		setup := s.sc.note
		if s.before != "" {
			setup += "; " + s.before
		}
		counters := s.deltas
		if s.gauges != "" {
			counters += "; at the end: " + s.gauges
		}
		g := s.gw
		counters += fmt.Sprintf("; test bed: HTTPReqCall %d, HTTPRespCall %d, ExtraInfo %d, connections dialed %d", g.Calls, g.RespCalls, g.ExtraInfo, g.Dials)
		if s.scenReqs > 0 {
			counters += fmt.Sprintf(" (%.2f per request through the plugins)", float64(g.ExtraInfo)/float64(s.scenReqs))
		}
		if g.Failures > 0 || g.TokenRetries > 0 {
			counters += fmt.Sprintf(", runner failures %d, token retries %d", g.Failures, g.TokenRetries)
		}
		var rss []string
		for _, c := range s.cells {
			rss = append(rss, fmt.Sprintf("%.0f MB", float64(c.rss)/(1<<20)))
		}
		p("| %s | %s | %s | %s |\n", s.sc.key, mdCell(setup), mdCell(counters), strings.Join(rss, ", "))
	}
	p("\n")
	if r.accounting != "" {
		p("Logger accounting, %s.\n\n", r.accounting)
	}
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + mdCell(err.Error())
}

func mdCell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	return strings.ReplaceAll(s, "\n", " ")
}

func (r *report) writeLimits(p func(string, ...any)) {
	l := r.limits
	p("## Physical limits (same machine, same run)\n\n")
	if l == nil {
		p("Not measured.\n\n")
		return
	}
	p("**Redis: the limiter's own script.** `redis-benchmark` runs EVALSHA of the sliding-log script read from `%s` at run time (SHA1 `%s`; ", l.scriptSource, l.scriptSHA)
	p("loaded by the runner too: %s), on keys of the limiter's layout with random addresses and members, always under the limit, Redis' clock:\n\n", orUnknown(l.scriptLoaded))
	p("`%s`\n\n", l.redisCommand)
	if l.redisErr != nil {
		p("ERROR: %s\n\n", mdCell(l.redisErr.Error()))
	}
	if len(l.redis) > 0 {
		p("| pipeline | clients | requests | decisions/s | p50 | p99 |\n|---|---|---|---|---|---|\n")
		for _, rb := range l.redis {
			p("| %d | %d | %d | %.0f | %s ms | %s ms |\n", rb.pipeline, rb.clients, rb.requests, rb.rps, rb.p50, rb.p99)
		}
		p("\nRedis' own CPU per call (`INFO commandstats`, unpipelined run): %s µs.\n\n", l.evalUsec)
	}
	if len(l.bare) > 0 {
		p("**Redis: the limiter's commands, bare.** What a lone rule's decision sends when it is decided by plain commands (no script; docs/ratelimit.md), written by a minimal RESP client over plain TCP with nothing around it, keys of the limiter's layout with random addresses, always under the limit: `sliding_log` MULTI, ZREMRANGEBYSCORE, ZADD, ZCARD, PEXPIRE, ZRANGE, EXEC; `sliding_window` INCRBY, PEXPIRE NX, GET; `fixed_window` INCRBY, PEXPIRE NX. One connection (c=1: the round trip a lone decision cannot beat; measured here on an idle machine, where waking a process costs more than under load, so the c=1 target below uses bare slices run between the scenario's own c=1 rounds instead), then 64 (what Redis alone can decide on these cores), %s each; Redis' CPU per decision is all commands' `usec` in `INFO commandstats` over the c=64 decisions.\n\n", r.opts.rsaFor)
		p("| algorithm | c=1 p50 | c=1 p99 | c=64 decisions/s | Redis CPU per decision |\n|---|---|---|---|---|\n")
		for _, b := range l.bare {
			if b.err != nil {
				p("| %s | ERROR: %s | | | |\n", b.alg, mdCell(b.err.Error()))
				continue
			}
			p("| %s | %s | %s | %.0f | %.2f µs |\n", b.alg, testbed.FormatDuration(b.p50), testbed.FormatDuration(b.p99), b.tput64, b.redisUsec)
		}
		p("\n")
	}
	p("**ClickHouse: bare batch insert.** Batches of %d rows into a table created from `conf/clickhouse-schema.sql` (the logger's columns), native protocol, lz4, one connection, column-wise appends: ", bareBatch)
	if l.insertErr != nil {
		p("ERROR: %s\n\n", mdCell(l.insertErr.Error()))
	} else if v := l.insertRowsPerSec(); v > 0 {
		p("**%.0f rows/s** (%d rows in %s).\n\n", v, l.insertRows, l.insertTime.Round(time.Millisecond))
	} else {
		p("not measured.\n\n")
	}
	p("**RSA-2048 PKCS#1 v1.5 verification in-process** (`rsa.VerifyPKCS1v15`, SHA-256 digest precomputed): ")
	if l.rsaSingle > 0 {
		p("**%.0f/s on one goroutine** (%.1f µs each), %.0f/s on %d goroutines.\n\n", l.rsaSingle, l.rsaNsOp/1e3, l.rsaAll, r.machine.cores)
	} else {
		p("not measured.\n\n")
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (r *report) writeMicro(p func(string, ...any)) {
	p("## Go micro-benchmarks of the hot paths\n\n")
	mi := r.micro
	if mi == nil {
		p("Not run.\n\n")
		return
	}
	p("`%s` (%s):\n\n", mi.command, mi.elapsed.Round(time.Second))
	if mi.err != nil {
		p("ERROR: %s\n\n", mdCell(mi.err.Error()))
	}
	var keep []string
	for _, line := range strings.Split(strings.TrimRight(mi.output, "\n"), "\n") {
		// goos/goarch/cpu repeat per package: the machine section has them
		if strings.HasPrefix(line, "goos:") || strings.HasPrefix(line, "goarch:") || strings.HasPrefix(line, "cpu:") {
			continue
		}
		keep = append(keep, line)
	}
	p("```\n%s\n```\n\n", strings.Join(keep, "\n"))
}

// verdict is one line of the reading against the issues' targets.
type verdict struct{ issue, target, measured, verdict string }

func (r *report) writeReading(p func(string, ...any)) {
	p("## Reading against the targets\n\n")
	lo, hi, where := r.noise()
	if where != "" {
		p("Noise: within one cell the per-round ratios spread from %.2f to %.2f at worst (%s), so a verdict near its threshold may flip from run to run.\n\n", lo, hi, where)
	}
	p("| issue | target | measured here | verdict |\n|---|---|---|---|\n")
	for _, v := range r.verdicts() {
		p("| %s | %s | %s | %s |\n", v.issue, mdCell(v.target), mdCell(v.measured), v.verdict)
	}
	p("\n")
}

// perLevel checks ok(cell) at every level and describes the values.
func (r *report) perLevel(key string, value func(c *cell) (string, bool)) (string, string) {
	var parts, met, missed []string
	for _, l := range r.opts.levels {
		c := r.cell(key, l)
		if c == nil {
			parts = append(parts, fmt.Sprintf("c=%d not measured", l))
			missed = append(missed, fmt.Sprintf("c=%d", l))
			continue
		}
		s, ok := value(c)
		parts = append(parts, fmt.Sprintf("c=%d %s", l, s))
		if ok {
			met = append(met, fmt.Sprintf("c=%d", l))
		} else {
			missed = append(missed, fmt.Sprintf("c=%d", l))
		}
	}
	switch {
	case len(missed) == 0:
		return strings.Join(parts, "; "), "**met**"
	case len(met) == 0:
		return strings.Join(parts, "; "), "**not met**"
	default:
		return strings.Join(parts, "; "), fmt.Sprintf("**met at %s; not at %s**", strings.Join(met, ", "), strings.Join(missed, ", "))
	}
}

// measured tells whether scenario key has a cell at any level.
func (r *report) measured(key string) bool {
	for _, l := range r.opts.levels {
		if r.cell(key, l) != nil {
			return true
		}
	}
	return false
}

func ratioAtLeast(min float64) func(c *cell) (string, bool) {
	return func(c *cell) (string, bool) { return fmt.Sprintf("%.2f×", c.ratio()), c.ratio() >= min }
}

func (r *report) verdicts() []verdict {
	var out []verdict
	add := func(issue, target, measured, v string) { out = append(out, verdict{issue, target, measured, v}) }

	// Issue 3: ratelimit.
	if c := r.cell("rl", 64); c != nil {
		v := "**not met**"
		if c.ratio() >= 0.6 {
			v = "**met**"
		}
		add("#3 ratelimit", "healthy local Redis, 64 connections: ≥ 0.6× no-op", fmt.Sprintf("%.2f× (%.0f vs %.0f req/s; %s)", c.ratio(), c.tput(), c.baseTput(), c.outcomes()), v)
	} else {
		add("#3 ratelimit", "healthy local Redis, 64 connections: ≥ 0.6× no-op", "c=64 not measured", "—")
	}
	m, v := r.perLevel("rl-over", ratioAtLeast(0.9))
	add("#3 ratelimit", "key over its limit, answered from the local cache: ≥ 0.9× no-op", m, v)
	var pipe []string
	if r.micro != nil {
		names := make([]string, 0)
		for n := range r.micro.metrics {
			if strings.HasPrefix(n, "BenchmarkRequestFilter/") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			ns, _ := r.micro.get(n, "ns/op")
			s := fmt.Sprintf("%s %.0f ns/op", strings.TrimPrefix(n, "BenchmarkRequestFilter/"), ns)
			if d, ok := r.micro.get(n, "decisions/roundtrip"); ok {
				s += fmt.Sprintf(" (%.2f decisions/round trip)", d)
			}
			pipe = append(pipe, s)
		}
	}
	if len(pipe) > 0 {
		add("#3 ratelimit", "concurrent decisions share Redis round trips; measure before and after", "micro-benchmark, parallel decisions against the real redis-server: "+strings.Join(pipe, ", ")+
			fmt.Sprintf("; Redis alone: %s", r.redisPipeSummary()), "measured (figures)")
	}
	m, v = r.perLevel("rl-down", func(c *cell) (string, bool) {
		lim := time.Duration(float64(c.baseP99()) * 1.2)
		return fmt.Sprintf("p99 %s vs 1.2× no-op p99 %s", testbed.FormatDuration(c.p99()), testbed.FormatDuration(lim)), c.p99() <= lim
	})
	add("#3 ratelimit", "Redis killed: p99 back within 1.2× no-op (within 1 s)", m+
		". Steady state with the breaker open, after a warm-up; the first second after the kill is in `make chaos` (docs/resilience.md)", v)
	add("#3 ratelimit", "Redis answering in 100 ms: p99 < 50 ms", "not part of `make bench`: `make chaos` scenario 3 (docs/resilience.md)", "—")

	// Issue 14: ratelimit v2.
	for _, sc := range []struct{ key, alg string }{{"rl", "sliding_log"}, {"rl-sw", "sliding_window"}, {"rl-fw", "fixed_window"}} {
		c := r.cell(sc.key, 1)
		target := "c=1: p50 added over the no-op chain ≤ 2× the bare round trip of the same commands (" + sc.alg + ", `" + sc.key + "`)"
		if c == nil || c.bareP50() <= 0 {
			add("#14 ratelimit v2", target, "not measured (c=1 or the bare slices missing)", "—")
			continue
		}
		bare := c.bareP50()
		added := c.p50() - c.baseP50()
		x := float64(added) / float64(bare)
		v := "**not met**"
		if x <= 2 {
			v = "**met**"
		}
		var per []string
		for _, b := range c.bareP50s {
			per = append(per, testbed.FormatDuration(b))
		}
		add("#14 ratelimit v2", target, fmt.Sprintf("added %s (p50 %s, no-op %s) against bare %s (median of the slices between the c=1 rounds: %s): %.2f×", testbed.FormatDuration(added),
			testbed.FormatDuration(c.p50()), testbed.FormatDuration(c.baseP50()), testbed.FormatDuration(bare), strings.Join(per, ", "), x), v)
	}
	for _, key := range []string{"rl", "rl-sw", "rl-fw", "rl-3rules"} {
		if c := r.cell(key, 64); c != nil {
			v := "**not met**"
			if c.ratio() >= 0.6 {
				v = "**met**"
			}
			m := fmt.Sprintf("%.2f× (%.0f vs %.0f req/s)", c.ratio(), c.tput(), c.baseTput())
			if bare := c.bareTput(); bare > 0 {
				// The no-op chain and the bare commands each fill these
				// cores on their own; a limiter that cost exactly its
				// commands would run both per request on the same cores.
				share := bare / (c.baseTput() + bare)
				m += fmt.Sprintf("; its commands bare on 64 connections, in slices between the rounds: %.0f decisions/s, so a limiter costing exactly its commands (client and Redis) on these shared cores would reach no-op·bare/(no-op+bare) = %.2f×; this one reaches %.0f%% of that",
					bare, share, 100*c.ratio()/share)
			}
			add("#14 ratelimit v2", "c=64 throughput ≥ 0.6× the no-op chain (`"+key+"`)", m, v)
		}
	}
	for _, alg := range []string{"sliding_window", "fixed_window"} {
		var parts []string
		ok := true
		if us, found := r.micro.get("BenchmarkRequestFilter/"+alg, "redis_us/decision"); found {
			parts = append(parts, fmt.Sprintf("through the plugin (BenchmarkRequestFilter/%s) %.2f µs", alg, us))
			ok = us <= 4
		}
		if b := r.limits.bareOf(alg); b != nil {
			parts = append(parts, fmt.Sprintf("its commands bare %.2f µs", b.redisUsec))
		}
		if len(parts) == 0 {
			add("#14 ratelimit v2", alg+": Redis CPU per decision ≤ 4 µs", "not measured", "—")
			continue
		}
		v := "**not met**"
		if ok {
			v = "**met**"
		}
		add("#14 ratelimit v2", alg+": Redis CPU per decision ≤ 4 µs", strings.Join(parts, "; "), v)
	}
	if r.measured("rl-sync-hot") {
		m, v = r.perLevel("rl-sync-hot", ratioAtLeast(0.9))
		add("#14 ratelimit v2", "delayed sync on a hot key ≥ 0.9× no-op", m, v)
	}

	// Issue 4: clickhouselogger.
	if ns, ok := r.micro.get("BenchmarkEnqueue", "ns/op"); ok {
		v := "**not met**"
		if ns < 1000 {
			v = "**met**"
		}
		allocs, _ := r.micro.get("BenchmarkEnqueue", "allocs/op")
		extra := ""
		if rf, ok := r.micro.get("BenchmarkResponseFilter", "ns/op"); ok {
			extra = fmt.Sprintf("; the whole filter without its round trips (BenchmarkResponseFilter) %.0f ns/op", rf)
		}
		add("#4 clickhouselogger", "enqueue well under 1 µs (ReportAllocs)", fmt.Sprintf("BenchmarkEnqueue %.0f ns/op, %.0f allocs/op%s", ns, allocs, extra), v)
	} else {
		add("#4 clickhouselogger", "enqueue well under 1 µs (ReportAllocs)", "BenchmarkEnqueue not found in the micro-benchmark output", "—")
	}
	m, v = r.perLevel("chl", ratioAtLeast(0.8))
	add("#4 clickhouselogger", "post-resp throughput with the logger ≥ 0.8× a no-op post-resp chain", "conf `{}`: "+m, v)
	m, v = r.perLevel("chl-rid", ratioAtLeast(0.8))
	add("#4 clickhouselogger", "(same, conf with route_id: one ExtraInfo fewer)", m, v)
	var ins []string
	insOK := false
	if rows, ok := r.micro.get("BenchmarkInsert", "rows/s"); ok {
		ins = append(ins, fmt.Sprintf("the logger's insert path (BenchmarkInsert) %.0f rows/s", rows))
		insOK = rows >= 100000
	}
	if bare := r.limits.insertRowsPerSec(); bare > 0 {
		ins = append(ins, fmt.Sprintf("bare batch insert %.0f rows/s", bare))
		if rows, ok := r.micro.get("BenchmarkInsert", "rows/s"); ok && bare < rows {
			ins = append(ins, "the bare figure is below the logger's own in this run, so it is no ceiling here: "+
				"they ran minutes apart on a shared machine, against different servers (this run's, started seconds before; the benchmark's own)")
		}
	}
	if len(ins) > 0 {
		v := "**not met**"
		if insOK {
			v = "**met**"
		}
		add("#4 clickhouselogger", "insert rate into real ClickHouse ≥ 100k rows/s", strings.Join(ins, "; "), v)
	}
	if in := r.ingest; in != nil && in.total > 0 && in.err == nil {
		got := in.rowsPerSec()
		m := fmt.Sprintf("%.0f rows/s end to end", got)
		if bare := r.limits.insertRowsPerSec(); bare > 0 {
			m += fmt.Sprintf("; bare insert %.0f rows/s", bare)
		}
		if same := in.bareRowsPerSec(); same > 0 {
			m += fmt.Sprintf("; bare insert of the ingest's own rows %.0f rows/s (%.2f× of it end to end)", same, got/same)
			if same < 200000 {
				m += ": below the target itself, which no path through ClickHouse can then reach in this run"
			}
		}
		v := "**not met**"
		if got >= 200000 {
			v = "**met**"
		}
		add("#13 log-phase ingest", "JSON batches of 1,000 default entries into ClickHouse ≥ 200k rows/s", m, v)
	}
	m, v = r.perLevel("chl-down", func(c *cell) (string, bool) {
		h := r.cell("chl", c.level)
		if h == nil {
			return "no healthy run", false
		}
		lim := time.Duration(float64(h.p99()) * 1.1)
		norm := ""
		if h.baseP99() > 0 && c.baseP99() > 0 {
			norm = fmt.Sprintf(" (against each run's interleaved no-op p99: healthy %.2f×, down %.2f×)",
				float64(h.p99())/float64(h.baseP99()), float64(c.p99())/float64(c.baseP99()))
		}
		return fmt.Sprintf("p99 %s vs 1.1× healthy %s%s", testbed.FormatDuration(c.p99()), testbed.FormatDuration(lim), norm), c.p99() <= lim
	})
	mem := ""
	if s := r.scenario("chl-down"); s != nil {
		var rss []string
		for _, c := range s.cells {
			rss = append(rss, fmt.Sprintf("%.0f MB", float64(c.rss)/(1<<20)))
		}
		mem = fmt.Sprintf(". Runner RSS after each level: %s; %s (cap %d)", strings.Join(rss, ", "), s.gauges, maxPending)
	}
	add("#4 clickhouselogger", "ClickHouse down: p99 within 1.1× the healthy run, memory flat at its cap", m+mem+
		". The healthy run is the `chl` row, measured just before ClickHouse was killed (seconds to a minute earlier, not interleaved: the verdict compares the raw p99s)", v)

	// Issue 5: jwtcache.
	m, v = r.perLevel("jwt-hit", ratioAtLeast(0.9))
	add("#5 jwtcache", "same valid token (cache hit): ≥ 0.9× no-op", m, v)
	m, _ = r.perLevel("jwt-miss", func(c *cell) (string, bool) { return fmt.Sprintf("%.2f× (%.0f req/s)", c.ratio(), c.tput()), true })
	cost := ""
	miss, ok1 := r.micro.get("BenchmarkVerifyRS256Miss", "ns/op")
	bare, ok2 := r.micro.get("BenchmarkRSAVerifyPKCS1v15", "ns/op")
	if ok1 && ok2 && bare > 0 {
		cost = fmt.Sprintf(". Cost per verification: BenchmarkVerifyRS256Miss %.1f µs vs bare BenchmarkRSAVerifyPKCS1v15 %.1f µs = %.2f×", miss/1e3, bare/1e3, miss/bare)
	}
	if l := r.limits; l != nil && l.rsaAll > 0 {
		if c := r.cell("jwt-miss", r.opts.levels[len(r.opts.levels)-1]); c != nil {
			cost += fmt.Sprintf("; through the runner at c=%d: %.0f verifications/s = %.0f%% of the bare %.0f/s on all cores (which the runner shares with the load generator)",
				c.level, c.tput(), 100*c.tput()/l.rsaAll, l.rsaAll)
		}
	}
	add("#5 jwtcache", "distinct RS256-2048 token per request: report against no-op and against bare rsa.VerifyPKCS1v15", m+cost, "reported")
	return out
}

func (r *report) redisPipeSummary() string {
	if r.limits == nil || len(r.limits.redis) == 0 {
		return "not measured"
	}
	var parts []string
	for _, rb := range r.limits.redis {
		parts = append(parts, fmt.Sprintf("-P %d %.0f/s", rb.pipeline, rb.rps))
	}
	return strings.Join(parts, ", ")
}

// noise finds the cell whose per-round ratios spread the most (max/min).
func (r *report) noise() (lo, hi float64, where string) {
	worst := 0.0
	for _, s := range r.scenarios {
		for _, c := range s.cells {
			rr := c.roundRatios()
			if len(rr) < 2 {
				continue
			}
			mn, mx := rr[0], rr[0]
			for _, x := range rr {
				mn, mx = min(mn, x), max(mx, x)
			}
			if mn > 0 && mx/mn > worst {
				worst, lo, hi, where = mx/mn, mn, mx, fmt.Sprintf("%s at c=%d", s.sc.key, c.level)
			}
		}
	}
	return lo, hi, where
}

// cpuTable writes where the CPU went at the highest level: each process'
// CPU time per request over the measured slices, no-op → scenario. On
// shared cores the throughput ratio follows the total: whatever a scenario
// adds, in any process, the others lose.
func (r *report) cpuTable(p func(string, ...any)) {
	l := slices.Max(r.opts.levels)
	p("### Where the CPU goes (c=%d)\n\n", l)
	if l == 1 {
		p("Not told apart at c=1: the no-op twin and the scenario share each round (turns), so the processes' CPU time is theirs together. Measure a level above 1 for this table.\n\n")
		return
	}
	p("CPU time (user + system, from `/proc`, clock ticks of 10 ms) of each process over the measured slices, per request: the no-op twin → the scenario. Every process shares the same cores, so what a scenario adds in any of them is throughput lost; *expected ratio* is the no-op total over the scenario total, next to the measured one. A process killed by the scenario shows —.\n\n")
	p("| scenario | load generator µs | runner µs | redis-server µs | clickhouse-server µs | total µs | expected ratio | measured ratio |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.scenarios {
		c := r.cell(s.sc.key, l)
		if c == nil {
			continue
		}
		nb, ns := reqs(c.base), reqs(c.scen)
		if nb == 0 || ns == 0 {
			continue
		}
		var cols []string
		var tb, ts float64
		for i := range numProcs {
			if !c.baseCPU.ok[i] || !c.scenCPU.ok[i] {
				cols = append(cols, "—")
				continue
			}
			b := float64(c.baseCPU.d[i]) / float64(time.Microsecond) / float64(nb)
			x := float64(c.scenCPU.d[i]) / float64(time.Microsecond) / float64(ns)
			tb, ts = tb+b, ts+x
			cols = append(cols, fmt.Sprintf("%.1f → %.1f", b, x))
		}
		p("| %s | %s | %.1f → %.1f | %.2f× | %.2f× |\n", s.sc.key, strings.Join(cols, " | "), tb, ts, tb/ts, c.ratio())
	}
	p("\n")
}

func reqs(reps []*testbed.LoadReport) int64 {
	var n int64
	for _, r := range reps {
		n += r.Requests
	}
	return n
}
