package main

import (
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
)

// pluginSpec is one plugin this runner serves. Each plugin registers itself
// from its own file (plugin_<name>.go) in an init function.
type pluginSpec struct {
	name string
	// build constructs the module from the runner config. It must not dial
	// or block: the runner listens before any backing service answers.
	build func(cfg *config.Config, deps core.Deps) (core.Module, error)
	// parse checks one conf value exactly as the plugin's ParseConf does,
	// against the runner config (for example a JWKS provider name).
	parse func(cfg *config.Config, conf []byte) error
}

var plugins []pluginSpec

func register(s pluginSpec) { plugins = append(plugins, s) }
