package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed"
	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"
)

// A frame of an unknown type is a whole call: the runner answers with an
// error frame (type 0) and waits for the next call, so no plugin and no
// conf are needed for the connection tests.
const typeUnknown = 9

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// testLimits are roomy bounds; tests of the bounds set their own.
var testLimits = Limits{FrameTimeout: 5 * time.Second, MaxFrameMemory: 64 << 20, MaxConnections: 64}

type testServer struct {
	*connServer
	reg   *prometheus.Registry
	logs  *bytes.Buffer
	logMu *sync.Mutex
}

func startConns(t *testing.T) (*connServer, string) {
	ts, path := startServer(t, testLimits, 1, nil)
	return ts.connServer, path
}

// lockedBuffer is a log sink the test reads while the server writes.
type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l lockedBuffer) Sync() error { return nil }

// startServer serves a socket with lim, conf tokens from base+1, and
// plugins, logging into the returned server's logs.
func startServer(t *testing.T, lim Limits, base uint32, plugins map[string]plugin.Plugin) (*testServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runner.sock")
	ln, owned, err := listenSocket(path, 1)
	if err != nil {
		t.Fatalf("listenSocket: %v", err)
	}
	if !owned.ours() {
		t.Fatalf("ours() after listenSocket: got false, want true")
	}
	ts := &testServer{reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	log := NewLogger(lockedBuffer{ts.logMu, ts.logs}, zapcore.WarnLevel)
	m := newRPCMetrics(ts.reg, core.NewLogThrottle(log, time.Minute))
	if plugins == nil {
		plugins = map[string]plugin.Plugin{}
	}
	d := &dispatcher{plugins: plugins, cache: newConfCache(time.Hour, 1024, base), m: m}
	ts.connServer = newConnServer(ln, d, lim, m)
	go ts.serve()
	t.Cleanup(func() { ts.closeIdle() })
	return ts, path
}

func (ts *testServer) logLines() []string {
	ts.logMu.Lock()
	defer ts.logMu.Unlock()
	return strings.Split(strings.TrimSpace(ts.logs.String()), "\n")
}

func dial(t *testing.T, path string) *client {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// call sends one call and wants its answer.
func (c *client) call() {
	c.t.Helper()
	if err := testbed.WriteFrame(c.c, typeUnknown, []byte("x")); err != nil {
		c.t.Fatalf("write call: %v", err)
	}
	c.wantAnswer()
}

func (c *client) wantAnswer() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ty, _, err := testbed.ReadFrame(c.br)
	if err != nil || ty != 0 {
		c.t.Fatalf("answer: got type %d, err %v; want an error frame (type 0)", ty, err)
	}
}

// wantEOF wants the runner to have closed the connection.
func (c *client) wantEOF() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		c.t.Fatalf("after the answer: got %v, want EOF", err)
	}
}

