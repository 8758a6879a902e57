// Command edgeperf is `make bench`: one bounded run that measures the
// runner and its three plugins through the test bed, the physical limits of
// the backing services on the same machine, and the Go micro-benchmarks of
// the hot paths, then writes the report (docs/benchmarks.md) and prints it.
//
//	edgeperf -runner bin/go-runner -out docs/benchmarks.md [-d 3s] [-quick]
//
// It starts its own redis-server, clickhouse-server and JWKS endpoint on
// loopback, spawns the runner as APISIX does and drives it with
// testbed.Load at each concurrency level. Every scenario is measured in
// short slices alternating with the no-op chain (same requests, plugins
// removed), so that its ratio compares two measurements taken seconds apart
// on a noisy machine. Targets that are missed are reported, not failed: the
// exit status is non-zero only when something could not be measured.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the command-line flags, after defaults.
type options struct {
	runner    string
	out       string
	src       string
	goBin     string
	levels    []int
	d         time.Duration
	quick     bool
	benchtime string
	profile   string   // directory for CPU profiles of the runner, one per scenario
	baseline  string   // another go-runner binary whose no-op chain is compared with this one's
	redisSock bool     // the runner and the bare Redis clients use Redis' Unix socket
	only      []string // scenario keys to run (all if empty)
	// loadProfile is where to write a CPU profile of this process.
	loadProfile string
	args        []string

	// Derived from d and quick.
	rounds    int           // alternating slices per level
	slice     time.Duration // length of one slice
	warmup    time.Duration // unmeasured load before each level
	rbN, rbNP int           // redis-benchmark requests, unpipelined and pipelined
	insertFor time.Duration // bare ClickHouse insert duration
	rsaFor    time.Duration // bare RSA verification duration (each mode)
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("edgeperf", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{args: args}
	var levels string
	fs.StringVar(&o.runner, "runner", "", "built go-runner binary to spawn (required)")
	fs.StringVar(&o.out, "out", "docs/benchmarks.md", "write the report here too (\"\" or \"-\": stdout only; with -quick only if given)")
	fs.StringVar(&o.src, "src", ".", "repository root: source of the limiter script, the table DDL and the micro-benchmarks")
	fs.StringVar(&o.goBin, "go", "go", "go command for the micro-benchmarks")
	fs.StringVar(&levels, "c", "1,8,64", "concurrency levels, comma separated")
	fs.DurationVar(&o.d, "d", 3*time.Second, "measured time per scenario and level (the same again for its interleaved no-op slices)")
	fs.BoolVar(&o.quick, "quick", false, "dry run: tiny durations and sizes, figures not meaningful")
	fs.StringVar(&o.benchtime, "benchtime", "", "go test -benchtime for the micro-benchmarks (default 1s, 1x with -quick)")
	fs.StringVar(&o.profile, "profile", "", "also take a CPU profile of the runner (admin pprof) during an extra 5 s slice of each scenario at the middle concurrency level, written to DIR/<scenario>.pprof")
	fs.StringVar(&o.baseline, "baseline", "", "another go-runner binary (e.g. built from the previous commit): its no-op chain is measured against this runner's in alternating slices")
	fs.StringVar(&o.loadProfile, "loadprofile", "", "also take a CPU profile of edgeperf itself (the load generator playing APISIX) over the whole run, written to FILE")
	fs.BoolVar(&o.redisSock, "redis-socket", false, "the runner (redis.addrs [\"unix:/path\"]) and the bare Redis measurements (redis-benchmark -s, the bare RESP client) reach Redis over its Unix socket instead of loopback TCP")
	var only string
	fs.StringVar(&only, "only", "", "comma-separated scenario keys to run (default: all; the report is then partial)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if only != "" {
		o.only = strings.Split(only, ",")
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("parse flags: unexpected arguments %q", fs.Args())
	}
	if o.runner == "" {
		return nil, errors.New("parse flags: -runner is required (the built go-runner binary)")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, p := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 || n > 1024 {
			return nil, fmt.Errorf("parse flags: -c %q: want positive integers up to 1024", p)
		}
		o.levels = append(o.levels, n)
	}
	if o.quick {
		if !set["d"] {
			o.d = 250 * time.Millisecond
		}
		if !set["out"] {
			o.out = ""
		}
		if o.benchtime == "" {
			o.benchtime = "1x"
		}
	}
	if o.benchtime == "" {
		o.benchtime = "1s"
	}
	if o.d < 50*time.Millisecond || o.d > 5*time.Minute {
		return nil, fmt.Errorf("parse flags: -d %v: want 50ms to 5m", o.d)
	}
	if o.out == "-" {
		o.out = ""
	}
	// Three alternating slices per level when they are long enough to hold
	// thousands of requests; a single pair otherwise.
	o.rounds = 3
	if o.d < 1500*time.Millisecond {
		o.rounds = 1
	}
	o.slice = o.d / time.Duration(o.rounds)
	o.warmup = min(300*time.Millisecond, o.d/2)
	if o.quick {
		o.rbN, o.rbNP = 2000, 5000
		o.insertFor, o.rsaFor = 100*time.Millisecond, 100*time.Millisecond
	} else {
		o.rbN, o.rbNP = 100000, 400000
		o.insertFor, o.rsaFor = 3*time.Second, 1500*time.Millisecond
	}
	for _, p := range []*string{&o.runner, &o.src, &o.baseline} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, fmt.Errorf("parse flags: %w", err)
		}
		*p = abs
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "edgeperf:", err)
		}
		return 2
	}
	// A hard bound on the whole run, well above the expected ~5 minutes,
	// so that a stuck server can never hang `make bench`.
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	if o.loadProfile != "" {
		f, err := os.Create(o.loadProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(stderr, "edgeperf: load generator profile:", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	rep, err := measure(ctx, o, stderr)
	if rep == nil {
		fmt.Fprintln(stderr, "edgeperf:", err)
		return 1
	}
	text := rep.markdown()
	fmt.Fprint(stdout, text)
	if o.out != "" {
		if werr := os.WriteFile(o.out, []byte(text), 0o644); werr != nil {
			fmt.Fprintln(stderr, "edgeperf: write report:", werr)
			return 1
		}
		fmt.Fprintf(stderr, "edgeperf: report written to %s\n", o.out)
	}
	if err != nil {
		fmt.Fprintln(stderr, "edgeperf:", err)
		return 1
	}
	return 0
}

// progress prints one line of progress to stderr with the elapsed time.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "edgeperf [%5.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// measure runs every part and returns the report; the error joins what
// failed (the report then says so in the section concerned). A nil report
// means nothing could be measured.
func measure(ctx context.Context, o *options, stderr io.Writer) (*report, error) {
	pr := &progress{w: stderr, start: time.Now()}
	rep := &report{opts: o, started: time.Now()}
	rep.machine = describeMachine(ctx, o)
	rep.loadStart = loadAvg()

	if o.baseline != "" {
		pr.printf("runner core: the no-op chain against the baseline binary %s", o.baseline)
		rep.core = measureCore(ctx, o, pr)
	}
	pr.printf("starting redis-server, clickhouse-server, the JWKS endpoint and the runner")
	env, err := startEnv(ctx, o, pr)
	if err != nil {
		return nil, err
	}
	defer env.close()
	rep.machine.redisVersion = env.redisVersion
	rep.machine.clickhouseVersion = env.ch.Version()
	rep.runnerConfig = env.cfgText

	var errs []error
	pr.printf("physical limits")
	rep.limits = measureLimits(ctx, o, env, pr)
	errs = append(errs, rep.limits.errs...)
	if len(o.only) == 0 || slices.Contains(o.only, "ingest") {
		rep.ingest = measureIngest(ctx, o, env, pr) // ingest.go
	}

	pr.printf("load scenarios at concurrency %v, %v per level in %d slice(s), each beside the no-op chain", o.levels, o.d, o.rounds)
	rep.scenarios, err = runScenarios(ctx, o, env, pr)
	if err != nil {
		errs = append(errs, err)
	}
	rep.accounting = env.accounting
	env.close() // free the cores before the micro-benchmarks

	if ctx.Err() == nil {
		pr.printf("micro-benchmarks (go test -bench, -benchtime %s)", o.benchtime)
		rep.micro = runMicro(ctx, o)
		if rep.micro.err != nil {
			errs = append(errs, rep.micro.err)
		}
	}
	rep.finished = time.Now()
	rep.loadEnd = loadAvg()
	pr.printf("done")
	return rep, errors.Join(errs...)
}
