package server

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/api7/ext-plugin-proto/go/A6"
	flatbuffers "github.com/google/flatbuffers/go"
)

// maxEntries bounds the headers or args read from one call. APISIX sends at
// most 100 headers; a frame announcing more is read up to this bound only,
// so a crafted vector length cannot make the runner allocate without limit.
const maxEntries = 1024

// header is the pkg/http Header of a request or a response: the map the
// plugins see, and the names they changed, so that an answer carries only
// real changes (APISIX applies each: a name without a value deletes).
type header struct {
	h       http.Header
	changed []string // canonical names set or deleted, in order, unique
}

func (h *header) mark(name string) {
	for _, n := range h.changed {
		if n == name {
			return
		}
	}
	h.changed = append(h.changed, name)
}

func (h *header) Set(key, value string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	h.h[k] = []string{value}
	h.mark(k)
}

func (h *header) Del(key string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	if _, ok := h.h[k]; !ok {
		return
	}
	delete(h.h, k)
	h.mark(k)
}

func (h *header) Get(key string) string { return h.h.Get(key) }

// View returns the map itself: changes made through it are not sent.
func (h *header) View() http.Header { return h.h }

func (h *header) reset() {
	h.h = nil
	h.changed = h.changed[:0]
}

// entryVector is the generated accessor pair of a TextEntry vector.
type entryVector struct {
	n   int
	get func(*A6.TextEntry, int) bool
}

// parseEntries reads at most maxEntries name/value pairs into h, names
// canonicalized if canon (headers; args keep theirs). Every value shares
// one string and every single-value slice one backing array, and common
// header names come from a table, so a call's headers cost a handful of
// allocations instead of three per header.
func parseEntries(v entryVector, h map[string][]string, canon bool) {
	var e A6.TextEntry
	n := min(v.n, maxEntries)
	total := 0
	for i := 0; i < n; i++ {
		if v.get(&e, i) {
			total += len(e.Value())
		}
	}
	var sb strings.Builder
	sb.Grow(total)
	for i := 0; i < n; i++ {
		if v.get(&e, i) {
			sb.Write(e.Value())
		}
	}
	all := sb.String()
	vals := make([]string, n)
	off := 0
	for i := 0; i < n; i++ {
		if !v.get(&e, i) {
			continue
		}
		val := all[off : off+len(e.Value())]
		off += len(val)
		var k string
		if canon {
			k = canonicalKey(e.Name())
		} else {
			k = string(e.Name())
		}
		if old, ok := h[k]; ok {
			h[k] = append(old, val)
			continue
		}
		vals[i] = val
		h[k] = vals[i : i+1 : i+1]
	}
}

// commonHeaders maps the lower-case names APISIX sends to their canonical
// form without allocating.
var commonHeaders = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Connection", "Content-Length", "Content-Type", "Cookie", "Host", "Origin",
		"Referer", "User-Agent", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Port",
		"X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id", "X-Api-Key", "X-Tenant-Id",
		"X-Edge-Consumer", "X-User-Id", "Traceparent", "Access-Control-Request-Method",
		"Access-Control-Request-Headers", "If-None-Match", "If-Modified-Since", "Pragma",
		"Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-Dest", "Upgrade-Insecure-Requests",
	} {
		m[strings.ToLower(k)] = k
		m[k] = k
	}
	return m
}()

func canonicalKey(name []byte) string {
	if k, ok := commonHeaders[string(name)]; ok {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// textEntries builds a vector of TextEntry tables with start as the
// generated Start*Vector function. A nil value is a name alone (APISIX
// deletes the header).
func textEntries(b *flatbuffers.Builder, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT, names, values []string, hasValue []bool) flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(names))
	for i := range names {
		name := b.CreateString(names[i])
		var val flatbuffers.UOffsetT
		if hasValue[i] {
			val = b.CreateString(values[i])
		}
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		if hasValue[i] {
			A6.TextEntryAddValue(b, val)
		}
		offs[i] = A6.TextEntryEnd(b)
	}
	start(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

// entryList collects the name/value pairs of one answer vector.
type entryList struct {
	names, values []string
	hasValue      []bool
}

func (l *entryList) add(name, value string) {
	l.names = append(l.names, name)
	l.values = append(l.values, value)
	l.hasValue = append(l.hasValue, true)
}

func (l *entryList) del(name string) {
	l.names = append(l.names, name)
	l.values = append(l.values, "")
	l.hasValue = append(l.hasValue, false)
}

func (l *entryList) build(b *flatbuffers.Builder, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	return textEntries(b, start, l.names, l.values, l.hasValue)
}

// addHeader adds every value of h, sorted by nothing in particular
// (APISIX applies them as a set).
func (l *entryList) addHeader(h http.Header) {
	for k, vs := range h {
		for _, v := range vs {
			l.add(k, v)
		}
	}
}