func waitOpen(t *testing.T, s *connServer, want int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.open() != want; {
		if time.Now().After(deadline) {
			t.Fatalf("open connections: got %d, want %d", s.open(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitBetweenCalls waits until n connections' goroutines wait for their
// next frame: a client has its answer before the goroutine that wrote it
// loops back, and a connection still on its way there when the shutdown
// begins finds itself idle and is closed at once (the rule under test).
func waitBetweenCalls(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(5 * time.Second); ; {
		got := strings.Count(string(buf[:runtime.Stack(buf, true)]), "server.(*conn).waitFrame")
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections waiting for a frame: got %d, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseAfterCallsClosesEachAfterItsNextAnswer(t *testing.T) {
	s, path := startConns(t)
	a, b := dial(t, path), dial(t, path)
	a.call()
	b.call()
	waitBetweenCalls(t, 2)
	done := s.closeAfterCalls()
	if _, err := net.Dial("unix", path); err == nil {
		t.Errorf("dial after closeAfterCalls: got a connection, want refused")
	}
	// both idle connections are still served, and each is closed right
	// after its answer
	a.call()
	a.wantEOF()
	select {
	case <-done:
		t.Fatalf("done with b still open")
	default:
	}
	b.call()
	b.wantEOF()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("done not closed after the last connection closed (open %d)", s.open())
	}
}

func TestCloseIdleSparesAFreshConnection(t *testing.T) {
	s, path := startConns(t)
	idle, fresh := dial(t, path), dial(t, path)
	idle.call()
	waitOpen(t, s, 2)
	s.closeIdle()
	idle.wantEOF()
	// a connection that has not sent its first call yet is busy: APISIX
	// connected in order to send it
	fresh.call()
	fresh.wantEOF()
}

func TestReadWaitsForAFrameSplitByTheKernel(t *testing.T) {
	_, path := startConns(t)
	c := dial(t, path)
	body := []byte("a frame body in two parts")
	hdr := []byte{typeUnknown, 0, 0, byte(len(body))}
	for _, part := range [][]byte{hdr[:2], hdr[2:], body[:5], body[5:]} {
		if _, err := c.c.Write(part); err != nil {
			t.Fatalf("write: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // each part is read on its own
	}
	c.wantAnswer()
	c.call() // the connection is still in step
}

func TestHandOverMovesConnectionsAtFrameBoundaries(t *testing.T) {
	old, path := startConns(t)
	newer, _ := startConns(t)
	hpath := filepath.Join(t.TempDir(), "runner.sock.handoff")
	hln, howned, err := listenRenamed("unixpacket", hpath, 2, 0o600)
	if err != nil {
		t.Fatalf("listen handoff: %v", err)
	}
	defer hln.Close()
	if !howned.ours() {
		t.Fatalf("handoff ours(): got false, want true")
	}
	go serveHandoff(hln, newer)

	idle, fresh := dial(t, path), dial(t, path)
	idle.call()
	waitOpen(t, old, 2)
	// a call already on its way when the handoff starts: the new runner
	// must read it whole
	if err := testbed.WriteFrame(idle.c, typeUnknown, []byte("sent before the handoff")); err != nil {
		t.Fatalf("write: %v", err)
	}
	done, err := old.handOver(hpath)
	if err != nil {
		t.Fatalf("handOver: %v", err)
	}
	idle.wantAnswer()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("old runner still holds %d connections", old.open())
	}
	waitOpen(t, newer, 2)
	// both connections stay open and in step, now served by the new runner
	idle.call()
	fresh.call()
	if got := old.handedOver.Load(); got != 2 {
		t.Errorf("handed over: got %d, want 2", got)
	}
	if got := old.closedIdle.Load(); got != 0 {
		t.Errorf("closed idle: got %d, want 0", got)
	}
}

func TestHandOverWithoutNewRunnerFails(t *testing.T) {
	s, _ := startConns(t)
	if _, err := s.handOver(filepath.Join(t.TempDir(), "nobody.handoff")); err == nil {
		t.Fatalf("handOver to a path nobody listens on: got nil error, want one")
	}
	if s.closing.Load() {
		t.Errorf("closing after a failed handOver: got true, want false (the caller falls back)")
	}
}

// TestConfTokensStartAtBase: a runner answers PrepareConf with base+1,
// base+2, so a token an older runner issued names no conf here.
func TestConfTokensStartAtBase(t *testing.T) {
	const base = 1<<30 + 12345
	_, path := startServer(t, testLimits, base, nil)
	c := dial(t, path)
	for i, key := range []string{"route#1#pre", "route#2#pre", "route#1#pre"} {
		tok := c.prepare(key)
		want := uint32(base + 1 + i%2) // the same key gets the same token
		if tok != want {
			t.Errorf("token of %s: got %d, want %d", key, tok, want)
		}
	}
}

func TestTokenBaseNeverWraps(t *testing.T) {
	for range 1000 {
		if b := tokenBase(); b == 0 || b >= 1<<31 {
			t.Fatalf("tokenBase: got %d, want 1 to 2^31-1", b)
		}
	}
}

// prepare sends PrepareConf for key with plugins (name, conf value pairs)
// and returns the token.
func (c *client) prepare(key string, plugins ...string) uint32 {
	c.t.Helper()
	if err := testbed.WriteFrame(c.c, typePrepareConf, encodePrepare(key, plugins...)); err != nil {
		c.t.Fatalf("write PrepareConf: %v", err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ty, payload, err := testbed.ReadFrame(c.br)
	if err != nil || ty != typePrepareConf {
		c.t.Fatalf("PrepareConf answer: got type %d, err %v; want type 1", ty, err)
	}
	tok, err := testbed.DecodePrepareConfAnswer(payload)
	if err != nil {
		c.t.Fatalf("PrepareConf answer: %v", err)
	}
	return tok
}

// reqCall sends an HTTPReqCall on token with header pairs and returns the
// answer.
func (c *client) reqCall(token uint32, headers ...string) *testbed.ReqCallAnswer {
	c.t.Helper()
	if err := testbed.WriteFrame(c.c, typeHTTPReqCall, encodeReqCall(token, headers...)); err != nil {
		c.t.Fatalf("write HTTPReqCall: %v", err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ty, payload, err := testbed.ReadFrame(c.br)
	if err != nil {
		c.t.Fatalf("HTTPReqCall answer: %v", err)
	}
	if ty == typeError {
		e, _ := testbed.DecodeError(payload)
		c.t.Fatalf("HTTPReqCall answer: got error %v", e)
	}
	a, err := testbed.DecodeReqCallAnswer(payload)
	if err != nil {
		c.t.Fatalf("HTTPReqCall answer: %v", err)
	}
	return a
}

// authPlugin stands for a protecting plugin: it stops every request that
// lacks the header "ok".
type authPlugin struct{ plugin.DefaultPlugin }

func (authPlugin) Name() string                     { return "auth" }
func (authPlugin) ParseConf(in []byte) (any, error) { return string(in), nil }
func (authPlugin) RequestFilter(_ any, w http.ResponseWriter, r pkgHTTP.Request) {
	if r.Header().Get("ok") == "" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	r.Header().Set("X-Edge-Consumer", "alice")
	core.SetVerifiedConsumer(r, "alice")
}

// limitPlugin stops every request with 429.
type limitPlugin struct{ plugin.DefaultPlugin }

func (limitPlugin) Name() string                     { return "limit" }
func (limitPlugin) ParseConf(in []byte) (any, error) { return nil, nil }
func (limitPlugin) RequestFilter(_ any, w http.ResponseWriter, r pkgHTTP.Request) {
	r.RespHeader().Set("X-Limit", "1")
	w.WriteHeader(http.StatusTooManyRequests)
}

func TestMisspelledPluginNameFailsClosed(t *testing.T) {
	ts, path := startServer(t, testLimits, 1, map[string]plugin.Plugin{"auth": &authPlugin{}})
	c := dial(t, path)
	if a := c.reqCall(c.prepare("route#ok", "auth", "{}")); a.Stop == nil || a.Stop.Status != http.StatusUnauthorized {
		t.Fatalf("the plugin spelled right: got %+v, want a 401 Stop", a)
	}
	for i, name := range []string{"Auth", "auth ", "au-th", ""} {
		tok := c.prepare(fmt.Sprintf("route#%d", i), name, "{}")
		a := c.reqCall(tok, "ok", "1")
		if a.Stop == nil || a.Stop.Status != http.StatusInternalServerError {
			t.Errorf("plugin %q: got %+v, want a 500 Stop", name, a)
		}
	}
	if got := testutil.ToFloat64(ts.m.rejectedConfs.WithLabelValues("unknown_plugin")); got != 4 {
		t.Errorf("rejected confs: got %v, want 4", got)
	}
	// a conf naming far more plugins than any route is refused unparsed
	many := make([]string, 0, 2*(maxPluginsPerConf+1))
	for i := 0; i <= maxPluginsPerConf; i++ {
		many = append(many, "auth", "{}")
	}
	if a := c.reqCall(c.prepare("route#many", many...), "ok", "1"); a.Stop == nil || a.Stop.Status != http.StatusInternalServerError {
		t.Errorf("a conf of %d plugins: got %+v, want a 500 Stop", maxPluginsPerConf+1, a)
	}
}

func TestStopAfterAVerifiedConsumerCarriesItSealed(t *testing.T) {
	_, path := startServer(t, testLimits, 1, map[string]plugin.Plugin{"auth": &authPlugin{}, "limit": &limitPlugin{}})
	c := dial(t, path)
	a := c.reqCall(c.prepare("route#1", "auth", "{}", "limit", "{}"), "ok", "1")
	if a.Stop == nil || a.Stop.Status != http.StatusTooManyRequests {
		t.Fatalf("got %+v, want a 429 Stop", a)
	}
	var sealed string
	for _, h := range a.Stop.Headers {
		if h.Name == core.LogConsumerHeader {
			sealed = h.Value
		}
		if strings.Contains(h.Value, "alice") {
			t.Errorf("header %s: %q shows the consumer to the client", h.Name, h.Value)
		}
	}
	if id, ok := core.OpenConsumer(sealed); !ok || id != "alice" {
		t.Errorf("%s: got %q (opens to %q, %v), want alice sealed", core.LogConsumerHeader, sealed, id, ok)
	}
	// no verified consumer: no header
	a = c.reqCall(c.prepare("route#2", "limit", "{}"))
	for _, h := range a.Stop.Headers {
		if h.Name == core.LogConsumerHeader {
			t.Errorf("without a verified consumer: got %s %q, want none", h.Name, h.Value)
		}
	}
}

func TestGarbageFramesLogAFewLines(t *testing.T) {
	ts, path := startServer(t, testLimits, 1, nil)
	c := dial(t, path)
	for i := range 500 {
		switch i % 3 {
		case 0: // an unknown type
			c.call()
		case 1: // a body that is no FlatBuffers table
			if err := testbed.WriteFrame(c.c, typeHTTPReqCall, []byte{0xff, 0xff, 0xff, 0x7f, 1, 2, 3}); err != nil {
				t.Fatal(err)
			}
			c.wantAnswer()
		case 2: // an unknown token
			if err := testbed.WriteFrame(c.c, typePrepareConf, []byte{1, 2}); err != nil {
				t.Fatal(err)
			}
			c.wantAnswer()
		}
	}
	// and connections cut in the middle of a frame
	for range 50 {
		d := dial(t, path)
		_, _ = d.c.Write([]byte{typeHTTPReqCall, 0, 1, 0, 1, 2})
		_ = d.c.Close()
	}
	waitOpen(t, ts.connServer, 1)
	if lines := ts.logLines(); len(lines) > 5 {
		t.Errorf("log lines after 500 bad frames and 50 cut ones: got %d, want at most 5:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, l := range ts.logLines() {
		if !isoLine.MatchString(l) {
			t.Errorf("log line %q: want an ISO-8601 UTC timestamp first", l)
		}
		if strings.Contains(l, "goroutine ") || strings.Contains(l, ".go:") {
			t.Errorf("log line %q carries a stack trace", l)
		}
	}
	if got := testutil.ToFloat64(ts.m.badFrames.WithLabelValues("malformed")); got < 300 {
		t.Errorf("malformed frames counted: got %v, want at least 300", got)
	}
}

var isoLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t`)

func TestConnectionsBeyondTheCapAreRefused(t *testing.T) {
	lim := testLimits
	lim.MaxConnections = 4
	ts, path := startServer(t, lim, 1, nil)
	var cs []*client
	for range 4 {
		c := dial(t, path)
		c.call()
		cs = append(cs, c)
	}
	extra := dial(t, path)
	extra.wantEOF()
	if got := testutil.ToFloat64(ts.m.refused.WithLabelValues("connections")); got != 1 {
		t.Errorf("refused connections: got %v, want 1", got)
	}
	for _, c := range cs {
		c.call() // the first four are served as before
	}
}

// TestStalledHalfFramesAreReleased sends frames announcing 16 MiB - 1 and
// then all but the last byte, on more connections than the memory bound
// admits: the ones past the bound are refused as they grow, the others are
// closed at the frame deadline, and the memory held never exceeds the
// bound and is all given back.
func TestStalledHalfFramesAreReleased(t *testing.T) {
	lim := testLimits
	lim.MaxFrameMemory = 24 << 20
	// long enough for every stalled frame to have grown to its limit (the
	// budget refuses the growth of some), short for the test. 3s was not
	// enough once in a clean-clone CI run (-race, beside the e2e and chaos
	// suites): the six writes had not brought 24 MiB in when every frame
	// timed out, so none was refused.
	lim.FrameTimeout = 8 * time.Second
	ts, path := startServer(t, lim, 1, nil)
	const n = 6
	var peak atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if u := ts.budget.inUse(); u > peak.Load() {
				peak.Store(u)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for range n {
		c := dial(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			hdr := []byte{typeHTTPReqCall, 0xff, 0xff, 0xff}
			body := make([]byte, maxFrameLen-1)
			_, _ = c.c.Write(append(hdr, body...)) // fails once the runner closes
			_ = c.c.SetReadDeadline(time.Now().Add(lim.FrameTimeout + 10*time.Second))
			if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("stalled connection: got %v, want it closed (EOF or reset)", err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-watched
	waitOpen(t, ts.connServer, 0)
	if p := peak.Load(); p > lim.MaxFrameMemory {
		t.Errorf("frame memory peak: got %d, want at most %d", p, lim.MaxFrameMemory)
	}
	// Chunks given back go to the free list, which the budget hands back
	// to the OS at most every releaseEvery (2s, by a timer): right after
	// the last connection closed a chunk can still be counted (seen once
	// in CI: 262144 in use). A leak stays: wait for the release, bounded.
	for deadline := time.Now().Add(5 * time.Second); ts.budget.inUse() != 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if u := ts.budget.inUse(); u != 0 {
		t.Errorf("frame memory after the connections closed: got %d, want 0", u)
	}
	refused := testutil.ToFloat64(ts.m.refused.WithLabelValues("frame_memory"))
	timedOut := testutil.ToFloat64(ts.m.frameTimeouts)
	// Which frames get the budget depends on how the six writes interleave:
	// usually one grows whole and then times out, but under load every one
	// can be refused while the others still hold chunks (seen in CI). The
	// bound must have taken effect, and every connection must be accounted
	// for by one of the two.
	if refused < 1 || refused+timedOut != n {
		t.Errorf("refused %v + timed out %v: want at least 1 refused, %d in all", refused, timedOut, n)
	}
}

func TestSlowlorisIsDropped(t *testing.T) {
	lim := testLimits
	lim.FrameTimeout = 200 * time.Millisecond
	ts, path := startServer(t, lim, 1, nil)
	c := dial(t, path)
	frame := []byte{typeUnknown, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	closed := false
	for _, b := range frame {
		if _, err := c.c.Write([]byte{b}); err != nil {
			closed = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !closed {
		c.wantEOF()
	}
	if got := testutil.ToFloat64(ts.m.frameTimeouts); got != 1 {
		t.Errorf("frame timeouts: got %v, want 1", got)
	}
	// a new connection that never sends is dropped too
	idle := dial(t, path)
	idle.wantEOF()
}

// entries encodes name/value pairs as TextEntry tables.
func entries(b *flatbuffers.Builder, pairs []string) []flatbuffers.UOffsetT {
	var offs []flatbuffers.UOffsetT
	for i := 0; i+1 < len(pairs); i += 2 {
		n, v := b.CreateString(pairs[i]), b.CreateString(pairs[i+1])
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, n)
		A6.TextEntryAddValue(b, v)
		offs = append(offs, A6.TextEntryEnd(b))
	}
	return offs
}

func vector(b *flatbuffers.Builder, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT, offs []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	start(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

// encodePrepare encodes a PrepareConf for key with plugins (name, conf
// value pairs).
func encodePrepare(key string, plugins ...string) []byte {
	b := flatbuffers.NewBuilder(64)
	confs := vector(b, pc.ReqStartConfVector, entries(b, plugins))
	k := b.CreateString(key)
	pc.ReqStart(b)
	pc.ReqAddKey(b, k)
	pc.ReqAddConf(b, confs)
	b.Finish(pc.ReqEnd(b))
	return b.FinishedBytes()
}

// encodeReqCall encodes an HTTPReqCall on token with header pairs.
func encodeReqCall(token uint32, headers ...string) []byte {
	b := flatbuffers.NewBuilder(128)
	hv := vector(b, hrc.ReqStartHeadersVector, entries(b, headers))
	path := b.CreateString("/p")
	hrc.ReqStartSrcIpVector(b, 4)
	for _, x := range []byte{1, 0, 0, 127} {
		b.PrependByte(x)
	}
	ip := b.EndVector(4)
	hrc.ReqStart(b)
	hrc.ReqAddId(b, 7)
	hrc.ReqAddConfToken(b, token)
	hrc.ReqAddPath(b, path)
	hrc.ReqAddHeaders(b, hv)
	hrc.ReqAddSrcIp(b, ip)
	b.Finish(hrc.ReqEnd(b))
	return b.FinishedBytes()
}

// refusingPlugin's ParseConf always fails, as a plugin registered without
// the guard may.
type refusingPlugin struct{ plugin.DefaultPlugin }

func (refusingPlugin) Name() string                  { return "refusing" }
func (refusingPlugin) ParseConf([]byte) (any, error) { return nil, errors.New("parse conf: bad") }

func TestUnguardedParseErrorFailsClosed(t *testing.T) {
	ts, path := startServer(t, testLimits, 1, map[string]plugin.Plugin{"refusing": &refusingPlugin{}})
	c := dial(t, path)
	if a := c.reqCall(c.prepare("route#1", "refusing", "{}"), "ok", "1"); a.Stop == nil || a.Stop.Status != http.StatusInternalServerError {
		t.Fatalf("got %+v, want a 500 Stop", a)
	}
	if got := testutil.ToFloat64(ts.m.rejectedConfs.WithLabelValues("invalid_conf")); got != 1 {
		t.Errorf("rejected confs: got %v, want 1", got)
	}
}

// funcPlugin runs f as its request filter.
type funcPlugin struct {
	plugin.DefaultPlugin
	name string
	f    func(w http.ResponseWriter, r pkgHTTP.Request)
}

func (p *funcPlugin) Name() string                     { return p.name }
func (p *funcPlugin) ParseConf(in []byte) (any, error) { return nil, nil }
func (p *funcPlugin) RequestFilter(_ any, w http.ResponseWriter, r pkgHTTP.Request) {
	p.f(w, r)
}

// TestCallsOnAConnectionShareNothing: a connection's calls reuse their
// response-header maps and Stop body buffer, emptied; nothing a call set
// reaches the next call's answer.
func TestCallsOnAConnectionShareNothing(t *testing.T) {
	plugins := map[string]plugin.Plugin{}
	for _, p := range []*funcPlugin{
		{name: "resp", f: func(_ http.ResponseWriter, r pkgHTTP.Request) { r.RespHeader().Set("X-One", "1") }},
		{name: "none", f: func(http.ResponseWriter, pkgHTTP.Request) {}},
		{name: "stopbody", f: func(w http.ResponseWriter, _ pkgHTTP.Request) {
			w.Header().Set("X-Stop", "a")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte("first"))
		}},
		{name: "stopbare", f: func(w http.ResponseWriter, _ pkgHTTP.Request) { w.WriteHeader(http.StatusForbidden) }},
		{name: "stopempty", f: func(w http.ResponseWriter, _ pkgHTTP.Request) { _, _ = w.Write(nil) }},
	} {
		plugins[p.name] = p
	}
	_, path := startServer(t, testLimits, 1, plugins)
	c := dial(t, path)
	tok := map[string]uint32{}
	for name := range plugins {
		tok[name] = c.prepare("route#"+name, name, "{}")
	}
	for round := range 2 {
		a := c.reqCall(tok["resp"])
		if a.Rewrite == nil || len(a.Rewrite.RespHeaders) != 1 || a.Rewrite.RespHeaders[0].Value != "1" {
			t.Fatalf("round %d, resp: got %+v, want a Rewrite with X-One: 1", round, a)
		}
		if a := c.reqCall(tok["none"]); a.Stop != nil || a.Rewrite != nil {
			t.Fatalf("round %d, none after resp: got %+v %+v, want no action", round, a.Stop, a.Rewrite)
		}
		a = c.reqCall(tok["stopbody"])
		if a.Stop == nil || a.Stop.Status != http.StatusTooManyRequests || string(a.Stop.Body) != "first" || len(a.Stop.Headers) != 1 {
			t.Fatalf("round %d, stopbody: got %+v, want a 429 Stop with X-Stop and body", round, a.Stop)
		}
		a = c.reqCall(tok["stopbare"])
		if a.Stop == nil || a.Stop.Status != http.StatusForbidden || a.Stop.Body != nil || len(a.Stop.Headers) != 0 {
			t.Fatalf("round %d, stopbare after stopbody: got %+v, want a 403 Stop with no header and no body", round, a.Stop)
		}
		if a := c.reqCall(tok["none"]); a.Stop != nil || a.Rewrite != nil {
			t.Fatalf("round %d, none after the stops: got %+v %+v, want no action", round, a.Stop, a.Rewrite)
		}
		a = c.reqCall(tok["stopempty"])
		if a.Stop == nil || a.Stop.Status != http.StatusOK || a.Stop.Body != nil {
			t.Fatalf("round %d, stopempty: got %+v, want a 200 Stop without body (an empty Write stops)", round, a.Stop)
		}
	}
}
