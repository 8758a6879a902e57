package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/plugins/clickhouselogger"
)

func TestClickHouseSection(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		env     map[string]string
		wantErr []string // substrings, all required; nil means success
		check   func(*clickhouselogger.Config) string
	}{
		{name: "defaults", doc: "", check: func(c *clickhouselogger.Config) string {
			if len(c.Addrs) != 1 || c.Addrs[0] != "127.0.0.1:9000" || c.Database != "default" || c.Table != "edge_access_log" || c.Username != "default" {
				return "connection defaults not applied: " + strings.Join(c.Addrs, ",") + " " + c.Database + "." + c.Table
			}
			if c.DialTimeout.D() != time.Second || c.ReadTimeout.D() != 10*time.Second || c.Compression != "lz4" {
				return "timeouts or compression defaults not applied"
			}
			if c.BatchSize != 50000 || c.FlushInterval.D() != time.Second || c.MaxPending != 150000 || c.CreateTable {
				return "batching defaults not applied"
			}
			r := c.Retries
			if r.MaxAttempts != 3 || r.Backoff.D() != 200*time.Millisecond || r.MaxBackoff.D() != 5*time.Second {
				return "retries defaults not applied"
			}
			if c.Spool.Enabled || c.Spool.Dir != "/usr/local/apisix/logs/edge-spool" || c.Spool.MaxBytes != 256<<20 {
				return "spool defaults not applied (it must be off by default)"
			}
			if c.TenantHeader != "X-Tenant-ID" || c.TenantVar() != "http_x_tenant_id" || c.MaxValueBytes != 1024 {
				return "tenant or value bound defaults not applied"
			}
			if c.CompositeVar != "edge_log_fields" || !c.CompositeEnabled() || c.ShutdownFlush.D() != 2*time.Second {
				return "composite or shutdown defaults not applied"
			}
			return ""
		}},
		{name: "everything set, password from env", doc: `
clickhouse:
  addrs: ["ch1:9440", "ch2:9440"]
  database: logs
  table: access
  username: edge
  password: ${CHPW}
  tls: {enabled: true, ca_file: /etc/ca.pem, server_name: ch.internal}
  dial_timeout: 500ms
  read_timeout: 3s
  compression: zstd
  batch_size: 5000
  flush_interval: 2s
  max_pending: 20000
  retries: {max_attempts: 5, backoff: 100ms, max_backoff: 2s}
  create_table: true
  spool: {enabled: true, dir: /var/spool/edge, max_bytes: 1073741824}
  tenant_header: X-Org
  max_value_bytes: 256
  composite_var: "off"
  shutdown_flush: 1s
`, env: map[string]string{"CHPW": "s3cret"}, check: func(c *clickhouselogger.Config) string {
			if c.Password != "s3cret" || c.Username != "edge" || c.Database != "logs" || c.Table != "access" || len(c.Addrs) != 2 {
				return "connection not read"
			}
			if !c.TLS.Enabled || c.TLS.ServerName != "ch.internal" || c.Compression != "zstd" || c.ReadTimeout.D() != 3*time.Second {
				return "tls, compression or timeouts not read"
			}
			if c.BatchSize != 5000 || c.MaxPending != 20000 || c.Retries.MaxAttempts != 5 || !c.CreateTable {
				return "batching or retries not read"
			}
			if !c.Spool.Enabled || c.Spool.Dir != "/var/spool/edge" || c.Spool.MaxBytes != 1<<30 {
				return "spool not read"
			}
			if c.TenantVar() != "http_x_org" || c.CompositeEnabled() || c.MaxValueBytes != 256 || c.ShutdownFlush.D() != time.Second {
				return "tenant, composite, bound or shutdown not read"
			}
			return ""
		}},
		{name: "bad values name their field", doc: `
clickhouse:
  addrs: ["nohostport", ":9000"]
  database: "my-db"
  table: "1table"
  compression: gzip
  batch_size: -1
  max_pending: -5
  dial_timeout: -1s
  retries: {max_attempts: -1, backoff: 2s, max_backoff: 1s}
  spool: {enabled: true, dir: relative/dir, max_bytes: 1000}
  tenant_header: "X Tenant"
  max_value_bytes: 8
  composite_var: "edge-log"
  tls: {enabled: true, cert_file: /c.pem}
`, wantErr: []string{
			`clickhouse.addrs[0]: must be host:port, got "nohostport"`,
			`clickhouse.addrs[1]: must be host:port, got ":9000"`,
			`clickhouse.database: must be letters, digits and '_'`,
			`clickhouse.table: must be letters, digits and '_', not starting with a digit, got "1table"`,
			`clickhouse.compression: must be one of lz4, zstd, none, got "gzip"`,
			`clickhouse.batch_size: must be between 1 and 1000000, got -1`,
			`clickhouse.max_pending: must be between 1 and 100000000, got -5`,
			`clickhouse.dial_timeout: must be > 0`,
			`clickhouse.retries.max_attempts: must be between 1 and 100, got -1`,
			`clickhouse.retries.max_backoff: must be >= retries.backoff (2s), got 1s`,
			`clickhouse.spool.dir: must be an absolute path, got "relative/dir"`,
			`clickhouse.spool.max_bytes: must be at least 1048576 (1 MiB), got 1000`,
			`clickhouse.tenant_header: must be an HTTP header name, got "X Tenant"`,
			`clickhouse.max_value_bytes: must be between 16 and 65536, got 8`,
			`clickhouse.composite_var: must be an nginx variable name`,
			`clickhouse.tls.key_file: cert_file and key_file must be given together`,
		}},
		{name: "max_pending below batch_size", doc: "clickhouse:\n  batch_size: 500\n  max_pending: 100\n",
			wantErr: []string{"clickhouse.max_pending: must be >= batch_size (500), got 100"}},
		{name: "batch_size follows a smaller max_pending", doc: "clickhouse:\n  max_pending: 20000\n", check: func(c *clickhouselogger.Config) string {
			if c.BatchSize != 10000 {
				return fmt.Sprintf("got batch_size %d, want 10000 (half of max_pending 20000)", c.BatchSize)
			}
			return ""
		}},
		{name: "batch_size of a max_pending of 1", doc: "clickhouse:\n  max_pending: 1\n", check: func(c *clickhouselogger.Config) string {
			if c.BatchSize != 1 {
				return fmt.Sprintf("got batch_size %d, want 1", c.BatchSize)
			}
			return ""
		}},
		{name: "a relative spool dir is fine while the spool is off", doc: "clickhouse:\n  spool: {dir: x}\n", check: func(c *clickhouselogger.Config) string {
			if c.Spool.Enabled {
				return "spool on"
			}
			return ""
		}},
		{name: "unknown key", doc: "clickhouse:\n  batch_sise: 5\n", wantErr: []string{"clickhouse.batch_sise: unknown key"}},
		{name: "unknown nested key", doc: "clickhouse:\n  spool:\n    enable: true\n", wantErr: []string{"clickhouse.spool.enable: unknown key"}},
		{name: "bare number duration", doc: "clickhouse:\n  flush_interval: 5\n", wantErr: []string{"duration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseCase(t, tt.doc, env(tt.env), tt.wantErr)
			if c == nil {
				return
			}
			if msg := tt.check(&c.ClickHouse); msg != "" {
				t.Error(msg)
			}
		})
	}
}
