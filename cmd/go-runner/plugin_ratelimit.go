package main

import (
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
)

func init() {
	register(pluginSpec{
		name: ratelimit.PluginName,
		build: func(cfg *config.Config, deps core.Deps) (core.Module, error) {
			return ratelimit.New(cfg.Redis, deps)
		},
		parse: func(_ *config.Config, conf []byte) error {
			_, err := ratelimit.ParseConf(conf)
			return err
		},
	})
}
