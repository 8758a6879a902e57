// Command edgechaos runs the resilience matrix: every fault scenario of
// internal/chaos against the built go-runner, real redis-server,
// redis-sentinel and clickhouse-server and a loopback JWKS endpoint, under
// steady load through the APISIX test bed. It prints the matrix and exits 1
// when any verdict fails (2 on a usage or start-up error).
//
//	edgechaos -runner bin/go-runner [-short] [-only 1,5,12] [-markdown] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apisix-edge/edge-runner/internal/chaos"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("edgechaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runner := fs.String("runner", "bin/go-runner", "the go-runner binary to test")
	short := fs.Bool("short", false, "short phases and generous latency factors (the make test version)")
	only := fs.String("only", "", "comma-separated scenario numbers to run (default: all 13)")
	markdown := fs.Bool("markdown", false, "print the matrix as markdown (for docs/resilience.md)")
	verbose := fs.Bool("v", false, "print progress to stderr")
	timeout := fs.Duration("timeout", 20*time.Minute, "stop the whole run after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ids, err := parseOnly(*only)
	if err != nil {
		fmt.Fprintf(stderr, "edgechaos: -only: %v\n", err)
		return 2
	}
	if _, err := os.Stat(*runner); err != nil {
		fmt.Fprintf(stderr, "edgechaos: -runner: %v (build it with make build)\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := chaos.Options{Runner: *runner, Short: *short, Only: ids}
	if *verbose {
		opts.Progress = stderr
		chaos.Verbose = true
	}
	began := time.Now()
	results, err := chaos.Run(ctx, opts)
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintf(stderr, "edgechaos: %v\n", err)
		if len(results) == 0 {
			return 2
		}
	}
	if *markdown {
		chaos.WriteMarkdown(stdout, results)
	} else {
		chaos.WriteTable(stdout, results)
	}
	failed := chaos.Failed(results)
	fmt.Fprintf(stdout, "\n%d scenarios, %d failed, in %s\n", len(results), failed, time.Since(began).Round(time.Second))
	if err != nil {
		fmt.Fprintf(stdout, "run interrupted: %v\n", err)
		return 1
	}
	if failed > 0 {
		return 1
	}
	return 0
}

func parseOnly(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var ids []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 13 {
			return nil, fmt.Errorf("%q is not a scenario number (1 to 13)", f)
		}
		ids = append(ids, n)
	}
	return ids, nil
}
