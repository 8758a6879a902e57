package server

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/common"
	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/api7/ext-plugin-proto/go/A6"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	flatbuffers "github.com/google/flatbuffers/go"
)

// asker asks APISIX an ExtraInfo question during a call, on the call's own
// connection, and returns the answer's result.
type asker interface {
	ask(info ei.Info, build func(*flatbuffers.Builder) flatbuffers.UOffsetT) ([]byte, error)
}

// ctxTimeout bounds a call's context: APISIX waits 60 s for the answer, so a
// plugin that watches r.Context() can still answer before that.
const ctxTimeout = 56 * time.Second

// methods maps the wire's method numbers to their names without the
// generated map lookup.
var methods = func() [256]string {
	var m [256]string
	for v, name := range A6.EnumNamesMethod {
		m[v] = name
	}
	return m
}()

// callValues holds what one plugin hands to the next within a call
// (core.CallValues), and the consumer a plugin verified in a field of its
// own (core.SetVerifiedConsumer), set without boxing it.
type callValues struct {
	kv       []any
	consumer string
}

func (v *callValues) SetConsumerID(id string) { v.consumer = id }
func (v *callValues) ConsumerID() string      { return v.consumer }

func (v *callValues) SetCallValue(key, value any) {
	for i := 0; i < len(v.kv); i += 2 {
		if v.kv[i] == key {
			v.kv[i+1] = value
			return
		}
	}
	v.kv = append(v.kv, key, value)
}

func (v *callValues) CallValue(key any) any {
	for i := 0; i < len(v.kv); i += 2 {
		if v.kv[i] == key {
			return v.kv[i+1]
		}
	}
	return nil
}

func (v *callValues) reset() {
	clear(v.kv)
	v.kv = v.kv[:0]
	v.consumer = ""
}

// request is the pkg/http Request of one HTTPReqCall. Everything it returns
// is a copy: the frame it was read from is reused after the call.
type request struct {
	callValues
	extraInfo
	r   hrc.Req
	hdr header
	ans entryList // the Rewrite's vectors, kept between calls

	path    []byte
	pathSet bool

	args, rawArgs url.Values
	respHdr       http.Header

	ctx    context.Context
	cancel context.CancelFunc
}

var _ pkgHTTP.Request = (*request)(nil)

func (r *request) init(c asker, buf []byte) {
	r.c = c
	r.r.Init(buf, flatbuffers.GetUOffsetT(buf))
	r.hdr.src = headerSource{req: &r.r}
}

// end releases what the call held; the request is then reused.
func (r *request) end() {
	if r.cancel != nil {
		r.cancel()
	}
	r.callValues.reset()
	r.extraInfo.reset()
	r.hdr.reset()
	r.ans.reset()
	r.path, r.pathSet = nil, false
	r.args, r.rawArgs = nil, nil
	r.respHdr = reuseHeader(r.respHdr)
	r.ctx, r.cancel = nil, nil
}

// maxKeptHeaders bounds a header map kept from call to call: a map that
// held more (a plugin setting hundreds of headers) is dropped rather than
// kept with its room.
const maxKeptHeaders = 16

// reuseHeader empties h for the next call on the same connection, keeping
// its room (the limiter sets three or four response headers on every
// request; a new map per call, with the Stop body's buffer, was 4 of the 11
// allocations of BenchmarkDispatch/stop); nil when h is nil or was large.
func reuseHeader(h http.Header) http.Header {
	if len(h) > maxKeptHeaders {
		return nil
	}
	clear(h)
	return h
}

func (r *request) ID() uint32 { return r.r.Id() }

func (r *request) SrcIP() net.IP {
	ip := r.r.SrcIpBytes()
	if len(ip) == 0 {
		return nil
	}
	return net.IP(bytes.Clone(ip))
}

func (r *request) Method() string {
	if m := methods[r.r.Method()]; m != "" {
		return m
	}
	return r.r.Method().String()
}

func (r *request) Path() []byte {
	if r.pathSet {
		return r.path
	}
	return bytes.Clone(r.r.Path())
}

func (r *request) SetPath(p []byte) {
	r.path, r.pathSet = bytes.Clone(p), true
}

// Header reads the headers from the frame as plugins ask for them (see
// header): none is copied until one is read.
func (r *request) Header() pkgHTTP.Header { return &r.hdr }

func (r *request) Args() url.Values {
	if r.args == nil {
		r.args = url.Values{}
		parseEntries(entryVector{r.r.ArgsLength(), r.r.Args}, r.args, false)
		r.rawArgs = make(url.Values, len(r.args))
		for k, v := range r.args {
			r.rawArgs[k] = slices.Clone(v)
		}
	}
	return r.args
}

func (r *request) RespHeader() http.Header {
	if r.respHdr == nil {
		r.respHdr = make(http.Header, 4)
	}
	return r.respHdr
}

func (r *request) Body() ([]byte, error) {
	return r.body(ei.InfoReqBody, func(b *flatbuffers.Builder) flatbuffers.UOffsetT {
		ei.ReqBodyStart(b)
		return ei.ReqBodyEnd(b)
	})
}

func (r *request) Context() context.Context {
	if r.ctx == nil {
		r.ctx, r.cancel = context.WithTimeout(context.Background(), ctxTimeout)
	}
	return r.ctx
}

// extraInfo asks APISIX, on the call's connection, for what a plugin
// reads beyond the call itself (nginx variables, a body), each at most
// once per call. Request and response share it.
type extraInfo struct {
	c       asker
	vars    map[string][]byte
	bodyVal []byte
	hasBody bool
}

