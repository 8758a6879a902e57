package clickhouselogger

import (
	"fmt"
	"net"
	"strings"

	"github.com/apisix-edge/edge-runner/core"
)

// IngestConfig is the clickhouse.ingest subsection: the HTTP listener that
// takes the batches of APISIX's own http-logger plugin (the log-phase path,
// recommended over ext-plugin-post-resp, see docs/clickhouselogger.md) and
// feeds their entries to the same queue, batches, retries, spool and
// accounting as the post-resp path.
type IngestConfig struct {
	// Listen is the host:port the listener binds (with SO_REUSEPORT, so that
	// during `apisix reload` the new runner binds while the old one drains).
	// If empty, 127.0.0.1:9543: on by default, since it is loopback, costs
	// nothing while no batch arrives, and is the recommended path. "off"
	// disables it. A non-loopback address needs auth_header.
	Listen string `yaml:"listen"`
	// AuthHeader is the shared secret APISIX's http-logger sends verbatim
	// as the Authorization header (its auth_header, e.g. "Bearer s3cret");
	// compared in constant time. Use ${VAR} and list VAR under APISIX's
	// nginx_config.envs. If empty, batches need no Authorization (loopback
	// only).
	AuthHeader string `yaml:"auth_header"`
	// MaxBodyBytes bounds one batch's body; a larger one is refused (413).
	// If zero, 8388608 (8 MiB: 1000 default entries with a JWT in the
	// request headers take about 1.6 MB). Between 1 KiB and 256 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxEntries bounds the entries of one batch; a batch with more is
	// refused (413). If zero, 10000 (APISIX's batch_max_size defaults to
	// 1000). Between 1 and 1000000.
	MaxEntries int `yaml:"max_entries"`
	// MaxFieldBytes bounds every key and value of an entry as it arrives
	// (header values included, even those never stored); an entry with a
	// longer one is rejected and counted (reason field_too_large). Stored
	// strings are then cut to clickhouse.max_value_bytes. If zero, 65536.
	// Between 256 and 16777216.
	MaxFieldBytes int `yaml:"max_field_bytes"`
	// Columns are custom columns filled from each entry; create_table adds
	// them. If empty, none. At most 32.
	Columns []IngestColumn `yaml:"columns"`
}

// IngestColumn is one custom column of the ingest.
type IngestColumn struct {
	// Name of the column: letters, digits and '_', not a built-in column.
	Name string `yaml:"name"`
	// Type is one of String, UInt16, UInt32, UInt64, Int64, Float64,
	// DateTime. If empty, String. A value that does not parse as the type
	// is stored as its zero (DateTime: 1970-01-01; numbers as seconds or,
	// above 1e11, milliseconds since the epoch, or RFC 3339).
	Type string `yaml:"type"`
	// From is where the value comes from: "entry:<key>" (a top-level key of
	// the entry, a log_format key), "header:<name>" (a request header of a
	// default entry) or "response_header:<name>" (a response header of a
	// default entry). Credential headers (authorization, cookie,
	// proxy-authorization, set-cookie) cannot be named.
	From string `yaml:"from"`
}

// Defaults of the ingest subsection.
const (
	DefaultIngestListen        = "127.0.0.1:9543"
	DefaultIngestMaxBodyBytes  = 8 << 20
	DefaultIngestMaxEntries    = 10000
	DefaultIngestMaxFieldBytes = 65536
	maxIngestColumns           = 32
)

// IngestPath is the path the listener answers (APISIX's http-logger uri:
// http://127.0.0.1:9543/apisix/http-logger).
const IngestPath = "/apisix/http-logger"

// ingestTypes are the custom column types the ingest converts to.
var ingestTypes = []string{"String", "UInt16", "UInt32", "UInt64", "Int64", "Float64", "DateTime"}

// credentialHeaders are never stored, logged or accepted as a column
// source.
var credentialHeaders = []string{"authorization", "cookie", "proxy-authorization", "set-cookie"}

