package clickhouselogger

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// row is one access-log row as the request path hands it to the queue: plain
// Go values, no encoding. The flusher turns batches of rows into columns.
type row struct {
	tsMilli   int64  // when the runner saw the response, Unix ms
	table     string // "" means the runner-level table
	status    uint16
	latencyMs uint32 // APISIX's $request_time, in ms

	routeID   string
	method    string
	host      string
	path      string
	clientIP  string
	userAgent string
	requestID string
	tenant    string
	consumer  string

	// Names slices are the route conf's (shared, never modified); values
	// slices are the row's own.
	reqNames, reqValues   []string
	respNames, respValues []string
}

// bound cuts s to at most max bytes, at a UTF-8 boundary. Slicing allocates
// nothing.
func bound(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && cut > max-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// parseLatencyMs turns $request_time ("0.012", seconds with ms resolution)
// into milliseconds. Anything unparsable is 0.
func parseLatencyMs(s string) uint32 {
	if s == "" {
		return 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f != f {
		return 0
	}
	ms := f*1000 + 0.5
	if ms >= 4294967295 {
		return 4294967295
	}
	return uint32(ms)
}

// The composite variable (see docs/clickhouselogger.md): a version tag and
// the request fields, joined by "\n", which cannot occur in a request header
// value. A value whose field count is not exactly compositeFields (for
// example a path with an encoded %0A) is not trusted: the request falls
// back to single variables.
const (
	compositeTag    = "e1"
	compositeFields = 11
)

// Indexes of the fields in the composite variable, after the tag.
const (
	cRequestTime = 1 + iota
	cMethod
	cHost
	cURI
	cRemoteAddr
	cUserAgent
	cXRequestID
	cRequestID
	cTenant
	cConsumer
)

// compositeSnippet returns the nginx map that defines the composite variable
// named name, with tenantVar as its tenant field. The doc shows it.
func compositeSnippet(name, tenantVar string) string {
	vars := []string{"request_time", "request_method", "host", "uri", "remote_addr",
		"http_user_agent", "http_x_request_id", "request_id", tenantVar, "http_x_edge_consumer"}
	var b strings.Builder
	b.WriteString("map $request_method $" + name + " {\n    default \"" + compositeTag)
	for _, v := range vars {
		b.WriteString(`\n${` + v + `}`)
	}
	b.WriteString("\";\n}\n")
	return b.String()
}

// parseComposite fills the request fields of r from the composite value v.
// It reports false, leaving r untouched, when v is not a well-formed value.
// The fields are substrings of v: one allocation for the whole row.
func parseComposite(v string, r *row, max int) bool {
	if len(v) < len(compositeTag)+1 || v[:len(compositeTag)] != compositeTag || v[len(compositeTag)] != '\n' {
		return false
	}
	var f [compositeFields]string
	rest := v
	for i := 0; i < compositeFields; i++ {
		j := strings.IndexByte(rest, '\n')
		if i == compositeFields-1 {
			if j >= 0 {
				return false // more fields than expected
			}
			f[i] = rest
			break
		}
		if j < 0 {
			return false // fewer fields than expected
		}
		f[i] = rest[:j]
		rest = rest[j+1:]
	}
	r.latencyMs = parseLatencyMs(f[cRequestTime])
	r.method = bound(f[cMethod], max)
	r.host = bound(f[cHost], max)
	r.path = bound(f[cURI], max)
	r.clientIP = bound(f[cRemoteAddr], max)
	r.userAgent = bound(f[cUserAgent], max)
	r.requestID = bound(f[cXRequestID], max)
	if r.requestID == "" {
		r.requestID = bound(f[cRequestID], max)
	}
	r.tenant = bound(f[cTenant], max)
	r.consumer = bound(f[cConsumer], max)
	return true
}
