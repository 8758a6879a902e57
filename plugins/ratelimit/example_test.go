package ratelimit_test

import (
	"errors"
	"fmt"
	"os"

	fwlog "github.com/apache/apisix-go-plugin-runner/pkg/log"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Example constructs the plugin from its runner-config section (the
// "redis" section of go-runner.yaml) and registers it in a runner built
// on the reference framework's runner.Run. go-runner does the same through
// its own server; New never dials, Start (called before serving) does.
func Example() {
	var cfg ratelimit.Config
	cfg.Addrs = []string{"127.0.0.1:6379"}
	cfg.ApplyDefaults()
	if err := errors.Join(cfg.Validate()...); err != nil {
		fmt.Println(err)
		return
	}
	reg := prometheus.NewRegistry()
	deps := core.NewDeps(zap.NewNop(), reg)
	m, err := ratelimit.New(cfg, deps)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The framework logs each registration at info, on stdout by default.
	fwlog.NewLogger(zapcore.WarnLevel, zapcore.AddSync(os.Stderr))
	// The guard keeps a plugin whose conf is invalid in the chain and
	// applies its failure policy; the framework alone would drop it.
	guards := core.NewGuardMetrics(reg, deps.Throttle, &core.Inflight{})
	if err := plugin.RegisterPlugin(guards.Guard(m)); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("registered", m.Name(), "failing", m.FailPolicy())
	// Output: registered ratelimit failing closed
}
