// Command go-runner is the plugin runner APISIX spawns from ext-plugin.cmd:
//
//	go-runner run [-c FILE]          serve APISIX on $APISIX_LISTEN_ADDRESS
//	go-runner validate [-c FILE] [ROUTE.json ...]
//	                                 check the runner config and the plugin
//	                                 confs in APISIX route or plugin JSON
//	go-runner version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/internal/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "go-runner", version)
		return 0
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "go-runner: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `usage:
  go-runner run [-c FILE]                      serve APISIX (default config %s)
  go-runner validate [-c FILE] [ROUTE.json...]  check a runner config and the plugin confs in routes
  go-runner version
`, config.DefaultPath)
}

// loadConfig loads path. A missing file at the default path means "all
// defaults"; a missing file named explicitly is an error.
func loadConfig(path string, explicit bool) (*config.Config, error) {
	if !explicit {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return config.Default(), nil
		}
	}
	return config.Load(path)
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", config.DefaultPath, "runner config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "c" })
	cfg, err := loadConfig(*path, explicit)
	if err != nil {
		printProblems(stderr, "go-runner: config", err)
		return 1
	}
	cfg.Runtime.Apply(os.Getenv)
	err = server.Run(serverOptions(cfg))
	if err != nil {
		fmt.Fprintln(stderr, "go-runner:", err)
		return 1
	}
	return 0
}

// serverOptions composes the runner's own config sections and the plugins
// this runner serves into the server's options.
func serverOptions(cfg *config.Config) server.Options {
	return server.Options{
		Version:         version,
		LogLevel:        cfg.Log.ZapLevel(),
		SummaryInterval: cfg.Log.SummaryInterval.D(),
		AdminListen:     cfg.Admin.Listen,
		AdminPprof:      cfg.Admin.Pprof,
		ShutdownTimeout: cfg.ShutdownTimeout.D(),
		DrainTimeout:    cfg.DrainTimeout.D(),
		Limits: server.Limits{
			FrameTimeout:   cfg.RPC.FrameTimeout.D(),
			MaxFrameMemory: cfg.RPC.MaxFrameMemory,
			MaxConnections: cfg.RPC.MaxConnections,
		},
		MaxConfs: cfg.RPC.MaxConfs,
		Build:    buildModules(cfg),
	}
}

// buildModules returns the constructor of every plugin this runner serves.
func buildModules(cfg *config.Config) func(core.Deps) ([]core.Module, error) {
	return func(deps core.Deps) ([]core.Module, error) {
		mods := make([]core.Module, 0, len(plugins))
		for _, p := range plugins {
			m, err := p.build(cfg, deps)
			if err != nil {
				return nil, fmt.Errorf("build plugin %s: %w", p.name, err)
			}
			mods = append(mods, m)
		}
		return mods, nil
	}
}

// printProblems prints one line per problem of err, whose outer layer (the
// operation and the file name) is replaced by prefix.
func printProblems(w io.Writer, prefix string, err error) {
	inner := errors.Unwrap(err)
	if inner == nil {
		inner = err
	}
	for _, p := range core.Problems(inner) {
		fmt.Fprintf(w, "%s: %s\n", prefix, p)
	}
}
