package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// micro is the output of the Go micro-benchmarks of the plugins' hot paths.
type micro struct {
	command string
	output  string
	elapsed time.Duration
	// metrics: benchmark name (without -GOMAXPROCS) → unit → value.
	metrics map[string]map[string]float64
	err     error
}

func runMicro(ctx context.Context, o *options) *micro {
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", o.benchtime, "-count", "1", "./plugins/..."}
	m := &micro{command: o.goBin + " " + strings.Join(args, " "), metrics: map[string]map[string]float64{}}
	cctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, o.goBin, args...)
	cmd.Dir = o.src
	start := time.Now()
	out, err := cmd.CombinedOutput()
	m.elapsed = time.Since(start)
	m.output = string(out)
	if err != nil {
		m.err = fmt.Errorf("micro-benchmarks: %w", err)
	}
	for _, line := range strings.Split(m.output, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		vals := map[string]float64{}
		// f[1] is the iteration count, then value/unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			vals[f[i+1]] = v
		}
		m.metrics[name] = vals
	}
	return m
}

// get returns a benchmark's value in unit and whether it was found.
func (m *micro) get(name, unit string) (float64, bool) {
	if m == nil {
		return 0, false
	}
	v, ok := m.metrics[name][unit]
	return v, ok
}
