package server

import (
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"reflect"
	"slices"
	"testing"

	"github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	flatbuffers "github.com/google/flatbuffers/go"
)

// eagerHeader is the header as it was before it read the frame lazily: the
// map of every header built first, every operation on it. The lazy header
// must behave exactly like it.
type eagerHeader struct {
	h       http.Header
	changed []string
}

func (h *eagerHeader) mark(k string) {
	for _, n := range h.changed {
		if n == k {
			return
		}
	}
	h.changed = append(h.changed, k)
}

func (h *eagerHeader) Set(key, value string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	h.h[k] = []string{value}
	h.mark(k)
}

func (h *eagerHeader) Del(key string) {
	k := textproto.CanonicalMIMEHeaderKey(key)
	if _, ok := h.h[k]; !ok {
		return
	}
	delete(h.h, k)
	h.mark(k)
}

// answer is what a Rewrite carries for the changed headers: name and
// value, or name alone (a deletion).
func (h *eagerHeader) answer() [][2]string {
	var out [][2]string
	for _, k := range h.changed {
		if v, ok := h.h[k]; ok && len(v) > 0 {
			out = append(out, [2]string{k, v[0]})
		} else {
			out = append(out, [2]string{k, "<deleted>"})
		}
	}
	return out
}

// lazyAnswer is the lazy header's answer, in the eager one's order (an
// answer's order does not matter: each name is there once).
func lazyAnswer(h *header, eager [][2]string) [][2]string {
	h.settle()
	var out [][2]string
	for i := range h.changed {
		c := &h.changed[i]
		if v, ok := h.current(c); ok {
			out = append(out, [2]string{c.name, v})
		} else {
			out = append(out, [2]string{c.name, "<deleted>"})
		}
	}
	pos := func(name string) int {
		for i, e := range eager {
			if e[0] == name {
				return i
			}
		}
		return len(eager)
	}
	slices.SortStableFunc(out, func(a, b [2]string) int { return pos(a[0]) - pos(b[0]) })
	return out
}

// headerNames mixes the names APISIX sends (lower case), other cases,
// names textproto leaves alone (a space, an underscore is fine, non-ASCII,
// empty) and near misses of the same length.
var headerNames = []string{"authorization", "Authorization", "AUTHORIZATION", "x-edge-consumer", "X-Edge-Consumer",
	"x-user-id", "X-USER-ID", "x-user-ie", "host", "cookie", "Cookie", "x_tenant", "X_Tenant", "a b", "A b", "",
	"\u212aey", "key", "Key", "x-a", "x-A", "x-\x80", "content-type", "x-edge-consumes"}

func TestLazyHeaderMatchesEager(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 3000; round++ {
		var pairs []string
		for i := rng.IntN(8); i > 0; i-- {
			pairs = append(pairs, headerNames[rng.IntN(len(headerNames))], string(rune('a'+rng.IntN(26))))
		}
		var r request
		r.init(nil, encodeReqCall(1, pairs...))
		eager := &eagerHeader{h: http.Header{}}
		parseEntries(entryVector{r.r.HeadersLength(), r.r.Headers}, eager.h, true)
		lazy := &r.hdr
		lazy.whole = round%2 == 1 // as a response's
		var log []string
		for op := rng.IntN(10); op > 0; op-- {
			key := headerNames[rng.IntN(len(headerNames))]
			val := string(rune('A' + rng.IntN(26)))
			switch rng.IntN(7) {
			case 0, 1:
				log = append(log, "set "+key)
				eager.Set(key, val)
				lazy.Set(key, val)
			case 2, 3:
				log = append(log, "del "+key)
				eager.Del(key)
				lazy.Del(key)
			case 4:
				log = append(log, "values "+key)
				if got, want := lazy.Values(key), eager.h.Values(key); !reflect.DeepEqual(got, want) {
					t.Fatalf("headers %q, ops %q: Values(%q) = %q, want %q", pairs, log, key, got, want)
				}
			case 5:
				log = append(log, "view")
				if got := lazy.View(); !reflect.DeepEqual(got, eager.h) {
					t.Fatalf("headers %q, ops %q: View() = %q, want %q", pairs, log, got, eager.h)
				}
				if rng.IntN(2) == 0 {
					// a change through the map is seen, not sent
					log = append(log, "view set "+key)
					eager.h[textproto.CanonicalMIMEHeaderKey(key)] = []string{val}
					lazy.View()[textproto.CanonicalMIMEHeaderKey(key)] = []string{val}
				}
			}
			log = append(log, "get "+key)
			if got, want := lazy.Get(key), eager.h.Get(key); got != want {
				t.Fatalf("headers %q, ops %q: Get(%q) = %q, want %q", pairs, log, key, got, want)
			}
			_, present := eager.h[textproto.CanonicalMIMEHeaderKey(key)]
			if got, ok := lazy.PeekHeader(key); string(got) != eager.h.Get(key) || ok != present {
				t.Fatalf("headers %q, ops %q: PeekHeader(%q) = %q, %v, want %q, %v", pairs, log, key, got, ok, eager.h.Get(key), present)
			}
		}
		if got, want := lazyAnswer(lazy, eager.answer()), eager.answer(); !reflect.DeepEqual(got, want) {
			t.Fatalf("headers %q, ops %q: answer %q, want %q", pairs, log, got, want)
		}
		if got := lazy.View(); !reflect.DeepEqual(got, eager.h) {
			t.Fatalf("headers %q, ops %q: final View() = %q, want %q", pairs, log, got, eager.h)
		}
		r.end()
	}
}

