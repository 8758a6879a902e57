package testbed_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/api7/ext-plugin-proto/go/A6"
	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	hreq "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	hresp "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/apisix-edge/edge-runner/testbed"
)

// fakeRunner is a scripted runner: PrepareConf is answered with increasing
// tokens; other frames go to handle, which writes whatever it likes.
type fakeRunner struct {
	path   string
	ln     net.Listener
	conns  atomic.Int64
	closed atomic.Int64
	tokens atomic.Uint32
	handle func(rw *bufio.ReadWriter, ty byte, payload []byte) error
	wg     sync.WaitGroup
}

func startFake(t *testing.T, handle func(rw *bufio.ReadWriter, ty byte, payload []byte) error) *fakeRunner {
	t.Helper()
	dir, err := os.MkdirTemp("", "tbf")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRunner{path: filepath.Join(dir, "r.sock"), handle: handle}
	f.ln, err = net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			f.conns.Add(1)
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer f.closed.Add(1)
				defer c.Close()
				rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
				for {
					ty, payload, err := testbed.ReadFrame(rw)
					if err != nil {
						return
					}
					if ty == testbed.TypePrepareConf {
						err = writeFrame(rw, testbed.TypePrepareConf, prepareResp(f.tokens.Add(1)))
					} else {
						err = f.handle(rw, ty, payload)
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = f.ln.Close()
		_ = os.RemoveAll(dir)
	})
	return f
}

func writeFrame(rw *bufio.ReadWriter, ty byte, payload []byte) error {
	if err := testbed.WriteFrame(rw, ty, payload); err != nil {
		return err
	}
	return rw.Flush()
}

// ask sends an ExtraInfo question and returns the answer's result.
func ask(rw *bufio.ReadWriter, info ei.Info, varName string) ([]byte, bool, error) {
	if err := writeFrame(rw, testbed.TypeExtraInfo, extraInfoReq(info, varName)); err != nil {
		return nil, false, err
	}
	ty, payload, err := testbed.ReadFrame(rw)
	if err != nil {
		return nil, false, err
	}
	if ty != testbed.TypeExtraInfo {
		return nil, false, fmt.Errorf("answer type %d", ty)
	}
	r := ei.GetRootAsResp(payload, 0)
	b := r.ResultBytes()
	return b, b != nil, nil
}

func prepareResp(tok uint32) []byte {
	b := flatbuffers.NewBuilder(64)
	pc.RespStart(b)
	pc.RespAddConfToken(b, tok)
	b.Finish(pc.RespEnd(b))
	return b.FinishedBytes()
}

func errResp(code A6Err.Code) []byte {
	b := flatbuffers.NewBuilder(64)
	A6Err.RespStart(b)
	A6Err.RespAddCode(b, code)
	b.Finish(A6Err.RespEnd(b))
	return b.FinishedBytes()
}

func extraInfoReq(info ei.Info, name string) []byte {
	b := flatbuffers.NewBuilder(64)
	var off flatbuffers.UOffsetT
	switch info {
	case ei.InfoVar:
		n := b.CreateString(name)
		ei.VarStart(b)
		ei.VarAddName(b, n)
		off = ei.VarEnd(b)
	case ei.InfoReqBody:
		ei.ReqBodyStart(b)
		off = ei.ReqBodyEnd(b)
	default:
		ei.RespBodyStart(b)
		off = ei.RespBodyEnd(b)
	}
	ei.ReqStart(b)
	ei.ReqAddInfoType(b, info)
	ei.ReqAddInfo(b, off)
	b.Finish(ei.ReqEnd(b))
	return b.FinishedBytes()
}

