package server

import (
	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/api7/ext-plugin-proto/go/A6"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	hresp "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	"github.com/apisix-edge/edge-runner/core"
	flatbuffers "github.com/google/flatbuffers/go"
)

// response is the pkg/http Response of one HTTPRespCall (post-resp). Any
// header a plugin changes makes the answer carry the whole header set:
// APISIX then sends the client only the runner's headers, so sending the
// changes alone would drop every other header. Reading headers through
// VisitHeaders, or Header().Get, changes nothing.
type response struct {
	extraInfo
	r    hresp.Req
	hdr  header
	ans  entryList // the answer's headers, kept between calls
	code int
	out  []byte // the body a plugin wrote
}

var (
	_ pkgHTTP.Response           = (*response)(nil)
	_ core.ResponseHeaderVisitor = (*response)(nil)
)

func (r *response) init(c asker, buf []byte) {
	r.c = c
	r.r.Init(buf, flatbuffers.GetUOffsetT(buf))
	r.hdr.src, r.hdr.whole = headerSource{resp: &r.r}, true
}

func (r *response) end() {
	r.extraInfo.reset()
	r.hdr.reset()
	r.ans.reset()
	r.code, r.out = 0, nil
}

func (r *response) ID() uint32 { return r.r.Id() }

func (r *response) StatusCode() int {
	if r.code != 0 {
		return r.code
	}
	return int(r.r.Status())
}

// Header reads the headers from the frame as plugins ask for them (see
// header); a changed response is answered with the whole set.
func (r *response) Header() pkgHTTP.Header { return &r.hdr }

// VisitHeaders calls fn with each upstream response header as APISIX sent
// it (lower-case names), at most maxEntries of them. The slices are valid
// during the call only.
func (r *response) VisitHeaders(fn func(name, value []byte)) {
	var e A6.TextEntry
	n := min(r.r.HeadersLength(), maxEntries)
	for i := 0; i < n; i++ {
		if r.r.Headers(&e, i) {
			fn(e.Name(), e.Value())
		}
	}
}

func (r *response) ReadBody() ([]byte, error) {
	return r.body(ei.InfoRespBody, func(b *flatbuffers.Builder) flatbuffers.UOffsetT {
		ei.RespBodyStart(b)
		return ei.RespBodyEnd(b)
	})
}

func (r *response) Write(b []byte) (int, error) {
	if r.out == nil {
		r.out = []byte{}
	}
	r.out = append(r.out, b...)
	return len(b), nil
}

// WriteHeader sets the status once.
func (r *response) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *response) changed() bool {
	return r.out != nil || r.code != 0 || len(r.hdr.changed) > 0
}

// answer builds the HTTPRespCall answer: nothing but the id when no plugin
// changed anything (APISIX then sends the upstream's response as is).
func (r *response) answer(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	var hdrs, body flatbuffers.UOffsetT
	if len(r.hdr.changed) > 0 {
		l := &r.ans
		l.addHeader(r.hdr.View())
		hdrs = l.build(b, hresp.RespStartHeadersVector)
	}
	if len(r.out) > 0 {
		body = b.CreateByteVector(r.out)
	}
	hresp.RespStart(b)
	hresp.RespAddId(b, r.r.Id())
	if r.code != 0 {
		hresp.RespAddStatus(b, uint16(r.code))
	}
	if hdrs != 0 {
		hresp.RespAddHeaders(b, hdrs)
	}
	if body != 0 {
		hresp.RespAddBody(b, body)
	}
	return hresp.RespEnd(b)
}
