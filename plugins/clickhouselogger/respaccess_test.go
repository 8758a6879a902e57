package clickhouselogger

import (
	"bytes"
	"net"
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

// frameworkShape has the layout of the framework's *http.Response as far as
// the accessor cares: the raw call in an unexported field "r" (first, as in
// v0.5.0, but the accessor finds it by name wherever it is).
type frameworkShape struct {
	r *hrc.Req
	//lint:ignore U1000 the field mirrors the framework's struct layout, which the accessor must see past
	conn net.Conn
	//lint:ignore U1000 the field mirrors the framework's struct layout, which the accessor must see past
	extraInfoHeader []byte
	//lint:ignore U1000 the field mirrors the framework's struct layout, which the accessor must see past
	statusCode int
}

type movedField struct {
	statusCode int
	//lint:ignore U1000 the field mirrors the framework's struct layout, which the accessor must see past
	body *bytes.Buffer
	r    *hrc.Req
}

type renamedField struct {
	raw *hrc.Req
}

type retypedField struct {
	r []byte
}

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
		{"framework layout", &frameworkShape{r: raw}, []string{"application/json", "a=1, b=2", strings.Repeat("v", 32), ""}, true},
		{"field elsewhere in the struct", &movedField{statusCode: 3, r: raw}, []string{"application/json", "a=1, b=2", strings.Repeat("v", 32), ""}, true},
		{"field renamed: fails safe", &renamedField{raw: raw}, []string{"", "", "", ""}, false},
		{"field retyped: fails safe", &retypedField{r: []byte("x")}, []string{"", "", "", ""}, false},
		{"not a pointer: fails safe", frameworkShape{r: raw}, []string{"", "", "", ""}, false},
		{"nil raw call", &frameworkShape{}, []string{"", "", "", ""}, false},
		{"nil pointer", (*frameworkShape)(nil), []string{"", "", "", ""}, false},
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
	got, ok := respHeaderValues(&frameworkShape{r: bad}, []string{"content-type"}, 64)
	if ok || got[0] != "" {
		t.Errorf("got %q ok=%v, want no values and ok=false", got, ok)
	}
}

func BenchmarkRespHeaderValues(b *testing.B) {
	raw := respCall(200, [][2]string{{"Content-Type", "application/json"}, {"X-Upstream-Id", "u-1"}, {"Date", "now"}})
	w := &frameworkShape{r: raw}
	names := []string{"x-upstream-id"}
	b.ReportAllocs()
	for b.Loop() {
		respHeaderValues(w, names, 1024)
	}
}