func entries(b *flatbuffers.Builder, es []testbed.Entry, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(es))
	for i, e := range es {
		n := b.CreateString(e.Name)
		var v flatbuffers.UOffsetT
		if e.HasValue {
			v = b.CreateString(e.Value)
		}
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, n)
		if e.HasValue {
			A6.TextEntryAddValue(b, v)
		}
		offs[i] = A6.TextEntryEnd(b)
	}
	start(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

func stopResp(id uint32, status int, headers []testbed.Entry, body string) []byte {
	b := flatbuffers.NewBuilder(256)
	h := entries(b, headers, hreq.StopStartHeadersVector)
	bv := b.CreateByteVector([]byte(body))
	hreq.StopStart(b)
	hreq.StopAddStatus(b, uint16(status))
	hreq.StopAddHeaders(b, h)
	hreq.StopAddBody(b, bv)
	st := hreq.StopEnd(b)
	hreq.RespStart(b)
	hreq.RespAddId(b, id)
	hreq.RespAddActionType(b, hreq.ActionStop)
	hreq.RespAddAction(b, st)
	b.Finish(hreq.RespEnd(b))
	return b.FinishedBytes()
}

func rewriteResp(id uint32, path string, headers, args, respHeaders []testbed.Entry, body string) []byte {
	b := flatbuffers.NewBuilder(256)
	var p flatbuffers.UOffsetT
	if path != "" {
		p = b.CreateString(path)
	}
	h := entries(b, headers, hreq.RewriteStartHeadersVector)
	a := entries(b, args, hreq.RewriteStartArgsVector)
	rh := entries(b, respHeaders, hreq.RewriteStartRespHeadersVector)
	bv := b.CreateByteVector([]byte(body))
	hreq.RewriteStart(b)
	if path != "" {
		hreq.RewriteAddPath(b, p)
	}
	hreq.RewriteAddHeaders(b, h)
	hreq.RewriteAddArgs(b, a)
	hreq.RewriteAddRespHeaders(b, rh)
	hreq.RewriteAddBody(b, bv)
	rw := hreq.RewriteEnd(b)
	hreq.RespStart(b)
	hreq.RespAddId(b, id)
	hreq.RespAddActionType(b, hreq.ActionRewrite)
	hreq.RespAddAction(b, rw)
	b.Finish(hreq.RespEnd(b))
	return b.FinishedBytes()
}

func emptyReqResp(id uint32) []byte {
	b := flatbuffers.NewBuilder(64)
	hreq.RespStart(b)
	hreq.RespAddId(b, id)
	b.Finish(hreq.RespEnd(b))
	return b.FinishedBytes()
}

func respCallResp(id uint32, status int, headers []testbed.Entry, body string) []byte {
	b := flatbuffers.NewBuilder(256)
	var h flatbuffers.UOffsetT
	if headers != nil {
		h = entries(b, headers, hresp.RespStartHeadersVector)
	}
	bv := b.CreateByteVector([]byte(body))
	hresp.RespStart(b)
	hresp.RespAddId(b, id)
	hresp.RespAddStatus(b, uint16(status))
	if headers != nil {
		hresp.RespAddHeaders(b, h)
	}
	hresp.RespAddBody(b, bv)
	b.Finish(hresp.RespEnd(b))
	return b.FinishedBytes()
}

func e(name, value string) testbed.Entry {
	return testbed.Entry{Name: name, Value: value, HasValue: true}
}
func del(name string) testbed.Entry { return testbed.Entry{Name: name} }

func TestFakeRequestEncodingAndRewrite(t *testing.T) {
	var mu sync.Mutex
	var got struct {
		path, method string
		src          []byte
		headers      []string
		nargs        int
		host         string
	}
	f := startFake(t, func(rw *bufio.ReadWriter, ty byte, payload []byte) error {
		req := hreq.GetRootAsReq(payload, 0)
		mu.Lock()
		got.path, got.method, got.src = string(req.Path()), req.Method().String(), append([]byte(nil), req.SrcIpBytes()...)
		var te A6.TextEntry
		got.headers = nil
		for i := 0; i < req.HeadersLength(); i++ {
			req.Headers(&te, i)
			got.headers = append(got.headers, string(te.Name()))
			if string(te.Name()) == "host" {
				got.host = string(te.Value())
			}
		}
		got.nargs = req.ArgsLength()
		mu.Unlock()
		return writeFrame(rw, ty, rewriteResp(req.Id(), "/a b?c",
			[]testbed.Entry{e("X-A", "1"), e("x-a", "2"), e("X-Empty", ""), del("X-Nil"), e("X-New", "n")},
			[]testbed.Entry{e("a", "1"), e("a", "2"), del("b"), e("c", "3")},
			[]testbed.Entry{e("X-R", "1"), e("x-r", "2"), e("Content-Type", "no"), e("Transfer-Encoding", "no")},
			"new body"))
	})
	g := testbed.NewGateway(f.path, testbed.GatewayOptions{})
	defer g.Close()
	hdr := http.Header{"Host": {"client:8080"}, "X-Empty": {"e"}, "X-Nil": {"n"}, "X-Old": {"o"}}
	for i := 0; i < 150; i++ {
		hdr.Set(fmt.Sprintf("X-Many-%03d", i), "v")
	}
	args := url.Values{"b": {"x"}, "d": {"4"}}
	for i := 0; i < 120; i++ {
		args.Set(fmt.Sprintf("z%03d", i), "v")
	}
	res := do(t, g, &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{}}, &testbed.Request{
		Method: "PATCH", Path: "/orig", Args: args, Headers: hdr, SrcIP: net.ParseIP("192.0.2.7"),
		UpstreamHost: "backend", Body: []byte("old"),
	})
	mu.Lock()
	defer mu.Unlock()
	if got.path != "/orig" || got.method != "PATCH" || !slices.Equal(got.src, []byte{192, 0, 2, 7}) {
		t.Errorf("call: got path %q method %q src %v, want /orig PATCH [192 0 2 7]", got.path, got.method, got.src)
	}
	if len(got.headers) != 100 || got.nargs != 100 {
		t.Errorf("sent headers/args: got %d/%d, want 100/100", len(got.headers), got.nargs)
	}
	for _, h := range got.headers {
		if h != strings.ToLower(h) {
			t.Errorf("header name %q: want lower case", h)
		}
	}
	if got.host != "backend" {
		t.Errorf("host header sent: got %q, want the upstream host %q", got.host, "backend")
	}
	up := res.Upstream
	checks := []struct {
		what string
		got  any
		want any
	}{
		{"path (uri_safe_encode)", up.Path, "/a%20b%3Fc"},
		{"X-A (set twice, last wins)", up.Headers.Values("X-A"), []string{"2"}},
		{"X-Empty", up.Headers.Values("X-Empty"), []string(nil)},
		{"X-Nil", up.Headers.Values("X-Nil"), []string(nil)},
		{"X-Old", up.Headers.Get("X-Old"), "o"},
		{"X-New", up.Headers.Get("X-New"), "n"},
		{"arg a", up.Args["a"], []string{"1", "2"}},
		{"arg b", up.Args["b"], []string(nil)},
		{"arg c", up.Args["c"], []string{"3"}},
		{"arg d", up.Args["d"], []string{"4"}},
		{"body", string(up.Body), "new body"},
		{"client X-R", res.Headers.Values("X-R"), []string{"1", "2"}},
		{"client Content-Type", res.Headers.Get("Content-Type"), ""},
		{"client Transfer-Encoding", res.Headers.Get("Transfer-Encoding"), ""},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestFakeStopHeaders(t *testing.T) {
	f := startFake(t, func(rw *bufio.ReadWriter, ty byte, payload []byte) error {
		id := hreq.GetRootAsReq(payload, 0).Id()
		return writeFrame(rw, ty, stopResp(id, 0, []testbed.Entry{e("X-S", "1"), e("x-s", "2"), e("Server", "kept")}, ""))
	})
	g := testbed.NewGateway(f.path, testbed.GatewayOptions{})
	defer g.Close()
	res := do(t, g, &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{}}, &testbed.Request{})
	if res.Status != 200 || len(res.Body) != 0 || res.UpstreamCalled {
		t.Errorf("got status %d body %q upstream %v, want 200 \"\" false", res.Status, res.Body, res.UpstreamCalled)
	}
	if got := res.Headers.Values("X-S"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("X-S: got %v, want [1 2]", got)
	}
	if got := res.Headers.Get("Server"); got != "kept" {
		t.Errorf("Server (Stop headers are not filtered): got %q, want %q", got, "kept")
	}
}

func TestFakeFailures(t *testing.T) {
	tests := []struct {
		name        string
		answer      func(rw *bufio.ReadWriter, ty byte, id uint32) error
		wantRetries int
		wantPrep    int
		check       func(error) bool
	}{
		{name: "conf token not found 3 times",
			answer: func(rw *bufio.ReadWriter, _ byte, _ uint32) error {
				return writeFrame(rw, testbed.TypeError, errResp(A6Err.CodeCONF_TOKEN_NOT_FOUND))
			},
			wantRetries: 3, wantPrep: 3, check: testbed.IsConfTokenNotFound},
		{name: "service unavailable is not retried",
			answer: func(rw *bufio.ReadWriter, _ byte, _ uint32) error {
				return writeFrame(rw, testbed.TypeError, errResp(A6Err.CodeSERVICE_UNAVAILABLE))
			},
			wantPrep: 1, check: func(err error) bool {
				var re *testbed.RunnerError
				return errors.As(err, &re) && re.Code == A6Err.CodeSERVICE_UNAVAILABLE
			}},
		{name: "unexpected type",
			answer: func(rw *bufio.ReadWriter, _ byte, id uint32) error {
				return writeFrame(rw, testbed.TypeHTTPRespCall, emptyReqResp(id))
			},
			wantPrep: 1, check: func(err error) bool { return errors.Is(err, testbed.ErrBadFrame) }},
		{name: "garbage payload",
			answer: func(rw *bufio.ReadWriter, ty byte, _ uint32) error {
				return writeFrame(rw, ty, []byte{0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8})
			},
			wantPrep: 1, check: func(err error) bool { return errors.Is(err, testbed.ErrBadFrame) }},
		{name: "truncated frame",
			answer: func(rw *bufio.ReadWriter, ty byte, _ uint32) error {
				_, _ = rw.Write([]byte{ty, 0, 0, 100, 1, 2})
				_ = rw.Flush()
				return io.EOF // close
			},
			wantPrep: 1, check: func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{name: "unsupported info type",
			answer: func(rw *bufio.ReadWriter, _ byte, _ uint32) error {
				_, _, err := ask(rw, ei.Info(9), "")
				return err
			},
			wantPrep: 1, check: func(err error) bool {
				return err != nil && strings.Contains(err.Error(), "unsupported info type: 9")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(rw *bufio.ReadWriter, ty byte, payload []byte) error {
				return tt.answer(rw, ty, hreq.GetRootAsReq(payload, 0).Id())
			})
			g := testbed.NewGateway(f.path, testbed.GatewayOptions{})
			defer g.Close()
			res := do(t, g, &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{}}, &testbed.Request{})
			if res.Status != 503 || res.UpstreamCalled {
				t.Errorf("got status %d upstream %v, want 503 false", res.Status, res.UpstreamCalled)
			}
			if !tt.check(res.Err) {
				t.Errorf("err: got %v", res.Err)
			}
			if res.TokenRetries != tt.wantRetries || res.Prepares != tt.wantPrep {
				t.Errorf("retries/prepares: got %d/%d, want %d/%d", res.TokenRetries, res.Prepares, tt.wantRetries, tt.wantPrep)
			}
			if st := g.Stats(); st.Flushes != int64(tt.wantRetries) {
				t.Errorf("flushes: got %d, want %d", st.Flushes, tt.wantRetries)
			}
		})
	}
}

