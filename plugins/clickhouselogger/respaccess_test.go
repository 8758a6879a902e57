package clickhouselogger

import (
	"strings"
	"testing"

	"github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	flatbuffers "github.com/google/flatbuffers/go"
)

// respCall encodes an HTTPRespCall as APISIX sends it.
func respCall(status uint16, headers [][2]string) *hrc.Req {
	b := flatbuffers.NewBuilder(256)
	var entries []flatbuffers.UOffsetT
	for _, h := range headers {
		name, value := b.CreateString(h[0]), b.CreateString(h[1])
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		A6.TextEntryAddValue(b, value)
		entries = append(entries, A6.TextEntryEnd(b))
	}
	hrc.ReqStartHeadersVector(b, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		b.PrependUOffsetT(entries[i])
	}
	vec := b.EndVector(len(entries))
	hrc.ReqStart(b)
	hrc.ReqAddId(b, 7)
	hrc.ReqAddStatus(b, status)
	hrc.ReqAddHeaders(b, vec)
	hrc.ReqAddConfToken(b, 1)
	b.Finish(hrc.ReqEnd(b))
	return hrc.GetRootAsReq(b.FinishedBytes(), 0)
}

// visitor reads a raw HTTPRespCall as the runner's server does.
type visitor struct{ r *hrc.Req }

func (v *visitor) VisitHeaders(fn func(name, value []byte)) {
	var e A6.TextEntry
	for i := 0; i < v.r.HeadersLength(); i++ {
		if v.r.Headers(&e, i) {
			fn(e.Name(), e.Value())
		}
	}
}

// notVisitor is a response of another runner: it has headers, but no
// read-only accessor.
type notVisitor struct{ r *hrc.Req }

func TestRespHeaderValues(t *testing.T) {
	raw := respCall(201, [][2]string{
		{"Content-Type", "application/json"},
		{"X-Upstream-Id", "u-1"},
		{"set-cookie", "a=1"},
		{"Set-Cookie", "b=2"},
		{"X-Long", strings.Repeat("v", 100)},
	})
	names := []string{"content-type", "set-cookie", "x-long", "x-absent"}
	tests := []struct {
		name   string
		w      any
		want   []string
		wantOK bool
	}{
		{"the runner's response", &visitor{r: raw}, []string{"application/json", "a=1, b=2", strings.Repeat("v", 32), ""}, true},
		{"another runner's response: nothing read", &notVisitor{r: raw}, []string{"", "", "", ""}, false},
		{"nil", nil, []string{"", "", "", ""}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := respHeaderValues(tt.w, names, 32)
			if ok != tt.wantOK || strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("got %q ok=%v, want %q ok=%v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestRespHeaderValuesCorruptBuffer: a flatbuffer whose offsets point out of
// range makes the generated accessors panic; the row is kept without the
// headers.
func TestRespHeaderValuesCorruptBuffer(t *testing.T) {
	good := respCall(200, [][2]string{{"Content-Type", "text/plain"}})
	buf := append([]byte(nil), good.Table().Bytes...)
	for i := 4; i < len(buf); i++ {
		buf[i] = 0xff
	}
	bad := hrc.GetRootAsReq(buf, 0)
	got, ok := respHeaderValues(&visitor{r: bad}, []string{"content-type"}, 64)
	if ok || got[0] != "" {
		t.Errorf("got %q ok=%v, want no values and ok=false", got, ok)
	}
}

func BenchmarkRespHeaderValues(b *testing.B) {
	raw := respCall(200, [][2]string{{"Content-Type", "application/json"}, {"X-Upstream-Id", "u-1"}, {"Date", "now"}})
	w := &visitor{r: raw}
	names := []string{"x-upstream-id"}
	b.ReportAllocs()
	for b.Loop() {
		respHeaderValues(w, names, 1024)
	}
}
