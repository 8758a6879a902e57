package server

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	hresp "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	"github.com/apisix-edge/edge-runner/core"
	flatbuffers "github.com/google/flatbuffers/go"
)

// maxEntries bounds the headers or args read from one call. APISIX sends at
// most 100 headers; a frame announcing more is read up to this bound only,
// so a crafted vector length cannot make the runner allocate without limit.
const maxEntries = 1024

// headerSource is the header vector of the call's frame: a request's or a
// response's (concrete types, so that reading an entry allocates nothing).
type headerSource struct {
	req  *hrc.Req
	resp *hresp.Req
}

func (s headerSource) len() int {
	switch {
	case s.req != nil:
		return min(s.req.HeadersLength(), maxEntries)
	case s.resp != nil:
		return min(s.resp.HeadersLength(), maxEntries)
	}
	return 0
}

func (s headerSource) at(e *A6.TextEntry, i int) bool {
	switch {
	case s.req != nil:
		return s.req.Headers(e, i)
	case s.resp != nil:
		return s.resp.Headers(e, i)
	}
	return false
}

var _ core.HeaderPeeker = (*header)(nil)

// header is the pkg/http Header of a request or a response. Until a plugin
// asks for View, it reads the headers from the frame itself and keeps the
// plugins' changes in a short list beside them: Get, Set and Del never
// build the map of every header. View builds it once, with the changes
// applied, and from then on the map is the headers. The changes are what
// an answer carries (APISIX applies each: a name without a value deletes).
type header struct {
	src     headerSource // the frame's headers, read while h is nil
	h       http.Header  // every header, built by View
	changed []headerChange
	// whole: an answer carries every header once one changed (a
	// response), so the first change builds the map, within the plugin
	// that makes it (a malformed frame then panics where it did before).
	whole bool
}

// headerChange is a header a plugin set or deleted: its canonical name, in
// the order of the first change, each name once. While the map is not
// built, value and del hold the header's state; after, the map does.
//
// A deletion is unsure until the frame was read for the name: deleting a
// header the request never had is no change (APISIX must not be sent it),
// but the frame is read only when that matters (settle), so that a Del
// followed by a Set of the same name, as jwtcache's hygiene does, reads
// nothing.
type headerChange struct {
	name   string
	value  string
	del    bool
	unsure bool
}

func (h *header) change(name string) *headerChange {
	for i := range h.changed {
		if h.changed[i].name == name {
			return &h.changed[i]
		}
	}
	return nil
}

func (h *header) mark(name string) *headerChange {
	if c := h.change(name); c != nil {
		return c
	}
	h.changed = append(h.changed, headerChange{name: name})
	return &h.changed[len(h.changed)-1]
}

func (h *header) Set(key, value string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	if h.whole {
		h.View()
	}
	if h.h != nil {
		h.h[k] = []string{value}
		h.mark(k)
		return
	}
	c := h.mark(k)
	c.value, c.del, c.unsure = value, false, false
}

func (h *header) Del(key string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	if h.whole {
		h.View()
	}
	if h.h != nil {
		if _, ok := h.h[k]; !ok {
			return
		}
		delete(h.h, k)
		h.mark(k)
		return
	}
	if c := h.change(k); c != nil {
		if !c.del {
			c.value, c.del = "", true
		}
		return
	}
	h.changed = append(h.changed, headerChange{name: k, del: true, unsure: true})
}

// settle drops the unsure deletions of headers the frame does not hold:
// afterwards the changes are the ones an answer carries.
func (h *header) settle() {
	h.settleBy(func(name string) bool {
		_, ok := h.raw(name)
		return ok
	})
}

// settleBy drops the unsure deletions of the headers present says the
// request does not hold, and makes the others sure.
func (h *header) settleBy(present func(name string) bool) {
	kept := h.changed[:0]
	for _, c := range h.changed {
		if c.unsure {
			if !present(c.name) {
				continue // never there: no change
			}
			c.unsure = false
		}
		kept = append(kept, c)
	}
	clear(h.changed[len(kept):])
	h.changed = kept
}

func (h *header) Get(key string) string {
	if h.h != nil {
		return h.h.Get(key)
	}
	k := textproto.CanonicalMIMEHeaderKey(key)
	if c := h.change(k); c != nil {
		return c.value
	}
	if v, ok := h.raw(k); ok {
		return string(v)
	}
	return ""
}

// PeekHeader implements core.HeaderPeeker: the first value of key without
// a copy while the value is the frame's (a value a plugin set, or any once
// View built the map, is copied).
func (h *header) PeekHeader(key string) ([]byte, bool) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	if h.h != nil {
		if vs := h.h[k]; len(vs) > 0 {
			return []byte(vs[0]), true
		}
		return nil, false
	}
	if c := h.change(k); c != nil {
		if c.del {
			return nil, false
		}
		return []byte(c.value), true
	}
	return h.raw(k)
}

