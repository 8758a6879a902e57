package clickhouselogger

import (
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

// Config is the clickhouse section, used by the clickhouselogger plugin:
// the connection (native protocol only), the batching, the bounds of the
// in-memory buffer, the retries, the optional on-disk spool and the request
// fields read from APISIX. Every field documents its default; applyDefaults
// sets them and validate checks them, each problem naming its field as
// "clickhouse.<key>".
type Config struct {
	// Addrs are the host:port native-protocol addresses of the servers
	// (port 9000, or 9440 with TLS). With several, each batch goes to the
	// next server in turn (round robin per batch, each server with its own
	// connections); a batch whose insert fails on one server is sent to the
	// next at once, within the same attempt. A server that failed is
	// skipped for retries.backoff, doubling up to retries.max_backoff, then
	// pinged (or, if it had answered with an error, tried again with a
	// batch). When every server failed, the batch's attempt failed (see
	// retries). For a cluster, list every server and set table to a
	// Distributed table (conf/clickhouse-cluster-schema.sql). If empty,
	// ["127.0.0.1:9000"].
	Addrs []string `yaml:"addrs"`
	// Database holds the table. If empty, "default".
	Database string `yaml:"database"`
	// Table receives the rows unless a route conf names another one. If
	// empty, "edge_access_log". Letters, digits and '_', not starting with
	// a digit.
	Table string `yaml:"table"`
	// Username is the ClickHouse user. If empty, "default".
	Username string `yaml:"username"`
	// Password of the user. If empty, none. Use ${CLICKHOUSE_PASSWORD} and
	// list CLICKHOUSE_PASSWORD under nginx_config.envs in APISIX's config.
	Password string `yaml:"password"`
	// TLS secures the native connection. Off by default.
	TLS core.TLS `yaml:"tls"`
	// DialTimeout bounds a connect and its handshake (clickhouse-go bounds
	// them with this only, not with the insert's deadline). If zero, 1s.
	DialTimeout core.Duration `yaml:"dial_timeout"`
	// ReadTimeout bounds one insert: preparing the batch, sending it and
	// reading the server's answer. If zero, 10s.
	ReadTimeout core.Duration `yaml:"read_timeout"`
	// Compression of the native blocks: lz4, zstd or none. If empty, lz4.
	Compression string `yaml:"compression"`
	// BatchSize is the most rows in one INSERT; a full batch is flushed at
	// once. If zero, 50000, or half of max_pending when that is smaller.
	// ClickHouse spends far less per row on bigger inserts (a part each,
	// and fewer merges after): 2.1–2.5× less CPU per row at 50000 than at
	// 10000, measured (docs/clickhouselogger.md). The runner's memory for
	// an insert does not grow with it: a batch is sent in blocks of 8192
	// rows, which the server joins into one part.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest a row waits in memory before its batch is
	// flushed, whatever its size. If zero, 1s.
	FlushInterval core.Duration `yaml:"flush_interval"`
	// MaxPending bounds the rows held in memory (queued or in an insert
	// being retried). Beyond it new rows are dropped and counted
	// (reason queue_full), so memory stays bounded whatever ClickHouse
	// does. A row takes about 0.5 KB. If zero, 150000: two batches of the
	// default size in flight (insert_concurrency) and one filling. At
	// least batch_size.
	MaxPending int `yaml:"max_pending"`
	// InsertConcurrency is how many batch INSERTs may be in flight at once,
	// each on its own connection: while ClickHouse parses and writes one
	// batch, the next is encoded and sent. Each batch still gets its own
	// attempts, backoff and failover, and counts against max_pending until
	// it is resolved; with several servers, a batch goes to the server with
	// the fewest inserts in flight, in round-robin order among equals. 1
	// sends one batch at a time (encode, send, wait for ClickHouse, next).
	// If zero, 2 with one address in addrs, 1 with several (batches then
	// alternate strictly between the servers, and a frozen server holds up
	// one batch, not two). Between 1 and 16.
	InsertConcurrency int `yaml:"insert_concurrency"`
	// Retries bounds the attempts of a failing batch.
	Retries RetriesConfig `yaml:"retries"`
	// CreateTable creates each table the logger writes to (CREATE TABLE IF
	// NOT EXISTS, a MergeTree partitioned by day) before its first insert,
	// with types chosen by server version. If false (the default), create
	// it yourself from conf/clickhouse-schema.sql.
	CreateTable bool `yaml:"create_table"`
	// Spool is the optional on-disk buffer for rows that cannot be
	// delivered. Off by default.
	Spool SpoolConfig `yaml:"spool"`
	// TenantHeader is the request header logged in the tenant column. If
	// empty, X-Tenant-ID.
	TenantHeader string `yaml:"tenant_header"`
	// MaxValueBytes bounds every logged string (header values, user agent,
	// path, host ...): longer values are cut at a UTF-8 boundary. If zero,
	// 1024. Between 16 and 65536.
	MaxValueBytes int `yaml:"max_value_bytes"`
	// CompositeVar is the nginx variable that joins the request fields in
	// one value (see docs/clickhouselogger.md for the snippet to put in
	// APISIX's nginx_config.http_configuration_snippet), fetched in one
	// ExtraInfo round trip instead of one per field. When APISIX does not
	// define it, the logger falls back to single variables and tries it
	// again a minute later. If empty, "edge_log_fields"; "off" never asks
	// for it.
	CompositeVar string `yaml:"composite_var"`
	// ShutdownFlush bounds the flush of pending rows on SIGTERM; rows still
	// pending after it are spooled (if the spool is on) or dropped and
	// counted (reason shutdown). If zero, 2s. Keep it below
	// shutdown_timeout.
	ShutdownFlush core.Duration `yaml:"shutdown_flush"`
	// Ingest is the listener for APISIX's http-logger batches (the
	// log-phase path). On by default, on 127.0.0.1:9543.
	Ingest IngestConfig `yaml:"ingest"`
}

// RetriesConfig is the retries subsection of clickhouse.
type RetriesConfig struct {
	// MaxAttempts is how many times one batch is tried (the first try
	// included) before it is spooled (if the spool is on) or dropped and
	// counted (reason insert_failed). If zero, 3. At most 100.
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff is the wait after the first failed attempt; it doubles after
	// each further one. If zero, 200ms.
	Backoff core.Duration `yaml:"backoff"`
	// MaxBackoff caps the wait between attempts, and is the interval at
	// which a down server is probed while batches go to the spool. If zero,
	// 5s.
	MaxBackoff core.Duration `yaml:"max_backoff"`
}

// SpoolConfig is the spool subsection of clickhouse.
type SpoolConfig struct {
	// Enabled turns the spool on: a batch that exhausted its attempts, and
	// every batch while ClickHouse stays down, is written to Dir instead of
	// being dropped, and replayed oldest first when ClickHouse answers
	// again, also after a runner restart. Off by default.
	Enabled bool `yaml:"enabled"`
	// Dir holds the spool files (created with mode 0700 if missing). It
	// must be writable by the user APISIX runs the runner as, and not be
	// shared by two runners. If empty, /usr/local/apisix/logs/edge-spool.
	Dir string `yaml:"dir"`
	// MaxBytes caps the spool on disk; a batch that does not fit is dropped
	// and counted (reason spool_full). If zero, 268435456 (256 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
}

// Defaults of the clickhouse section.
const (
	DefaultClickHouseTable        = "edge_access_log"
	DefaultClickHouseCompositeVar = "edge_log_fields"
	DefaultClickHouseSpoolDir     = "/usr/local/apisix/logs/edge-spool"
)

// chIdentRe is a ClickHouse identifier this plugin accepts unquoted-safe:
// the logger still back-quotes it, but the rule keeps DDL and metrics tidy.
var chIdentRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// ClickHouseIdentOK reports whether s is an identifier the logger accepts as a
// database or table name.
func IdentOK(s string) bool { return chIdentRe.MatchString(s) }

// chVarNameRe is an nginx variable name.
var chVarNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

func (x *Config) ApplyDefaults() {
	if len(x.Addrs) == 0 {
		x.Addrs = []string{"127.0.0.1:9000"}
	}
	if x.Database == "" {
		x.Database = "default"
	}
	if x.Table == "" {
		x.Table = DefaultClickHouseTable
	}
	if x.Username == "" {
		x.Username = "default"
	}
	if x.DialTimeout == 0 {
		x.DialTimeout = core.Duration(time.Second)
	}
	if x.ReadTimeout == 0 {
		x.ReadTimeout = core.Duration(10 * time.Second)
	}
	if x.Compression == "" {
		x.Compression = "lz4"
	}
	if x.MaxPending == 0 {
		x.MaxPending = 150000
	}
	if x.BatchSize == 0 {
		// half of a max_pending set below 100000, so that a config valid
		// with the earlier default of 10000 stays valid
		x.BatchSize = max(1, min(50000, x.MaxPending/2))
	}
	if x.FlushInterval == 0 {
		x.FlushInterval = core.Duration(time.Second)
	}
	if x.InsertConcurrency == 0 {
		x.InsertConcurrency = 2
		if len(x.Addrs) > 1 {
			x.InsertConcurrency = 1
		}
	}
	if x.Retries.MaxAttempts == 0 {
		x.Retries.MaxAttempts = 3
	}
	if x.Retries.Backoff == 0 {
		x.Retries.Backoff = core.Duration(200 * time.Millisecond)
	}
	if x.Retries.MaxBackoff == 0 {
		x.Retries.MaxBackoff = core.Duration(5 * time.Second)
	}
	if x.Spool.Dir == "" {
		x.Spool.Dir = DefaultClickHouseSpoolDir
	}
	if x.Spool.MaxBytes == 0 {
		x.Spool.MaxBytes = 256 << 20
	}
	if x.TenantHeader == "" {
		x.TenantHeader = "X-Tenant-ID"
	}
	if x.MaxValueBytes == 0 {
		x.MaxValueBytes = 1024
	}
	if x.CompositeVar == "" {
		x.CompositeVar = DefaultClickHouseCompositeVar
	}
	if x.ShutdownFlush == 0 {
		x.ShutdownFlush = core.Duration(2 * time.Second)
	}
	x.Ingest.applyDefaults()
}

func (x *Config) Validate() []error {
	var errs []error
	f := func(key, format string, args ...any) {
		errs = append(errs, core.Fieldf("clickhouse."+key, format, args...))
	}
	errs = append(errs, core.CheckAddrs("clickhouse", x.Addrs)...)
	if !IdentOK(x.Database) {
		f("database", "must be letters, digits and '_', not starting with a digit, got %q", x.Database)
	}
	if !IdentOK(x.Table) {
		f("table", "must be letters, digits and '_', not starting with a digit, got %q", x.Table)
	}
	errs = append(errs, x.TLS.Validate("clickhouse")...)
	positive := func(key string, d core.Duration, limit time.Duration) {
		if d <= 0 {
			f(key, "must be > 0")
		} else if limit > 0 && d.D() > limit {
			f(key, "must be at most %v, got %v", limit, d)
		}
	}
	positive("dial_timeout", x.DialTimeout, time.Minute)
	positive("read_timeout", x.ReadTimeout, 10*time.Minute)
	positive("flush_interval", x.FlushInterval, time.Hour)
	positive("retries.backoff", x.Retries.Backoff, time.Hour)
	positive("retries.max_backoff", x.Retries.MaxBackoff, time.Hour)
	positive("shutdown_flush", x.ShutdownFlush, time.Minute)
	if x.Retries.Backoff > 0 && x.Retries.MaxBackoff > 0 && x.Retries.MaxBackoff < x.Retries.Backoff {
		f("retries.max_backoff", "must be >= retries.backoff (%v), got %v", x.Retries.Backoff, x.Retries.MaxBackoff)
	}
	switch x.Compression {
	case "lz4", "zstd", "none":
	default:
		f("compression", "must be one of lz4, zstd, none, got %q", x.Compression)
	}
	if x.BatchSize <= 0 || x.BatchSize > 1_000_000 {
		f("batch_size", "must be between 1 and 1000000, got %d", x.BatchSize)
	}
	if x.MaxPending <= 0 || x.MaxPending > 100_000_000 {
		f("max_pending", "must be between 1 and 100000000, got %d", x.MaxPending)
	} else if x.BatchSize > 0 && x.MaxPending < x.BatchSize {
		f("max_pending", "must be >= batch_size (%d), got %d", x.BatchSize, x.MaxPending)
	}
	if x.InsertConcurrency < 1 || x.InsertConcurrency > 16 {
		f("insert_concurrency", "must be between 1 and 16, got %d", x.InsertConcurrency)
	}
	if x.Retries.MaxAttempts <= 0 || x.Retries.MaxAttempts > 100 {
		f("retries.max_attempts", "must be between 1 and 100, got %d", x.Retries.MaxAttempts)
	}
	if x.Spool.Enabled && !filepath.IsAbs(x.Spool.Dir) {
		f("spool.dir", "must be an absolute path, got %q", x.Spool.Dir)
	}
	if x.Spool.MaxBytes < 0 {
		f("spool.max_bytes", "must be > 0, got %d", x.Spool.MaxBytes)
	} else if x.Spool.Enabled && x.Spool.MaxBytes < 1<<20 {
		f("spool.max_bytes", "must be at least 1048576 (1 MiB), got %d", x.Spool.MaxBytes)
	}
	if !core.ValidHeaderName(x.TenantHeader) {
		f("tenant_header", "must be an HTTP header name, got %q", x.TenantHeader)
	}
	if x.MaxValueBytes < 16 || x.MaxValueBytes > 65536 {
		f("max_value_bytes", "must be between 16 and 65536, got %d", x.MaxValueBytes)
	}
	if x.CompositeVar != "off" && !chVarNameRe.MatchString(x.CompositeVar) {
		f("composite_var", "must be an nginx variable name (letters, digits, '_') or \"off\", got %q", x.CompositeVar)
	}
	x.Ingest.validate(f)
	return errs
}

// CompositeEnabled reports whether the logger asks APISIX for the
// composite variable.
func (x *Config) CompositeEnabled() bool { return x.CompositeVar != "off" }

// TenantVar is the nginx variable of the tenant header, such as
// http_x_tenant_id.
func (x *Config) TenantVar() string { return HeaderVar(x.TenantHeader) }

// ClickHouseHeaderVar returns the nginx variable of request header name:
// "http_" + the name lower-cased with '-' turned into '_'.
func HeaderVar(name string) string {
	return "http_" + strings.ReplaceAll(strings.ToLower(name), "-", "_")
}