func isCredentialHeader(name string) bool {
	for _, h := range credentialHeaders {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// Enabled reports whether the listener runs.
func (x *IngestConfig) Enabled() bool { return x.Listen != "off" }

func (x *IngestConfig) applyDefaults() {
	if x.Listen == "" {
		x.Listen = DefaultIngestListen
	}
	if x.MaxBodyBytes == 0 {
		x.MaxBodyBytes = DefaultIngestMaxBodyBytes
	}
	if x.MaxEntries == 0 {
		x.MaxEntries = DefaultIngestMaxEntries
	}
	if x.MaxFieldBytes == 0 {
		x.MaxFieldBytes = DefaultIngestMaxFieldBytes
	}
	for i := range x.Columns {
		if x.Columns[i].Type == "" {
			x.Columns[i].Type = "String"
		}
	}
}

// columnSource splits a column's from into its kind (entry, header,
// response_header) and its key or header name.
func columnSource(from string) (kind, key string, ok bool) {
	kind, key, ok = strings.Cut(from, ":")
	if !ok || key == "" {
		return "", "", false
	}
	switch kind {
	case "entry":
		return kind, key, len(key) <= 128
	case "header", "response_header":
		return kind, strings.ToLower(key), true
	}
	return "", "", false
}

func (x *IngestConfig) validate(f func(key, format string, args ...any)) {
	if x.Enabled() {
		host, port, err := net.SplitHostPort(x.Listen)
		if err != nil || port == "" {
			f("ingest.listen", "must be host:port or \"off\", got %q", x.Listen)
		} else if ip := net.ParseIP(host); x.AuthHeader == "" && (ip == nil || !ip.IsLoopback()) && host != "localhost" {
			f("ingest.listen", "a non-loopback address needs ingest.auth_header, got %q", x.Listen)
		}
	}
	if strings.ContainsAny(x.AuthHeader, "\r\n") || len(x.AuthHeader) > 4096 {
		f("ingest.auth_header", "must be one line of at most 4096 bytes")
	}
	if x.MaxBodyBytes < 1024 || x.MaxBodyBytes > 256<<20 {
		f("ingest.max_body_bytes", "must be between 1024 and 268435456, got %d", x.MaxBodyBytes)
	}
	if x.MaxEntries < 1 || x.MaxEntries > 1_000_000 {
		f("ingest.max_entries", "must be between 1 and 1000000, got %d", x.MaxEntries)
	}
	if x.MaxFieldBytes < 256 || x.MaxFieldBytes > 16<<20 {
		f("ingest.max_field_bytes", "must be between 256 and 16777216, got %d", x.MaxFieldBytes)
	}
	if len(x.Columns) > maxIngestColumns {
		f("ingest.columns", "must have at most %d columns, got %d", maxIngestColumns, len(x.Columns))
	}
	seen := map[string]bool{}
	for i, c := range x.Columns {
		key := fmt.Sprintf("ingest.columns[%d]", i)
		switch {
		case !IdentOK(c.Name):
			f(key+".name", "must be letters, digits and '_', not starting with a digit, got %q", c.Name)
		case isBuiltinColumn(c.Name):
			f(key+".name", "must not be a built-in column, got %q", c.Name)
		case seen[strings.ToLower(c.Name)]:
			f(key+".name", "must be unique, got %q twice", c.Name)
		}
		seen[strings.ToLower(c.Name)] = true
		okType := false
		for _, t := range ingestTypes {
			okType = okType || c.Type == t
		}
		if !okType {
			f(key+".type", "must be one of %s, got %q", strings.Join(ingestTypes, ", "), c.Type)
		}
		kind, name, ok := columnSource(c.From)
		switch {
		case !ok:
			f(key+".from", "must be entry:<key>, header:<name> or response_header:<name>, got %q", c.From)
		case kind != "entry" && !core.ValidHeaderName(name):
			f(key+".from", "must name an HTTP header, got %q", c.From)
		case kind != "entry" && isCredentialHeader(name):
			f(key+".from", "must not name a credential header (authorization, cookie, proxy-authorization, set-cookie), got %q", c.From)
		}
	}
}
