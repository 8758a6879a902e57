package clickhouselogger

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/apisix-edge/edge-runner/core"
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

	// The fields only the log phase knows (rows of the ingest); zero on
	// post-resp rows.
	source       uint8  // sourcePostResp or sourceLog
	upstreamMs   uint32 // upstream latency, ms
	apisixMs     uint32 // APISIX's own latency, ms
	bytesSent    uint64 // $bytes_sent
	requestLen   uint64 // $request_length
	serviceID    string
	upstreamAddr string
	rlStatus     string // X-RateLimit-Status (degraded)
	// The rate-limit numbers, each meaningful when its bit of rlHave is set
	// (a zero row has none: the column then holds -1).
	rlLimit, rlRemaining, retryAfter int64
	rlHave                           uint8
	// Custom columns (clickhouse.ingest.columns): the names are the
	// config's (shared), the values the row's own, as received.
	customNames, customValues []string
}

// Sources of a row (the source column).
const (
	sourcePostResp uint8 = iota // ext-plugin-post-resp
	sourceLog                   // the ingest (APISIX's http-logger)
)

// Bits of row.rlHave.
const (
	haveRLLimit uint8 = 1 << iota
	haveRLRemaining
	haveRetryAfter
)

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

// The request fields the logger asks APISIX for, indexed by the c
// constants: in this order in the composite variable (after its tag) and
// as single variables (requestVars names them).
const (
	cRequestTime = iota
	cMethod
	cHost
	cURI
	cRemoteAddr
	cUserAgent
	cXRequestID
	cRequestID // the fallback of an empty X-Request-Id
	cTenant
	cConsumer
	numFields
)

// requestVars returns the nginx variables of the request fields, indexed by
// the c constants, with tenantVar as the tenant's.
func requestVars(tenantVar string) [numFields]string {
	return [numFields]string{
		cRequestTime: "request_time",
		cMethod:      "request_method",
		cHost:        "host",
		cURI:         "uri",
		cRemoteAddr:  "remote_addr",
		cUserAgent:   "http_user_agent",
		cXRequestID:  "http_x_request_id",
		cRequestID:   "request_id",
		cTenant:      tenantVar,
		cConsumer:    HeaderVar(core.ConsumerHeader),
	}
}

// setField stores the value s of request field i in r, bounded to max
// bytes. Fields are set in index order: request_id only fills in for an
// empty X-Request-Id.
func (r *row) setField(i int, s string, max int) {
	switch i {
	case cRequestTime:
		r.latencyMs = parseLatencyMs(s)
	case cMethod:
		r.method = bound(s, max)
	case cHost:
		r.host = bound(s, max)
	case cURI:
		r.path = bound(s, max)
	case cRemoteAddr:
		r.clientIP = bound(s, max)
	case cUserAgent:
		r.userAgent = bound(s, max)
	case cXRequestID:
		r.requestID = bound(s, max)
	case cRequestID:
		if r.requestID == "" {
			r.requestID = bound(s, max)
		}
	case cTenant:
		r.tenant = bound(s, max)
	case cConsumer:
		r.consumer = bound(s, max)
	}
}

// The composite variable (see docs/clickhouselogger.md): a version tag and
// the request fields, joined by "\n", which cannot occur in a request header
// value. A value whose field count is not exactly compositeFields (for
// example a path with an encoded %0A) is not trusted: the request falls
// back to single variables.
const (
	compositeTag    = "e1"
	compositeFields = 1 + numFields // the tag and the request fields
)

// compositeSnippet returns the nginx map that defines the composite variable
// named name, with tenantVar as its tenant field. The doc shows it.
func compositeSnippet(name, tenantVar string) string {
	var b strings.Builder
	b.WriteString("map $request_method $" + name + " {\n    default \"" + compositeTag)
	for _, v := range requestVars(tenantVar) {
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
	var f [numFields]string
	rest := v[len(compositeTag)+1:]
	for i := range f {
		j := strings.IndexByte(rest, '\n')
		if i == numFields-1 {
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
	for i, s := range f {
		r.setField(i, s, max)
	}
	return true
}
