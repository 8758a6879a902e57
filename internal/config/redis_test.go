package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
)

func TestRedisSection(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		env     map[string]string
		wantErr []string // substrings, all required; nil means success
		check   func(*ratelimit.Config) string
	}{
		{name: "defaults", doc: "", check: func(r *ratelimit.Config) string {
			if r.Mode != "standalone" || len(r.Addrs) != 1 || r.Addrs[0] != "127.0.0.1:6379" {
				return "got mode " + r.Mode + " addrs " + strings.Join(r.Addrs, ",")
			}
			if r.Timeout.D() != 20*time.Millisecond || r.DialTimeout.D() != 250*time.Millisecond {
				return "got timeouts " + r.Timeout.String() + " " + r.DialTimeout.String()
			}
			if r.PoolSize != 64 || r.MinIdleConns != 4 || !r.PipelineOn() || r.KeyPrefix != "edge:rl:" {
				return "pool, pipelining or prefix defaults not applied"
			}
			if r.PipelineWorkers != 4 || r.PipelineMaxBatch != 64 || r.PipelineQueue != 1024 {
				return fmt.Sprintf("got pipeline workers %d max batch %d queue %d, want 4 64 1024", r.PipelineWorkers, r.PipelineMaxBatch, r.PipelineQueue)
			}
			b := r.Breaker
			if b.ConsecutiveFailures != 5 || b.FailureRatio != 0.5 || b.MinRequests != 20 ||
				b.Window.D() != 2*time.Second || b.OpenTimeout.D() != 500*time.Millisecond || b.MinFailingTime.D() != 100*time.Millisecond {
				return "breaker defaults not applied"
			}
			if r.OverrideCacheTTL.D() != 10*time.Second || r.OverrideCacheSize != 10000 || r.LocalMaxKeys != 100000 {
				return "cache defaults not applied"
			}
			return ""
		}},
		{name: "sentinel with credentials from env", doc: `
redis:
  mode: sentinel
  addrs: ["10.0.0.1:26379", "10.0.0.2:26379"]
  master_name: mymaster
  sentinel_password: ${SPW}
  username: limiter
  password: ${RPW}
  db: 2
  tls: {enabled: true, ca_file: /etc/ca.pem, server_name: redis.internal}
  pipeline: false
  pipeline_workers: 2
  pipeline_max_batch: 16
  pipeline_queue: 100
`, env: map[string]string{"SPW": "s3", "RPW": "r3"}, check: func(r *ratelimit.Config) string {
			if r.SentinelPassword != "s3" || r.Password != "r3" || r.Username != "limiter" || r.DB != 2 {
				return "credentials not read"
			}
			if !r.TLS.Enabled || r.TLS.ServerName != "redis.internal" || r.PipelineOn() {
				return "tls or pipeline not read"
			}
			if r.PipelineWorkers != 2 || r.PipelineMaxBatch != 16 || r.PipelineQueue != 100 {
				return "pipeline settings not read"
			}
			return ""
		}},
		{name: "cluster", doc: "redis:\n  mode: cluster\n  addrs: [a:1, b:2, c:3]\n", check: func(r *ratelimit.Config) string {
			if len(r.Addrs) != 3 {
				return "addrs not read"
			}
			return ""
		}},
		{name: "unknown mode", doc: "redis:\n  mode: ring\n", wantErr: []string{`redis.mode: must be one of standalone, sentinel, cluster, got "ring"`}},
		{name: "sentinel needs master_name", doc: "redis:\n  mode: sentinel\n", wantErr: []string{"redis.master_name: is required in sentinel mode"}},
		{name: "standalone takes one address", doc: "redis:\n  addrs: [a:1, b:2]\n", wantErr: []string{"redis.addrs: must hold exactly one address"}},
		{name: "bad address", doc: "redis:\n  addrs: [nohost]\n", wantErr: []string{`redis.addrs[0]: must be host:port, got "nohost"`}},
		{name: "cluster db", doc: "redis:\n  mode: cluster\n  db: 1\n", wantErr: []string{"redis.db: must be 0 in cluster mode"}},
		{name: "username without password", doc: "redis:\n  username: u\n", wantErr: []string{"redis.password: is required when username is set"}},
		{name: "cert without key", doc: "redis:\n  tls: {enabled: true, cert_file: c.pem}\n", wantErr: []string{"redis.tls.key_file: cert_file and key_file must be given together"}},
		{name: "tls settings while disabled", doc: "redis:\n  tls: {ca_file: ca.pem}\n", wantErr: []string{"redis.tls.enabled: must be true"}},
		{name: "timeout too long", doc: "redis:\n  timeout: 2s\n", wantErr: []string{"redis.timeout: must be between 1ms and 1s"}},
		{name: "timeout not a duration", doc: "redis:\n  timeout: 20\n", wantErr: []string{"duration"}},
		{name: "prefix with a brace", doc: "redis:\n  key_prefix: \"rl:{x}\"\n", wantErr: []string{"redis.key_prefix: must be 1 to 64 characters"}},
		{name: "breaker ratio", doc: "redis:\n  breaker: {failure_ratio: 1.5, min_requests: -1}\n", wantErr: []string{
			"redis.breaker.failure_ratio: must be > 0 and <= 1", "redis.breaker.min_requests: must be >= 1"}},
		{name: "sentinel password outside sentinel mode", doc: "redis:\n  sentinel_password: x\n", wantErr: []string{"redis.sentinel_password: is only used in sentinel mode"}},
		{name: "unknown key named with its path", doc: "redis:\n  breaker:\n    open_timout: 1s\n", wantErr: []string{"redis.breaker.open_timout: unknown key"}},
		{name: "min idle above pool", doc: "redis:\n  pool_size: 2\n  min_idle_conns: 3\n", wantErr: []string{"redis.min_idle_conns: must be -1 (none) or between 1 and pool_size (2), got 3"}},
		{name: "pipeline bounds", doc: "redis:\n  pipeline_workers: 300\n  pipeline_max_batch: -1\n  pipeline_queue: 2000000\n", wantErr: []string{
			"redis.pipeline_workers: must be between 1 and 256, got 300",
			"redis.pipeline_max_batch: must be between 1 and 1024, got -1",
			"redis.pipeline_queue: must be between 1 and 1000000, got 2000000"}},
		{name: "multiplex outside standalone", doc: "redis:\n  mode: cluster\n  multiplex: true\n", wantErr: []string{"redis.multiplex: is not available in cluster mode"}},
		{name: "multiplex without pipeline", doc: "redis:\n  pipeline: false\n  multiplex: true\n", wantErr: []string{"redis.multiplex: needs pipeline on"}},
		{name: "auto_pipeline is gone", doc: "redis:\n  auto_pipeline: true\n", wantErr: []string{"redis.auto_pipeline: unknown key"}},
		{name: "several problems at once", doc: "redis:\n  pool_size: -1\n  local_max_keys: -5\n", wantErr: []string{"redis.pool_size", "redis.local_max_keys"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseCase(t, tt.doc, env(tt.env), tt.wantErr)
			if c == nil {
				return
			}
			if msg := tt.check(&c.Redis); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}