func (x *extraInfo) reset() {
	x.c, x.vars, x.bodyVal, x.hasBody = nil, nil, nil, false
}

// Var returns nginx variable name.
func (x *extraInfo) Var(name string) ([]byte, error) {
	if v, ok := x.vars[name]; ok {
		return v, nil
	}
	if x.c == nil {
		return nil, common.ErrConnClosed
	}
	v, err := x.c.ask(ei.InfoVar, func(b *flatbuffers.Builder) flatbuffers.UOffsetT {
		n := b.CreateString(name)
		ei.VarStart(b)
		ei.VarAddName(b, n)
		return ei.VarEnd(b)
	})
	if err != nil {
		return nil, err
	}
	if x.vars == nil {
		x.vars = make(map[string][]byte, 4)
	}
	x.vars[name] = v
	return v, nil
}

// body returns the request's or the response's body (info says which).
func (x *extraInfo) body(info ei.Info, build func(*flatbuffers.Builder) flatbuffers.UOffsetT) ([]byte, error) {
	if x.hasBody {
		return x.bodyVal, nil
	}
	if x.c == nil {
		return nil, common.ErrConnClosed
	}
	v, err := x.c.ask(info, build)
	if err != nil {
		return nil, err
	}
	x.bodyVal, x.hasBody = v, true
	return v, nil
}

// changed reports whether the request must be answered with a Rewrite.
func (r *request) changed() bool {
	r.hdr.settle()
	return r.pathSet || len(r.hdr.changed) > 0 || len(r.respHdr) > 0 || r.argsChanged()
}

func (r *request) argsChanged() bool {
	if r.args == nil {
		return false
	}
	if len(r.args) != len(r.rawArgs) {
		return true
	}
	for k, v := range r.args {
		if !slices.Equal(v, r.rawArgs[k]) {
			return true
		}
	}
	return false
}

// rewrite builds the Rewrite answer: the path if set, each header a plugin
// set (its first value) or deleted, the response headers, and the args that
// changed (a deleted name alone; a changed one with each of its values).
func (r *request) rewrite(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	var path, hdrs, resp, args flatbuffers.UOffsetT
	if r.pathSet {
		path = b.CreateByteString(r.path)
	}
	r.hdr.settle()
	if len(r.hdr.changed) > 0 {
		l := &r.ans
		for i := range r.hdr.changed {
			c := &r.hdr.changed[i]
			if v, ok := r.hdr.current(c); ok {
				l.add(c.name, v)
			} else {
				l.del(c.name)
			}
		}
		hdrs = l.build(b, hrc.RewriteStartHeadersVector)
	}
	if len(r.respHdr) > 0 {
		l := &r.ans
		l.addHeader(r.respHdr)
		resp = l.build(b, hrc.RewriteStartRespHeadersVector)
	}
	if r.argsChanged() {
		l := &r.ans
		for k := range r.rawArgs {
			if _, ok := r.args[k]; !ok {
				l.del(k)
			}
		}
		for k, v := range r.args {
			if slices.Equal(v, r.rawArgs[k]) {
				continue
			}
			for _, x := range v {
				l.add(k, x)
			}
		}
		args = l.build(b, hrc.RewriteStartArgsVector)
	}
	hrc.RewriteStart(b)
	if r.pathSet {
		hrc.RewriteAddPath(b, path)
	}
	if hdrs != 0 {
		hrc.RewriteAddHeaders(b, hdrs)
	}
	if resp != 0 {
		hrc.RewriteAddRespHeaders(b, resp)
	}
	if args != 0 {
		hrc.RewriteAddArgs(b, args)
	}
	return hrc.RewriteEnd(b)
}

// stopWriter is the http.ResponseWriter of a request call: writing a body
// or a status makes the answer a Stop and ends the chain. Setting headers
// alone changes nothing.
type stopWriter struct {
	hdr   http.Header
	body  []byte // kept between calls, emptied
	wrote bool   // Write was called (even with nothing)
	code  int
	ans   entryList // the Stop's headers, kept between calls
}

// maxKeptBody bounds the body buffer kept from call to call.
const maxKeptBody = 64 << 10

func (w *stopWriter) Header() http.Header {
	if w.hdr == nil {
		w.hdr = make(http.Header, 4)
	}
	return w.hdr
}

func (w *stopWriter) Write(b []byte) (int, error) {
	w.wrote = true
	w.body = append(w.body, b...)
	return len(b), nil
}

// WriteHeader sets the status once; APISIX turns 0 into 200.
func (w *stopWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *stopWriter) stopped() bool { return w.wrote || w.code != 0 }

func (w *stopWriter) reset() {
	w.hdr = reuseHeader(w.hdr)
	if cap(w.body) > maxKeptBody {
		w.body = nil
	}
	w.body, w.wrote, w.code = w.body[:0], false, 0
	w.ans.reset()
}

func (w *stopWriter) stop(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	var hdrs, body flatbuffers.UOffsetT
	if len(w.hdr) > 0 {
		l := &w.ans
		l.addHeader(w.hdr)
		hdrs = l.build(b, hrc.StopStartHeadersVector)
	}
	if len(w.body) > 0 {
		body = b.CreateByteVector(w.body)
	}
	hrc.StopStart(b)
	code := w.code
	if code == 0 {
		code = http.StatusOK
	}
	hrc.StopAddStatus(b, uint16(code))
	if hdrs != 0 {
		hrc.StopAddHeaders(b, hdrs)
	}
	if body != 0 {
		hrc.StopAddBody(b, body)
	}
	return hrc.StopEnd(b)
}
