package clickhouselogger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/apisix-edge/edge-runner/core"
)

// The ingest decoder turns an http-logger batch into rows.
//
// It is a small hand-written JSON scanner rather than encoding/json: a
// default http-logger entry is about 1.6 KB, most of it request headers the
// row never keeps (a JWT in authorization, cookies), and encoding/json
// would allocate every key and value of them (map[string]string headers) or
// cost one reflection-driven pass per field. The scanner reads the body in
// place: a value it does not keep is skipped without being copied, a value
// it keeps is copied once into a per-batch arena, and when the batch is
// read the rows' strings become substrings of one string made from that
// arena (one allocation per batch; the body itself is never retained, so
// the queued rows of a batch hold only what they log, together). Measured
// in BenchmarkIngestDecode.
//
// What it accepts: a JSON array of entries (concat_method json) or a
// sequence of entries separated by whitespace, one per line (new_line).
// Syntax errors in the structure it reads, and unbalanced or over-deep
// nesting in the values it skips, fail the whole batch. It does not check
// that skipped values are otherwise well-formed, nor reject control
// characters inside strings: it never stores what it skips.

// Batch-level decode errors.
var (
	errMalformed  = errors.New("malformed batch")
	errTooMany    = errors.New("too many entries")
	maxJSONDepth  = 32
	errTooDeepMsg = "nested deeper than 32"
)

// Per-entry rejection reasons (the reason label of
// log_ingest_entries_rejected_total).
const (
	rejectInvalid       = "invalid"         // not an object, no known key, or an unusable status
	rejectFieldTooLarge = "field_too_large" // a key or value over max_field_bytes
)

var rejectReasons = []string{rejectInvalid, rejectFieldTooLarge}

// The string fields an entry may fill, as spans of the arena.
const (
	fRouteID = iota
	fServiceID
	fMethod
	fHost
	fPath
	fClientIP
	fUserAgent
	fXRequestID
	fRequestID
	fTenant
	fConsumer
	fSealed
	fUpstreamAddr
	fRLStatus
	numStrFields
)

// The numeric fields, parsed as they are read.
const (
	nStatus = iota
	nLatencyMs
	nUpstreamMs
	nApisixMs
	nBytesSent
	nRequestLen
	nRLLimit
	nRLRemaining
	nRetryAfter
	nTimeMs
	numNumFields
)

// Where a key's value goes: a string field, a number field with a unit, or
// a nested object.
type target struct {
	str   int8  // string field + 1, 0 for none
	num   int8  // numeric field + 1, 0 for none
	scale uint8 // how num is read (below)
}

// Scales of numeric values.
const (
	asInt      uint8 = iota // an integer (a decimal is truncated)
	asMs                    // milliseconds, rounded
	asSeconds               // seconds, stored in ms
	asSecondsN              // nginx's list of seconds ("0.001, 0.002 : 0.003"), summed, in ms
)

// topKey returns where the value of an entry key goes: the keys the
// runner understands, of the default entry and of the log_format of
// docs/clickhouselogger.md. A switch, not a map: no hashing per key.
func topTarget(key []byte) (target, bool) {
	switch string(key) {
	case "route_id":
		return target{str: fRouteID + 1}, true
	case "service_id":
		return target{str: fServiceID + 1}, true
	case "client_ip":
		return target{str: fClientIP + 1}, true
	case "upstream":
		return target{str: fUpstreamAddr + 1}, true
	case "latency":
		return target{num: nLatencyMs + 1, scale: asMs}, true
	case "upstream_latency":
		return target{num: nUpstreamMs + 1, scale: asMs}, true
	case "apisix_latency":
		return target{num: nApisixMs + 1, scale: asMs}, true
	case "start_time":
		return target{num: nTimeMs + 1, scale: asInt}, true
	case "method":
		return target{str: fMethod + 1}, true
	case "host":
		return target{str: fHost + 1}, true
	case "uri":
		return target{str: fPath + 1}, true
	case "status":
		return target{num: nStatus + 1, scale: asInt}, true
	case "request_time":
		return target{num: nLatencyMs + 1, scale: asSeconds}, true
	case "upstream_response_time":
		return target{num: nUpstreamMs + 1, scale: asSecondsN}, true
	case "remote_addr":
		return target{str: fClientIP + 1}, true
	case "user_agent":
		return target{str: fUserAgent + 1}, true
	case "request_id":
		return target{str: fRequestID + 1}, true
	case "x_request_id":
		return target{str: fXRequestID + 1}, true
	case "tenant":
		return target{str: fTenant + 1}, true
	case "consumer":
		return target{str: fConsumer + 1}, true
	case "consumer_sealed":
		return target{str: fSealed + 1}, true
	case "rl_status":
		return target{str: fRLStatus + 1}, true
	case "rl_limit":
		return target{num: nRLLimit + 1, scale: asInt}, true
	case "rl_remaining":
		return target{num: nRLRemaining + 1, scale: asInt}, true
	case "retry_after":
		return target{num: nRetryAfter + 1, scale: asInt}, true
	case "bytes_sent":
		return target{num: nBytesSent + 1, scale: asInt}, true
	case "request_length":
		return target{num: nRequestLen + 1, scale: asInt}, true
	case "upstream_addr":
		return target{str: fUpstreamAddr + 1}, true
	case "msec":
		return target{num: nTimeMs + 1, scale: asSeconds}, true
	}
	return target{}, false
}

