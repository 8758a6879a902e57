package main

import (
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/plugins/clickhouselogger"
)

func init() {
	register(pluginSpec{
		name: clickhouselogger.Name,
		// New dials nothing: the flusher connects after Start.
		build: func(cfg *config.Config, deps core.Deps) (core.Module, error) {
			return clickhouselogger.New(cfg.ClickHouse, deps), nil
		},
		parse: func(_ *config.Config, conf []byte) error {
			return clickhouselogger.Validate(conf)
		},
	})
}
