package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	fwlog "github.com/apache/apisix-go-plugin-runner/pkg/log"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	"github.com/apisix-edge/edge-runner/testbed"
	flatbuffers "github.com/google/flatbuffers/go"
	"go.uber.org/zap/zapcore"
)

// These tests run the framework's own connection handler behind our accept
// loop. A frame of an unknown type is a whole call for it: it answers with
// an error frame (type 0) and waits for the next call, so no plugin and no
// conf are needed.
const typeUnknown = 9

func TestMain(m *testing.M) {
	fwlog.NewLogger(zapcore.FatalLevel, zapcore.AddSync(io.Discard)) // the framework logs each call
	os.Exit(m.Run())
}

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func startConns(t *testing.T) (*connServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runner.sock")
	ln, owned, err := listenSocket(path, 1)
	if err != nil {
		t.Fatalf("listenSocket: %v", err)
	}
	if !owned.ours() {
		t.Fatalf("ours() after listenSocket: got false, want true")
	}
	s := newConnServer(ln, frameworkHandleConn, func(err error) { t.Errorf("accept: %v", err) })
	go s.serve()
	t.Cleanup(func() { s.closeIdle() })
	return s, path
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

func TestCloseAfterCallsClosesEachAfterItsNextAnswer(t *testing.T) {
	s, path := startConns(t)
	a, b := dial(t, path), dial(t, path)
	a.call()
	b.call()
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

func TestTrackFollowsFrames(t *testing.T) {
	frame := func(ty byte, n int) []byte {
		return append([]byte{ty, byte(n >> 16), byte(n >> 8), byte(n)}, make([]byte, n)...)
	}
	split := func(b []byte, at ...int) [][]byte {
		var out [][]byte
		prev := 0
		for _, i := range at {
			out = append(out, b[prev:i])
			prev = i
		}
		return append(out, b[prev:])
	}
	answer := frame(2, 300)
	tests := []struct {
		name     string
		writes   [][]byte
		wantBusy bool
	}{
		{name: "answer as header then body", writes: split(answer, 4), wantBusy: false},
		{name: "answer in one write", writes: [][]byte{answer}, wantBusy: false},
		{name: "header split across writes", writes: split(answer, 1, 3, 100), wantBusy: false},
		{name: "answer not finished", writes: [][]byte{answer[:200]}, wantBusy: true},
		{name: "ExtraInfo question keeps the call open", writes: split(frame(typeExtraInfo, 40), 4), wantBusy: true},
		{name: "ExtraInfo then answer", writes: [][]byte{frame(typeExtraInfo, 40), frame(2, 10)}, wantBusy: false},
		{name: "error frame ends the call", writes: [][]byte{frame(0, 12)}, wantBusy: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &conn{}
			c.busy.Store(true)
			for _, w := range tt.writes {
				c.track(w)
			}
			if got := c.busy.Load(); got != tt.wantBusy {
				t.Errorf("busy: got %v, want %v", got, tt.wantBusy)
			}
		})
	}
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

// TestConfTokensStartAtBase checks the mirror of the framework's conf cache
// against the framework itself: after startTokensAt(base), the framework
// answers PrepareConf with base+1, base+2.
func TestConfTokensStartAtBase(t *testing.T) {
	frameworkInitConfCache(time.Hour)
	const base = 1<<30 + 12345
	if !startTokensAt(base) {
		t.Fatalf("startTokensAt on a fresh cache: got false, want true (the framework's ConfCache layout changed)")
	}
	if startTokensAt(base) {
		t.Errorf("startTokensAt on a used counter: got true, want false")
	}
	_, path := startConns(t)
	c := dial(t, path)
	for i, key := range []string{"route#1#pre", "route#2#pre"} {
		b := flatbuffers.NewBuilder(64)
		k := b.CreateString(key)
		pc.ReqStartConfVector(b, 0)
		confs := b.EndVector(0)
		pc.ReqStart(b)
		pc.ReqAddKey(b, k)
		pc.ReqAddConf(b, confs)
		b.Finish(pc.ReqEnd(b))
		if err := testbed.WriteFrame(c.c, 1, b.FinishedBytes()); err != nil {
			t.Fatalf("write PrepareConf: %v", err)
		}
		_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		ty, payload, err := testbed.ReadFrame(c.br)
		if err != nil || ty != 1 {
			t.Fatalf("PrepareConf answer: got type %d, err %v; want type 1", ty, err)
		}
		tok, err := testbed.DecodePrepareConfAnswer(payload)
		if want := uint32(base + 1 + i); err != nil || tok != want {
			t.Errorf("token of %s: got %d (%v), want %d", key, tok, err, want)
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