// span is a value in the arena; an empty one (end == off) reads as "".
type span struct{ off, end int32 }

// decodeStats counts what one batch held.
type decodeStats struct {
	entries  int
	rejected [2]int // indexed like rejectReasons
	sealedOK int
	sealedNo int
}

func (s *decodeStats) rejectedTotal() int { return s.rejected[0] + s.rejected[1] }

// ingestDecoder holds one goroutine's scratch state; the listener keeps
// one per concurrent batch.
type ingestDecoder struct {
	// config
	maxField   int
	maxValue   int
	maxEntries int
	reqHdr     hdrTable       // the request headers a column takes
	respHdr    hdrTable       // the response headers a column takes
	entryKeys  map[string]int // custom entry key -> custom index
	customCols []string       // the custom column names (shared by every row)

	// per batch
	b    []byte
	i    int
	err  error
	unes []byte // unescaped string scratch

	// per batch: the kept values of the batch's rows, and where each
	// row's strings are in them (index: the row's, from the first row this
	// call appended)
	arena  []byte
	spans  [][numStrFields]span
	cspans []span // custom values, len(custom) per row

	// per entry
	str    [numStrFields]span
	num    [numNumFields]float64
	have   uint16 // bit n set when num[n] was read
	bad    string // rejection reason, "" while the entry is good
	known  bool   // a known key was seen
	custom []span
}

// hdrTarget is where a header's value goes: a built-in field (string
// field + 1, or one of the resp constants below; 0 for none) and a custom
// column (index + 1; 0 for none).
type hdrTarget struct{ builtin, custom int8 }

// hdrTable holds the wanted headers by the length of their name (under
// 128 bytes, lower-cased): a header's name is compared with the few of
// its length, without a copy or a hash.
type hdrTable [128][]hdrEntry

type hdrEntry struct {
	name string
	t    hdrTarget
}

func newHdrTable(m map[string]hdrTarget) (tbl hdrTable) {
	for name, t := range m {
		if len(name) < len(tbl) {
			tbl[len(name)] = append(tbl[len(name)], hdrEntry{name, t})
		}
	}
	return tbl
}

// find returns where the header named key (in any case) goes.
func (tbl *hdrTable) find(key []byte) (hdrTarget, bool) {
	if len(key) >= len(tbl) {
		return hdrTarget{}, false
	}
next:
	for _, e := range tbl[len(key)] {
		for i, c := range key {
			if 'A' <= c && c <= 'Z' {
				c += 32
			}
			if c != e.name[i] {
				continue next
			}
		}
		return e.t, true
	}
	return hdrTarget{}, false
}

// Response header targets beyond the string fields.
const (
	respRLLimit     int8 = 100 + iota // numeric: rl_limit
	respRLRemaining                   // rl_remaining
	respRetryAfter                    // retry_after
)

