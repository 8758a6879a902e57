package main

import (
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/plugins/jwtcache"
)

func init() {
	register(pluginSpec{
		name: jwtcache.Name,
		build: func(cfg *config.Config, deps core.Deps) (core.Module, error) {
			return jwtcache.New(cfg.JWKS, deps)
		},
		// The same checks as ParseConf, including that provider names a
		// provider of this runner config's jwks.providers.
		parse: func(cfg *config.Config, conf []byte) error {
			return jwtcache.ValidateConf(&cfg.JWKS, conf)
		},
	})
}
