// Command compatrunner is a plugin runner built on the reference
// framework's own runner.Run (apisix-go-plugin-runner v0.5.0) with this
// project's three plugins registered, as an operator who already runs their
// own Go runner would add them. e2e/TestCompatFrameworkRunner drives it
// through the test bed.
//
//	compatrunner -c FILE   the runner config (redis, clickhouse, jwks sections)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apache/apisix-go-plugin-runner/pkg/runner"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/plugins/clickhouselogger"
	"github.com/apisix-edge/edge-runner/plugins/jwtcache"
	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	path := flag.String("c", "", "runner config file")
	flag.Parse()
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compatrunner:", err)
		os.Exit(1)
	}
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.WarnLevel))
	reg := prometheus.NewRegistry()
	deps := core.NewDeps(log, reg)
	rl, err := ratelimit.New(cfg.Redis, deps)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compatrunner:", err)
		os.Exit(1)
	}
	jwt, err := jwtcache.New(cfg.JWKS, deps)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compatrunner:", err)
		os.Exit(1)
	}
	chl := clickhouselogger.New(cfg.ClickHouse, deps)
	// the guard keeps an invalid conf in the chain (the framework would
	// drop the plugin) and recovers panics
	guards := core.NewGuardMetrics(reg, deps.Throttle, &core.Inflight{})
	for _, m := range []core.Module{jwt, rl, chl} {
		m.Start(context.Background())
		if err := plugin.RegisterPlugin(guards.Guard(m)); err != nil {
			fmt.Fprintln(os.Stderr, "compatrunner:", err)
			os.Exit(1)
		}
	}
	runner.Run(runner.RunnerConfig{LogLevel: zapcore.WarnLevel, LogOutput: os.Stderr})
}