func newIngestDecoder(cfg *Config) *ingestDecoder {
	in := &cfg.Ingest
	reqHdr := map[string]hdrTarget{
		"host":                     {builtin: fHost + 1},
		"user-agent":               {builtin: fUserAgent + 1},
		"x-request-id":             {builtin: fXRequestID + 1},
		lower(cfg.TenantHeader):    {builtin: fTenant + 1},
		lower(core.ConsumerHeader): {builtin: fConsumer + 1},
	}
	respHdr := map[string]hdrTarget{
		"x-ratelimit-status":          {builtin: fRLStatus + 1},
		"x-ratelimit-limit":           {builtin: respRLLimit},
		"x-ratelimit-remaining":       {builtin: respRLRemaining},
		"retry-after":                 {builtin: respRetryAfter},
		lower(core.LogConsumerHeader): {builtin: fSealed + 1},
	}
	d := &ingestDecoder{
		maxField:   in.MaxFieldBytes,
		maxValue:   cfg.MaxValueBytes,
		maxEntries: in.MaxEntries,
		entryKeys:  map[string]int{},
		custom:     make([]span, len(in.Columns)),
	}
	for i, c := range in.Columns {
		d.customCols = append(d.customCols, c.Name)
		kind, key, _ := columnSource(c.From)
		switch kind {
		case "entry":
			d.entryKeys[key] = i
		case "header":
			t := reqHdr[key]
			t.custom = int8(i + 1)
			reqHdr[key] = t
		case "response_header":
			t := respHdr[key]
			t.custom = int8(i + 1)
			respHdr[key] = t
		}
	}
	d.reqHdr, d.respHdr = newHdrTable(reqHdr), newHdrTable(respHdr)
	return d
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// decode appends the rows of body to out. recvMilli stamps entries that
// carry no time. A batch-level problem (syntax, too many entries) returns
// an error wrapping errMalformed or errTooMany; the rows appended so far
// must then be discarded by the caller. Entries that are rejected are
// counted in the stats, not appended.
func (d *ingestDecoder) decode(body []byte, recvMilli int64, out []row) ([]row, decodeStats, error) {
	base := len(out)
	d.arena, d.spans, d.cspans = d.arena[:0], d.spans[:0], d.cspans[:0]
	out, st, err := d.entries(body, recvMilli, out)
	d.finish(out[base:])
	d.b = nil
	if cap(d.arena) > 1<<20 || cap(d.spans) > 1<<12 {
		// a large batch: its buffers go, the next ones start small again
		d.arena, d.spans, d.cspans = nil, nil, nil
	}
	return out, st, err
}

// finish gives the rows appended by this batch their strings: substrings
// of one string holding every value they keep.
func (d *ingestDecoder) finish(rows []row) {
	if len(rows) == 0 {
		return
	}
	all := string(d.arena)
	nc := len(d.custom)
	for k := range rows {
		r, sp := &rows[k], &d.spans[k]
		get := func(f int) string { s := sp[f]; return all[s.off:s.end] }
		r.routeID, r.serviceID = get(fRouteID), get(fServiceID)
		r.method, r.host, r.path = get(fMethod), get(fHost), get(fPath)
		r.clientIP, r.userAgent = get(fClientIP), get(fUserAgent)
		r.requestID = get(fXRequestID)
		if r.requestID == "" {
			r.requestID = get(fRequestID)
		}
		r.tenant, r.upstreamAddr, r.rlStatus = get(fTenant), get(fUpstreamAddr), get(fRLStatus)
		if c := get(fConsumer); c != "" {
			r.consumer = c // else the sealed one's, if any, set by row
		}
		if nc > 0 {
			for i, s := range d.cspans[k*nc : (k+1)*nc] {
				r.customValues[i] = all[s.off:s.end]
			}
		}
	}
}

// entries reads the batch's entries into out.
func (d *ingestDecoder) entries(body []byte, recvMilli int64, out []row) ([]row, decodeStats, error) {
	var st decodeStats
	d.b, d.i, d.err = body, 0, nil
	d.ws()
	if d.i >= len(d.b) {
		return out, st, nil // an empty body: no entry
	}
	if d.b[d.i] == '[' {
		d.i++
		d.ws()
		if d.peek() == ']' {
			d.i++
		} else {
			for d.err == nil {
				if out = d.entry(out, recvMilli, &st); d.err != nil {
					break
				}
				if st.entries > d.maxEntries {
					return out, st, fmt.Errorf("%w: more than %d", errTooMany, d.maxEntries)
				}
				d.ws()
				c := d.peek()
				d.i++
				if c == ']' {
					break
				}
				if c != ',' {
					d.fail("expected ',' or ']'")
				}
				d.ws()
			}
		}
		d.ws()
		if d.err == nil && d.i < len(d.b) {
			d.fail("data after the array")
		}
	} else {
		for d.err == nil && d.i < len(d.b) {
			if out = d.entry(out, recvMilli, &st); d.err != nil {
				break
			}
			if st.entries > d.maxEntries {
				return out, st, fmt.Errorf("%w: more than %d", errTooMany, d.maxEntries)
			}
			d.ws()
		}
	}
	return out, st, d.err
}

func (d *ingestDecoder) fail(msg string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at byte %d", errMalformed, msg, d.i)
	}
}