// Values returns every value of key, as http.Header.Values does.
func (h *header) Values(key string) []string {
	if h.h != nil {
		return h.h.Values(key)
	}
	k := textproto.CanonicalMIMEHeaderKey(key)
	if c := h.change(k); c != nil {
		if c.del {
			return nil
		}
		return []string{c.value}
	}
	var out []string
	h.each(k, func(v []byte) bool {
		out = append(out, string(v))
		return true
	})
	return out
}

// View returns every header as a map, built on the first call with the
// changes made so far. Changes made through the map itself are not sent,
// but Get, Set and Del see them.
func (h *header) View() http.Header {
	if h.h == nil {
		n := h.src.len()
		h.h = make(http.Header, n)
		if n > 0 {
			parseEntries(entryVector{n, h.src.at}, h.h, true)
		}
		// The map holds the frame's headers: it answers for them.
		h.settleBy(func(name string) bool {
			_, ok := h.h[name]
			return ok
		})
		for _, c := range h.changed {
			if c.del {
				delete(h.h, c.name)
			} else {
				h.h[c.name] = []string{c.value}
			}
		}
	}
	return h.h
}

// current returns the value an answer sends for a changed header, and
// false when the header is deleted.
func (h *header) current(c *headerChange) (string, bool) {
	if h.h != nil {
		if v, ok := h.h[c.name]; ok && len(v) > 0 {
			return v[0], true
		}
		return "", false
	}
	return c.value, !c.del
}

func (h *header) reset() {
	h.src, h.whole = headerSource{}, false
	h.h = nil
	clear(h.changed)
	h.changed = h.changed[:0]
}

// raw returns the first value the frame holds for the canonical name k.
// The slice is the frame's: valid during the call only.
func (h *header) raw(k string) (v []byte, ok bool) {
	h.each(k, func(b []byte) bool {
		v, ok = b, true
		return false
	})
	return v, ok
}

// each calls fn with each value of the frame's headers (at most
// maxEntries read, as View reads them) whose name canonicalizes to k,
// in order, until fn returns false.
func (h *header) each(k string, fn func([]byte) bool) {
	valid := validHeaderKey(k)
	var e A6.TextEntry
	n := h.src.len()
	for i := 0; i < n; i++ {
		if !h.src.at(&e, i) {
			continue
		}
		if sameHeaderKey(e.Name(), k, valid) && !fn(e.Value()) {
			return
		}
	}
}

// sameHeaderKey reports whether name, as sent, canonicalizes to k, a
// canonical key (textproto.CanonicalMIMEHeaderKey), without allocating.
// A k of token characters only (valid) is matched by the names equal to
// it but for ASCII case; any other k was left as it was by the
// canonicalization, and only the same bytes match it.
func sameHeaderKey(name []byte, k string, valid bool) bool {
	if !valid {
		return string(name) == k
	}
	return core.EqualFoldASCII(name, k)
}

// validHeaderKey reports whether every byte of k is an RFC 7230 token
// character, the keys textproto canonicalizes.
func validHeaderKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if !tchar[k[i]] {
			return false
		}
	}
	return true
}

var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

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

// entryList collects the name/value pairs of one answer vector and builds
// it. A request, a response and a Stop each keep theirs from call to call,
// so that an answer allocates nothing; build empties it.
type entryList struct {
	entries []answerEntry
	offs    []flatbuffers.UOffsetT
}

// answerEntry is a name and its value, or a name alone (APISIX deletes the
// header).
type answerEntry struct {
	name, value string
	hasValue    bool
}

// maxKeptEntries bounds the entries an entryList keeps room for between
// calls; an answer with more (a plugin that set many headers) allocates.
const maxKeptEntries = 128

func (l *entryList) add(name, value string) {
	l.entries = append(l.entries, answerEntry{name: name, value: value, hasValue: true})
}

func (l *entryList) del(name string) {
	l.entries = append(l.entries, answerEntry{name: name})
}

// build writes the collected pairs as a vector of TextEntry tables, with
// start as the generated Start*Vector function, and empties the list.
func (l *entryList) build(b *flatbuffers.Builder, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	l.offs = l.offs[:0]
	for i := range l.entries {
		e := &l.entries[i]
		name := b.CreateString(e.name)
		var val flatbuffers.UOffsetT
		if e.hasValue {
			val = b.CreateString(e.value)
		}
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		if e.hasValue {
			A6.TextEntryAddValue(b, val)
		}
		l.offs = append(l.offs, A6.TextEntryEnd(b))
	}
	start(b, len(l.offs))
	for i := len(l.offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(l.offs[i])
	}
	vec := b.EndVector(len(l.offs))
	l.reset()
	return vec
}

// reset empties the list, keeping room for the next answer unless it grew
// past maxKeptEntries.
func (l *entryList) reset() {
	if cap(l.entries) > maxKeptEntries {
		l.entries, l.offs = nil, nil
		return
	}
	clear(l.entries) // the strings are the call's
	l.entries, l.offs = l.entries[:0], l.offs[:0]
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
