package core

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric the runner exports.
const Namespace = "apisix_edge"

// NewRegistry returns a registry with the Go and process collectors, the
// latter namespaced so that apisix_edge_process_start_time_seconds reveals
// runner restarts.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: Namespace}),
	)
	return reg
}