// TestRewriteHeadersOfLazyHeader checks the Rewrite answer a chain of
// header changes makes, and that a later plugin sees them.
func TestRewriteHeadersOfLazyHeader(t *testing.T) {
	var r request
	r.init(nil, encodeReqCall(1, "x-edge-consumer", "mallory", "x-user-id", "spoof", "authorization", "Bearer t", "accept", "*/*"))
	h := r.Header()
	if got := h.Get("Authorization"); got != "Bearer t" {
		t.Fatalf("Get(Authorization) = %q", got)
	}
	h.Del("X-Edge-Consumer")
	h.Del("X-User-ID")
	h.Del("X-Tenant-ID") // absent: no change
	h.Set("x-edge-consumer", "alice")
	if got := h.Get("X-EDGE-CONSUMER"); got != "alice" {
		t.Errorf("Get after Set = %q, want alice", got)
	}
	if got := h.Get("X-User-Id"); got != "" {
		t.Errorf("Get after Del = %q, want empty", got)
	}
	if !r.changed() {
		t.Fatal("request not changed")
	}
	b := flatbuffers.NewBuilder(256)
	b.Finish(r.rewrite(b))
	rw := hrc.GetRootAsRewrite(b.FinishedBytes(), 0)
	got := map[string]string{}
	for i := 0; i < rw.HeadersLength(); i++ {
		var e A6.TextEntry
		rw.Headers(&e, i)
		v := "<deleted>"
		if e.Value() != nil {
			v = string(e.Value())
		}
		got[string(e.Name())] = v
	}
	want := map[string]string{"X-Edge-Consumer": "alice", "X-User-Id": "<deleted>"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rewrite headers %q, want %q", got, want)
	}
	r.end()
}

// TestAnswerListsStartEmpty: the entry lists kept between calls carry
// nothing from one answer into the next, even when a call ended before
// its list was built.
func TestAnswerListsStartEmpty(t *testing.T) {
	var r request
	headersOf := func() map[string]string {
		b := flatbuffers.NewBuilder(256)
		b.Finish(r.rewrite(b))
		rw := hrc.GetRootAsRewrite(b.FinishedBytes(), 0)
		got := map[string]string{}
		for i := 0; i < rw.HeadersLength(); i++ {
			var e A6.TextEntry
			rw.Headers(&e, i)
			got[string(e.Name())] = string(e.Value())
		}
		return got
	}
	r.init(nil, encodeReqCall(1, "a", "1"))
	r.Header().Set("X-One", "1")
	r.RespHeader().Set("X-Resp", "1")
	if got := headersOf(); !reflect.DeepEqual(got, map[string]string{"X-One": "1"}) {
		t.Fatalf("first answer: %q", got)
	}
	r.end()
	r.init(nil, encodeReqCall(1, "a", "1"))
	r.ans.add("X-Left-Over", "1") // as a call cut short would leave it
	r.end()
	r.init(nil, encodeReqCall(1, "a", "1"))
	r.Header().Set("X-Two", "2")
	if got := headersOf(); !reflect.DeepEqual(got, map[string]string{"X-Two": "2"}) {
		t.Fatalf("third answer: %q", got)
	}
	r.end()
}

// TestDeletingAbsentHeadersIsNoChange: a request whose plugins only
// deleted headers it never had is answered without a Rewrite, as before
// the deletions were recorded unread.
func TestDeletingAbsentHeadersIsNoChange(t *testing.T) {
	var r request
	r.init(nil, encodeReqCall(1, "accept", "*/*", "x-user-id", "spoof"))
	h := r.Header()
	h.Del("X-Edge-Consumer")
	h.Del("X-Tenant-Id")
	if got := h.Get("x-edge-consumer"); got != "" {
		t.Errorf("Get after Del = %q", got)
	}
	if r.changed() {
		t.Fatalf("changed after deleting absent headers: %+v", r.hdr.changed)
	}
	h.Del("X-User-Id")
	if !r.changed() || len(r.hdr.changed) != 1 || r.hdr.changed[0].name != "X-User-Id" {
		t.Fatalf("changes after deleting a present header: %+v", r.hdr.changed)
	}
	r.end()
}
