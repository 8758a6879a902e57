package jwtcache

import (
	"context"
	"net"
	"net/http"
	"net/url"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
)

// testRequest is an APISIX request as the runner's server hands it to a
// plugin: headers, args, method, and the per-call values of
// core.CallValues.
type testRequest struct {
	method string
	hdr    testHeader
	args   url.Values
	values map[any]any
}

var _ pkgHTTP.Request = (*testRequest)(nil)

func newTestRequest(method string, h http.Header, args url.Values) *testRequest {
	if h == nil {
		h = http.Header{}
	}
	return &testRequest{method: method, hdr: testHeader{h}, args: args}
}

// reset restores the request for another round of a benchmark, as the
// server does with a fresh request for every call.
func (r *testRequest) reset(h http.Header) {
	clear(r.hdr.h)
	for k, v := range h {
		r.hdr.h[k] = v
	}
	clear(r.values)
}

func (r *testRequest) ID() uint32                  { return 1 }
func (r *testRequest) SrcIP() net.IP               { return net.IPv4(127, 0, 0, 1) }
func (r *testRequest) Method() string              { return r.method }
func (r *testRequest) Path() []byte                { return []byte("/api") }
func (r *testRequest) SetPath([]byte)              {}
func (r *testRequest) Header() pkgHTTP.Header      { return &r.hdr }
func (r *testRequest) Var(string) ([]byte, error)  { return nil, nil }
func (r *testRequest) Body() ([]byte, error)       { return nil, nil }
func (r *testRequest) Context() context.Context    { return context.Background() }
func (r *testRequest) RespHeader() http.Header     { return http.Header{} }
func (r *testRequest) SetCallValue(key, value any) { r.setValue(key, value) }
func (r *testRequest) CallValue(key any) any       { return r.values[key] }
func (r *testRequest) Args() url.Values {
	if r.args == nil {
		r.args = url.Values{}
	}
	return r.args
}

func (r *testRequest) setValue(key, value any) {
	if r.values == nil {
		r.values = map[any]any{}
	}
	r.values[key] = value
}

type testHeader struct{ h http.Header }

func (h *testHeader) Set(k, v string)     { h.h.Set(k, v) }
func (h *testHeader) Del(k string)        { h.h.Del(k) }
func (h *testHeader) Get(k string) string { return h.h.Get(k) }
func (h *testHeader) View() http.Header   { return h.h }

// testWriter records a Stop answer.
type testWriter struct {
	status int
	h      http.Header
	body   []byte
}

func newTestWriter() *testWriter { return &testWriter{h: http.Header{}} }

func (w *testWriter) Header() http.Header { return w.h }
func (w *testWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body = append(w.body, b...)
	return len(b), nil
}
func (w *testWriter) WriteHeader(s int) { w.status = s }

// readerHeader is a header that a plugin can read through Get, Values and
// PeekHeader, as the runner's server header can, and whose View must not
// be needed: it panics.
type readerHeader struct{ h http.Header }

func (h *readerHeader) Set(k, v string)          { h.h.Set(k, v) }
func (h *readerHeader) Del(k string)             { h.h.Del(k) }
func (h *readerHeader) Get(k string) string      { return h.h.Get(k) }
func (h *readerHeader) Values(k string) []string { return h.h.Values(k) }
func (h *readerHeader) View() http.Header        { panic("View called") }

func (h *readerHeader) PeekHeader(k string) ([]byte, bool) { return peekHeader{h.h}.PeekHeader(k) }

// peekHeader is an http.Header that lends its values as the runner's
// server header does (core.HeaderPeeker).
type peekHeader struct{ http.Header }

func (h peekHeader) PeekHeader(k string) ([]byte, bool) {
	vs := h.Header[http.CanonicalHeaderKey(k)]
	if len(vs) == 0 {
		return nil, false
	}
	return []byte(vs[0]), true
}

// readerRequest is a testRequest whose header is a readerHeader.
type readerRequest struct {
	testRequest
	rh readerHeader
}

func (r *readerRequest) Header() pkgHTTP.Header { return &r.rh }