func (d *ingestDecoder) peek() byte {
	if d.i < len(d.b) {
		return d.b[d.i]
	}
	return 0
}

func (d *ingestDecoder) ws() {
	if d.i < len(d.b) && d.b[d.i] > ' ' {
		return // compact JSON, the usual case
	}
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// entry reads one entry and appends its row unless it is rejected.
func (d *ingestDecoder) entry(out []row, recvMilli int64, st *decodeStats) []row {
	st.entries++
	mark := len(d.arena)
	d.str = [numStrFields]span{}
	d.num = [numNumFields]float64{}
	d.have, d.bad, d.known = 0, "", false
	clear(d.custom)
	if d.peek() != '{' {
		d.skip()
		if d.err == nil {
			st.rejected[0]++
		}
		return out
	}
	d.object(objEntry)
	if d.err != nil {
		return out
	}
	if d.bad == "" && !d.known {
		d.bad = rejectInvalid
	}
	if d.have&(1<<nStatus) != 0 && (d.num[nStatus] < 0 || d.num[nStatus] > 999) {
		d.bad = rejectInvalid
	}
	if d.bad != "" {
		d.arena = d.arena[:mark] // nothing of a rejected entry is kept
	}
	switch d.bad {
	case rejectInvalid:
		st.rejected[0]++
		return out
	case rejectFieldTooLarge:
		st.rejected[1]++
		return out
	}
	return append(out, d.row(recvMilli, st))
}

// row builds the entry's row but for its strings, which finish sets once
// the batch is read; their spans are kept meanwhile.
func (d *ingestDecoder) row(recvMilli int64, st *decodeStats) row {
	d.spans = append(d.spans, d.str)
	r := row{source: sourceLog, tsMilli: recvMilli}
	if d.has(nTimeMs) && d.num[nTimeMs] > 0 && d.num[nTimeMs] < 1e15 {
		r.tsMilli = int64(d.num[nTimeMs])
	}
	if c := d.str[fConsumer]; c.end == c.off {
		if s := d.str[fSealed]; s.end > s.off {
			if id, ok := core.OpenConsumer(string(d.arena[s.off:s.end])); ok {
				r.consumer = bound(id, d.maxValue)
				st.sealedOK++
			} else {
				st.sealedNo++
			}
		}
	}
	r.status = uint16(d.num[nStatus])
	r.latencyMs = toU32(d.num[nLatencyMs])
	r.upstreamMs = toU32(d.num[nUpstreamMs])
	if d.has(nApisixMs) {
		r.apisixMs = toU32(d.num[nApisixMs])
	} else if d.num[nLatencyMs] > d.num[nUpstreamMs] {
		r.apisixMs = toU32(d.num[nLatencyMs] - d.num[nUpstreamMs])
	}
	r.bytesSent, r.requestLen = toU64(d.num[nBytesSent]), toU64(d.num[nRequestLen])
	for _, n := range [...]struct {
		f   int
		bit uint8
		dst *int64
	}{{nRLLimit, haveRLLimit, &r.rlLimit}, {nRLRemaining, haveRLRemaining, &r.rlRemaining}, {nRetryAfter, haveRetryAfter, &r.retryAfter}} {
		if d.has(n.f) {
			*n.dst = int64(math.Max(math.Min(d.num[n.f], 1<<62), -(1 << 62)))
			r.rlHave |= n.bit
		}
	}
	if len(d.custom) > 0 {
		r.customNames = d.customCols
		r.customValues = make([]string, len(d.custom))
		d.cspans = append(d.cspans, d.custom...)
	}
	return r
}

func (d *ingestDecoder) has(n int) bool { return d.have&(1<<n) != 0 }

func toU32(f float64) uint32 {
	if !(f > 0) {
		return 0
	}
	if f >= math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(f + 0.5)
}

func toU64(f float64) uint64 {
	if !(f > 0) {
		return 0
	}
	if f >= 1<<63 {
		return 1 << 63
	}
	return uint64(f)
}

// The objects of an entry, each with its own members.
const (
	objEntry       = iota // the entry itself
	objRequest            // its request
	objResponse           // its response
	objReqHeaders         // the request's headers
	objRespHeaders        // the response's headers
)

// object reads an object of kind obj, handing each key to member with the
// position at its value. The cursor stays in locals between the members.
func (d *ingestDecoder) object(obj int) {
	b := d.b
	i := skipWS(b, d.i+1) // past '{'
	if i < len(b) && b[i] == '}' {
		d.i = i + 1
		return
	}
	for {
		if i >= len(b) || b[i] != '"' {
			d.i = i
			d.fail("expected a key")
			return
		}
		var key []byte
		if j, esc := quoteEnd(b[i+1:]); j >= 0 && !esc {
			key = b[i+1 : i+1+j] // the usual key: no escape
			i += j + 2
		} else {
			d.i = i
			if key = d.str1(true); d.err != nil {
				return
			}
			i = d.i
		}
		if len(key) > d.maxField {
			d.bad = rejectFieldTooLarge
		}
		i = skipWS(b, i)
		if i >= len(b) || b[i] != ':' {
			d.i = i
			d.fail("expected ':'")
			return
		}
		d.i = skipWS(b, i+1)
		d.member(obj, key)
		if d.err != nil {
			return
		}
		i = skipWS(b, d.i)
		switch {
		case i < len(b) && b[i] == ',':
			i = skipWS(b, i+1)
		case i < len(b) && b[i] == '}':
			d.i = i + 1
			return
		default:
			d.i = i
			d.fail("expected ',' or '}'")
			return
		}
	}
}

// member reads the value of key, a member of an object of kind obj.
func (d *ingestDecoder) member(obj int, key []byte) {
	switch obj {
	case objEntry:
		d.topKey(key)
	case objRequest:
		d.requestKey(key)
	case objResponse:
		d.responseKey(key)
	case objReqHeaders:
		d.header(key, &d.reqHdr)
	case objRespHeaders:
		d.header(key, &d.respHdr)
	}
}

// skipWS returns the index of the first byte from i on that is not JSON
// whitespace.
func skipWS(b []byte, i int) int {
	for i < len(b) && b[i] <= ' ' {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// topKey handles one member of an entry.
func (d *ingestDecoder) topKey(key []byte) {
	switch string(key) {
	case "request":
		if d.peek() == '{' {
			d.known = true
			d.object(objRequest)
			return
		}
	case "response":
		if d.peek() == '{' {
			d.known = true
			d.object(objResponse)
			return
		}
	}
	t, ok := topTarget(key)
	ci, custom := -1, false
	if len(d.entryKeys) > 0 {
		ci, custom = d.entryKeys[string(key)]
	}
	if !ok && !custom {
		d.skip()
		return
	}
	d.known = d.known || ok
	v, isStr := d.scalar()
	if d.err != nil || v == nil {
		return
	}
	if custom {
		d.custom[ci] = d.keep(v)
	}
	d.apply(t, v, isStr)
}

// apply stores value v for target t.
func (d *ingestDecoder) apply(t target, v []byte, isStr bool) {
	if t.str > 0 {
		d.str[t.str-1] = d.keep(v)
	}
	if t.num > 0 {
		n := int(t.num - 1)
		f, ok := parseNumber(v, t.scale)
		if !ok {
			if n == nStatus && len(v) > 0 {
				d.bad = rejectInvalid
			}
			return
		}
		d.num[n] = f
		d.have |= 1 << n
	}
}

func (d *ingestDecoder) requestKey(key []byte) {
	switch string(key) {
	case "headers":
		if d.peek() == '{' {
			d.object(objReqHeaders)
			return
		}
	case "method":
		d.scalarTo(target{str: fMethod + 1})
		return
	case "uri":
		if v, _ := d.scalar(); v != nil {
			if q := bytes.IndexByte(v, '?'); q >= 0 {
				v = v[:q]
			}
			d.str[fPath] = d.keep(v)
		}
		return
	case "size":
		d.scalarTo(target{num: nRequestLen + 1, scale: asInt})
		return
	}
	d.skip()
}

func (d *ingestDecoder) responseKey(key []byte) {
	switch string(key) {
	case "headers":
		if d.peek() == '{' {
			d.object(objRespHeaders)
			return
		}
	case "status":
		d.scalarTo(target{num: nStatus + 1, scale: asInt})
		return
	case "size":
		d.scalarTo(target{num: nBytesSent + 1, scale: asInt})
		return
	}
	d.skip()
}

func (d *ingestDecoder) scalarTo(t target) {
	v, isStr := d.scalar()
	if d.err == nil && v != nil {
		d.apply(t, v, isStr)
	}
}

// header handles one header of a default entry's request or response
// headers: only the ones a column needs are read, the others (credentials
// among them) are skipped without being copied anywhere.
func (d *ingestDecoder) header(key []byte, tbl *hdrTable) {
	t, ok := tbl.find(key)
	if !ok {
		d.skip()
		return
	}
	var v []byte
	if d.peek() == '[' {
		v = d.joinedArray() // a repeated header
	} else {
		v, _ = d.scalar()
	}
	if d.err != nil || v == nil {
		return
	}
	if t.custom > 0 {
		d.custom[t.custom-1] = d.keep(v)
	}
	switch b := t.builtin; {
	case b == 0:
	case b == respRLLimit:
		d.apply(target{num: nRLLimit + 1, scale: asInt}, v, true)
	case b == respRLRemaining:
		d.apply(target{num: nRLRemaining + 1, scale: asInt}, v, true)
	case b == respRetryAfter:
		d.apply(target{num: nRetryAfter + 1, scale: asInt}, v, true)
	case int(b-1) == fHost:
		d.str[fHost] = d.keep(stripPort(v))
	default:
		d.str[b-1] = d.keep(v)
	}
}

// stripPort turns a Host header into nginx's $host form (no port).
func stripPort(h []byte) []byte {
	if len(h) > 0 && h[0] == '[' {
		if j := bytes.IndexByte(h, ']'); j > 0 {
			return h[1:j]
		}
		return h
	}
	if j := bytes.LastIndexByte(h, ':'); j >= 0 && bytes.IndexByte(h[:j], ':') < 0 {
		return h[:j]
	}
	return h
}

// joinedArray reads an array of scalars as their values joined by ", ".
// The result lives in d.unes until the next string is read.
func (d *ingestDecoder) joinedArray() []byte {
	d.i++ // '['
	var out []byte
	d.ws()
	if d.peek() == ']' {
		d.i++
		return []byte{}
	}
	first := true
	for d.err == nil {
		v, _ := d.scalar()
		if d.err != nil {
			return nil
		}
		if !first {
			out = append(out, ", "...)
		}
		first = false
		out = append(out, v...)
		d.ws()
		switch d.peek() {
		case ',':
			d.i++
			d.ws()
		case ']':
			d.i++
			return out
		default:
			d.fail("expected ',' or ']'")
		}
	}
	return nil
}

// keep copies v, bounded to max_value_bytes at a UTF-8 boundary, into the
// arena.
func (d *ingestDecoder) keep(v []byte) span {
	if len(v) > d.maxValue {
		v = v[:len(bound(string(v[:d.maxValue+1]), d.maxValue))]
	}
	off := len(d.arena)
	d.arena = append(d.arena, v...)
	return span{int32(off), int32(len(d.arena))}
}

// scalar reads a value: a string (unescaped), a number or true/false (as
// written), null (nil, as if absent). An object or array is skipped and
// reads as nil. The bytes are valid until the next string is read.
func (d *ingestDecoder) scalar() (v []byte, isStr bool) {
	switch c := d.peek(); {
	case c == '"':
		v = d.str1(false)
		if v == nil && d.err == nil {
			v = []byte{}
		}
		return v, true
	case c == '-' || ('0' <= c && c <= '9'):
		start := d.i
		if !d.number() {
			d.fail("invalid number")
			return nil, false
		}
		if d.i-start > d.maxField {
			d.bad = rejectFieldTooLarge
		}
		return d.b[start:d.i], false
	case c == 't':
		return d.literal("true"), false
	case c == 'f':
		return d.literal("false"), false
	case c == 'n':
		d.literal("null")
		return nil, false
	default:
		d.skip()
		return nil, false
	}
}

// number passes over a JSON number: -? (0 | [1-9][0-9]*) (.[0-9]+)?
// ([eE][+-]?[0-9]+)?, the longest match, as encoding/json reads it (so
// "00" is two values). It reports false when no number starts here.
func (d *ingestDecoder) number() bool {
	b := d.b
	i := d.i
	digits := func() int {
		n := 0
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	d.i = i
	return true
}

func (d *ingestDecoder) literal(lit string) []byte {
	if !bytes.HasPrefix(d.b[d.i:], []byte(lit)) {
		d.fail("invalid literal")
		return nil
	}
	v := d.b[d.i : d.i+len(lit)]
	d.i += len(lit)
	return v
}

// skip passes over one value of any kind without copying it.
func (d *ingestDecoder) skip() {
	if d.err == nil && d.i < len(d.b) && d.b[d.i] == '"' {
		d.skipString() // the usual case: a header's value
		return
	}
	var stack uint64 // bit set: inside an object
	depth := 0
	for d.err == nil {
		d.ws()
		if d.i >= len(d.b) {
			d.fail("unexpected end")
			return
		}
		switch c := d.b[d.i]; c {
		case '"':
			d.skipString()
		case '{', '[':
			if depth >= maxJSONDepth {
				d.fail(errTooDeepMsg)
				return
			}
			stack = stack<<1 | b2u(c == '{')
			depth++
			d.i++
			continue
		case '}', ']':
			if depth == 0 || (stack&1 == 1) != (c == '}') {
				d.fail("unbalanced " + string(c))
				return
			}
			stack >>= 1
			depth--
			d.i++
		case ',', ':':
			if depth == 0 {
				d.fail("unexpected " + string(c))
				return
			}
			d.i++
			continue
		default:
			if c == 't' || c == 'f' || c == 'n' || c == '-' || ('0' <= c && c <= '9') {
				d.scalar()
			} else {
				d.fail("unexpected character")
				return
			}
		}
		if depth == 0 {
			return
		}
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// skipString passes over a string, checking only its length.
func (d *ingestDecoder) skipString() {
	start := d.i
	d.i++
	if j, esc := quoteEnd(d.b[d.i:]); j >= 0 && !esc {
		d.i += j + 1 // no escape
		if d.i-start-2 > d.maxField {
			d.bad = rejectFieldTooLarge
		}
		return
	}
	for {
		j := bytes.IndexByte(d.b[d.i:], '"')
		if j < 0 {
			d.i = len(d.b)
			d.fail("unterminated string")
			return
		}
		d.i += j
		// an escaped quote has an odd number of backslashes before it
		k := d.i - 1
		for k > start && d.b[k] == '\\' {
			k--
		}
		d.i++
		if (d.i-2-k)%2 == 0 {
			break
		}
	}
	if d.i-start-2 > d.maxField {
		d.bad = rejectFieldTooLarge
	}
}

// str1 reads a string and returns its content: a slice of the body when it
// has no escape, else its unescaped form in d.unes. isKey bounds it like a
// value (max_field_bytes) all the same.
func (d *ingestDecoder) str1(isKey bool) []byte {
	start := d.i + 1
	j, esc := quoteEnd(d.b[start:])
	if j < 0 {
		d.i = len(d.b)
		d.fail("unterminated string")
		return nil
	}
	raw := d.b[start : start+j]
	if !esc {
		d.i = start + j + 1
		if len(raw) > d.maxField {
			d.bad = rejectFieldTooLarge
		}
		return raw
	}
	// slow path: escapes
	out := d.unes[:0]
	i := start
	for {
		if i >= len(d.b) {
			d.i = i
			d.fail("unterminated string")
			return nil
		}
		c := d.b[i]
		if c == '"' {
			i++
			break
		}
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(d.b) {
			d.i = i
			d.fail("unterminated string")
			return nil
		}
		e := d.b[i+1]
		i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(d.b, i)
			if !ok {
				d.i = i
				d.fail("invalid \\u escape")
				return nil
			}
			i += 4
			if utf16.IsSurrogate(r) {
				r2, ok2 := rune(-1), false
				if i+6 <= len(d.b) && d.b[i] == '\\' && d.b[i+1] == 'u' {
					r2, ok2 = hex4(d.b, i+2)
				}
				if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			d.i = i
			d.fail("invalid escape")
			return nil
		}
	}
	d.i = i
	d.unes = out
	if len(out) > d.maxField {
		d.bad = rejectFieldTooLarge
	}
	_ = isKey
	return out
}

// quoteEnd returns the index of the first '"' in b and whether a '\\'
// comes before it, -1 when there is no quote. The first 64 bytes (keys,
// most values) are read eight at a time in a word: x ^ quote has a zero
// byte where x has a '"', and (v - lows) &^ v & highs sets the high bit of
// the first zero byte of v (the bits above it may be wrong, the lowest one
// never is). Past them the rest goes to bytes.IndexByte, which is
// vectorized but costs a call.
func quoteEnd(b []byte) (int, bool) {
	i := 0
	for n := min(len(b), 64); i+8 <= n; i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		q, s := x^quote, x^bslsh
		if m := ((q-lows)&^q | (s-lows)&^s) & highs; m != 0 {
			j := i + bits.TrailingZeros64(m)/8
			if b[j] == '"' {
				return j, false
			}
			if k := bytes.IndexByte(b[j:], '"'); k >= 0 {
				return j + k, true
			}
			return -1, false
		}
	}
	k := bytes.IndexByte(b[i:], '"')
	if k < 0 {
		return -1, false
	}
	return i + k, bytes.IndexByte(b[i:i+k], '\\') >= 0
}

// Words of eight bytes, for quoteEnd.
const (
	lows  = 0x0101010101010101
	highs = 0x8080808080808080
	quote = lows * '"'
	bslsh = lows * '\\'
)

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// parseNumber reads v (a JSON number or a string holding one) in the given
// scale, as milliseconds for the time scales.
func parseNumber(v []byte, scale uint8) (float64, bool) {
	if scale == asSecondsN {
		// "0.001", "0.001, 0.002 : 0.003", "-" (no upstream)
		var sum float64
		any := false
		for len(v) > 0 {
			j := bytes.IndexAny(v, ",:")
			part := v
			if j >= 0 {
				part, v = v[:j], v[j+1:]
			} else {
				v = nil
			}
			part = bytes.TrimSpace(part)
			if f, ok := parseDecimal(part); ok && f >= 0 {
				sum += f
				any = true
			}
		}
		return sum * 1000, any
	}
	f, ok := parseDecimal(bytes.TrimSpace(v))
	if !ok {
		return 0, false
	}
	switch scale {
	case asInt:
		return math.Trunc(f), true
	case asSeconds:
		return f * 1000, true
	}
	return f, true
}

// parseDecimal parses a decimal number without allocating in the common
// case (digits, an optional fraction); exponents go through strconv.
func parseDecimal(v []byte) (float64, bool) {
	if len(v) == 0 || len(v) > 64 {
		return 0, false
	}
	neg := v[0] == '-'
	i := 0
	if neg {
		i = 1
	}
	var mant uint64
	digits, scale := 0, 0
	sawDot := false
	for ; i < len(v); i++ {
		c := v[i]
		switch {
		case '0' <= c && c <= '9':
			if digits < 18 {
				mant = mant*10 + uint64(c-'0')
				digits++
				if sawDot {
					scale++
				}
			} else if !sawDot {
				return slowFloat(v)
			}
		case c == '.' && !sawDot:
			sawDot = true
		default:
			return slowFloat(v)
		}
	}
	if digits == 0 {
		return 0, false
	}
	f := float64(mant) / pow10[scale]
	if neg {
		f = -f
	}
	return f, true
}

var pow10 = func() (p [19]float64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return
}()

func slowFloat(v []byte) (float64, bool) {
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}