func TestFakePostRespBodyReadTwice(t *testing.T) {
	var mu sync.Mutex
	var answers []string
	var gotStatus uint16
	var gotHdr []string
	f := startFake(t, func(rw *bufio.ReadWriter, ty byte, payload []byte) error {
		if ty != testbed.TypeHTTPRespCall {
			return fmt.Errorf("type %d", ty)
		}
		req := hresp.GetRootAsReq(payload, 0)
		var te A6.TextEntry
		mu.Lock()
		gotStatus = req.Status()
		for i := 0; i < req.HeadersLength(); i++ {
			req.Headers(&te, i)
			gotHdr = append(gotHdr, string(te.Name())+"="+string(te.Value()))
		}
		mu.Unlock()
		for i := 0; i < 2; i++ {
			b, _, err := ask(rw, ei.InfoRespBody, "")
			if err != nil {
				return err
			}
			mu.Lock()
			answers = append(answers, string(b))
			mu.Unlock()
		}
		return writeFrame(rw, ty, respCallResp(req.Id(), 0, nil, ""))
	})
	g := testbed.NewGateway(f.path, testbed.GatewayOptions{})
	defer g.Close()
	res := do(t, g, &testbed.Route{ID: "1", PostResp: []testbed.PluginConf{}}, &testbed.Request{
		Upstream: func(*testbed.UpstreamRequest) testbed.UpstreamResponse {
			return testbed.UpstreamResponse{Status: 201, Headers: http.Header{"X-U": {"1"}}, Body: []byte("orig")}
		},
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(answers, []string{"orig", ""}) {
		t.Errorf("RespBody answers: got %q, want [orig \"\"]", answers)
	}
	if gotStatus != 201 || !slices.Equal(gotHdr, []string{"X-U=1"}) {
		t.Errorf("HTTPRespCall: got status %d headers %v, want 201 [X-U=1]", gotStatus, gotHdr)
	}
	if res.Status != 201 || len(res.Body) != 0 || res.Headers.Get("X-U") != "1" {
		t.Errorf("client: got %d %q X-U %q, want 201 \"\" \"1\" (the second read drains the chunks)",
			res.Status, res.Body, res.Headers.Get("X-U"))
	}
}

func TestFakePoolReuseAndDeadIdleConns(t *testing.T) {
	var closeAfter atomic.Bool
	f := startFake(t, func(rw *bufio.ReadWriter, ty byte, payload []byte) error {
		// Read before answering: the test turns closeAfter on once it has
		// the answer, and a late read would close this connection after
		// a later request took it from the pool and wrote to it.
		closing := closeAfter.Load()
		if err := writeFrame(rw, ty, emptyReqResp(hreq.GetRootAsReq(payload, 0).Id())); err != nil {
			return err
		}
		if closing {
			return io.EOF // the runner closes the connection
		}
		return nil
	})
	g := testbed.NewGateway(f.path, testbed.GatewayOptions{})
	defer g.Close()
	route := &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{}}
	for i := 0; i < 10; i++ {
		if res := do(t, g, route, &testbed.Request{}); res.Status != 200 {
			t.Fatalf("request %d: got %d, want 200 (err %v)", i, res.Status, res.Err)
		}
	}
	if st := g.Stats(); st.Dials != 2 || f.conns.Load() != 2 || st.Prepares != 1 {
		t.Errorf("sequential requests: got dials %d runner conns %d prepares %d, want 2 2 1",
			st.Dials, f.conns.Load(), st.Prepares)
	}
	closeAfter.Store(true)
	for i := 0; i < 5; i++ {
		closed := f.closed.Load()
		if res := do(t, g, route, &testbed.Request{}); res.Status != 200 {
			t.Fatalf("request %d with closing runner: got %d, want 200 (err %v)", i, res.Status, res.Err)
		}
		// let the runner's close land before the next request, as nginx
		// would have seen the EOF on the idle connection by then
		for f.closed.Load() == closed {
			time.Sleep(time.Millisecond)
		}
	}
	// requests 0 and 1 use the two pooled connections (the call's and the
	// prepare's), the other three dial; no request saw a dead connection.
	if st := g.Stats(); st.Dials != 2+3 {
		t.Errorf("dials with closing runner: got %d, want %d", st.Dials, 2+3)
	}
}
