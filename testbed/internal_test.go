package testbed

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
	hreq "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	flatbuffers "github.com/google/flatbuffers/go"
)

func TestURISafeEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain/path", "/plain/path"},
		{"/a b", "/a%20b"},
		{"/q?x=1&y=2", "/q%3Fx=1&y=2"},
		{"/frag#x", "/frag%23x"},
		{"/pct%20", "/pct%2520"},
		{"/ctl\r\n", "/ctl%0D%0A"},
		{"/del\x7f", "/del%7F"},
		{"/é", "/%C3%A9"},
		{"/keep-._~!$'()*+,;=:@", "/keep-._~!$'()*+,;=:@"},
	}
	for _, tt := range tests {
		if got := uriSafeEncode(tt.in); got != tt.want {
			t.Errorf("uriSafeEncode(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 500 * time.Microsecond},
		{0.9, 900 * time.Microsecond},
		{0.99, 990 * time.Microsecond},
		{1, 1000 * time.Microsecond},
	}
	for _, tt := range tests {
		got := h.quantile(tt.q)
		diff := float64(got-tt.want) / float64(tt.want)
		if diff < -0.01 || diff > 0.01 {
			t.Errorf("quantile(%v): got %v, want %v ±1%%", tt.q, got, tt.want)
		}
	}
	if h.max != int64(time.Millisecond) || h.min != int64(time.Microsecond) {
		t.Errorf("min/max: got %v/%v, want 1µs/1ms", time.Duration(h.min), time.Duration(h.max))
	}
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		i := histIndex(v)
		mid := uint64(histValue(i))
		if v >= 128 && (mid < v-v/64 || mid > v+v/64) {
			t.Errorf("bucket of %d: got middle %d, want within 1/64", v, mid)
		}
		if v < 128 && mid != v {
			t.Errorf("bucket of %d: got %d, want exact", v, mid)
		}
		if i > 0 && histIndex(v) < histIndex(v-1) {
			t.Errorf("index not monotonic at %d", v)
		}
	}
	var m histogram
	m.merge(&h)
	m.merge(&histogram{})
	if m.n != h.n || m.quantile(0.5) != h.quantile(0.5) {
		t.Errorf("merge: got n %d p50 %v, want %d %v", m.n, m.quantile(0.5), h.n, h.quantile(0.5))
	}
}

func TestTokenCache(t *testing.T) {
	tc := newTokenCache(2, time.Hour)
	_, _, gen := tc.lruGet("a", 1)
	tc.lruSet(gen, "a", 1, 10)
	tc.lruSet(gen, "b", 1, 11)
	if tok, ok, _ := tc.lruGet("a", 1); !ok || tok != 10 {
		t.Errorf("get a: got %d %v, want 10 true", tok, ok)
	}
	if _, ok, _ := tc.lruGet("a", 2); ok {
		t.Errorf("get a version 2: got hit, want miss")
	}
	tc.lruSet(gen, "c", 1, 12) // evicts b, the least recently used
	if _, ok, _ := tc.lruGet("b", 1); ok {
		t.Errorf("get b after eviction: got hit, want miss")
	}
	tc.flush()
	if _, ok, _ := tc.lruGet("a", 1); ok {
		t.Errorf("get a after flush: got hit, want miss")
	}
	tc.lruSet(gen, "a", 1, 13) // stale generation: dropped
	if _, ok, _ := tc.lruGet("a", 1); ok {
		t.Errorf("set with stale generation: got hit, want miss")
	}
	tc.shSet("k", 5)
	if tok, ok := tc.shGet("k"); !ok || tok != 5 {
		t.Errorf("shared dict: got %d %v, want 5 true", tok, ok)
	}
	short := newTokenCache(8, 10*time.Millisecond)
	short.shSet("k", 1)
	time.Sleep(15 * time.Millisecond)
	if _, ok := short.shGet("k"); ok {
		t.Errorf("shared dict after 0.9×ttl: got hit, want miss")
	}
}

func TestShLock(t *testing.T) {
	l := make(shLock, 1)
	if err := l.lock(context.Background(), time.Second); err != nil {
		t.Fatalf("lock: %v", err)
	}
	if err := l.lock(context.Background(), 10*time.Millisecond); !errors.Is(err, errLockTimeout) {
		t.Errorf("second lock: got %v, want timeout", err)
	}
	l.unlock()
	if err := l.lock(context.Background(), 10*time.Millisecond); err != nil {
		t.Errorf("lock after unlock: got %v, want nil", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := [][]byte{nil, {1}, bytes.Repeat([]byte{7}, 70000)}
	for i, p := range payloads {
		if err := WriteFrame(&buf, byte(i), p); err != nil {
			t.Fatalf("WriteFrame: %v", err)
		}
	}
	for i, p := range payloads {
		ty, got, err := ReadFrame(&buf)
		if err != nil || ty != byte(i) || !bytes.Equal(got, p) {
			t.Errorf("frame %d: got type %d len %d err %v, want type %d len %d", i, ty, len(got), err, i, len(p))
		}
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{2, 0})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short header: got %v, want unexpected EOF", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{2, 0, 0, 9, 1})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated data: got %v, want unexpected EOF", err)
	}
	if err := WriteFrame(io.Discard, 1, make([]byte, MaxFrameSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("too large: got %v, want ErrFrameTooLarge", err)
	}
}

// oneWriteCounter counts Write calls.
type oneWriteCounter struct{ n int }

func (w *oneWriteCounter) Write(p []byte) (int, error) { w.n++; return len(p), nil }

func TestWriteFrameSingleWrite(t *testing.T) {
	var w oneWriteCounter
	if err := WriteFrame(&w, TypeHTTPReqCall, make([]byte, 5000)); err != nil || w.n != 1 {
		t.Errorf("writes per frame: got %d (err %v), want 1", w.n, err)
	}
}

func errPayload(code A6Err.Code) []byte {
	b := flatbuffers.NewBuilder(32)
	A6Err.RespStart(b)
	A6Err.RespAddCode(b, code)
	b.Finish(A6Err.RespEnd(b))
	return b.FinishedBytes()
}

func stopPayload() []byte {
	b := flatbuffers.NewBuilder(64)
	body := b.CreateByteVector([]byte("no"))
	hdrs := offsetVector(b, hreq.StopStartHeadersVector, textEntries(b, []kv{{name: "X", value: "1"}, {name: "Y", noValue: true}}))
	hreq.StopStart(b)
	hreq.StopAddStatus(b, 403)
	hreq.StopAddHeaders(b, hdrs)
	hreq.StopAddBody(b, body)
	st := hreq.StopEnd(b)
	hreq.RespStart(b)
	hreq.RespAddId(b, 7)
	hreq.RespAddActionType(b, hreq.ActionStop)
	hreq.RespAddAction(b, st)
	b.Finish(hreq.RespEnd(b))
	return b.FinishedBytes()
}

func TestDecode(t *testing.T) {
	re, err := DecodeError(errPayload(A6Err.CodeCONF_TOKEN_NOT_FOUND))
	if err != nil || !IsConfTokenNotFound(re) || re.Error() != "conf token not found" {
		t.Errorf("DecodeError: got %v %v, want conf token not found", re, err)
	}
	ans, err := DecodeReqCallAnswer(stopPayload())
	if err != nil || ans.ID != 7 || ans.Stop == nil || ans.Stop.Status != 403 || string(ans.Stop.Body) != "no" {
		t.Fatalf("DecodeReqCallAnswer: got %+v %v", ans, err)
	}
	want := []Entry{{Name: "X", Value: "1", HasValue: true}, {Name: "Y"}}
	if len(ans.Stop.Headers) != 2 || ans.Stop.Headers[0] != want[0] || ans.Stop.Headers[1] != want[1] {
		t.Errorf("stop headers: got %+v, want %+v", ans.Stop.Headers, want)
	}
	for _, bad := range [][]byte{nil, {1, 2, 3}, bytes.Repeat([]byte{0xff}, 64)} {
		if _, err := DecodeReqCallAnswer(bad); !errors.Is(err, ErrBadFrame) {
			t.Errorf("DecodeReqCallAnswer(%x): got %v, want ErrBadFrame", bad, err)
		}
	}
}

// FuzzDecodeAnswer feeds arbitrary bytes to the frame reader and to every
// decoder of runner answers: they must return errors, never panic.
func FuzzDecodeAnswer(f *testing.F) {
	var seed bytes.Buffer
	_ = WriteFrame(&seed, TypeHTTPReqCall, stopPayload())
	f.Add(seed.Bytes())
	seed.Reset()
	_ = WriteFrame(&seed, TypeError, errPayload(A6Err.CodeBAD_REQUEST))
	f.Add(seed.Bytes())
	b := getBuilder()
	f.Add(append([]byte{TypeExtraInfo, 0, 0, 0}, encodeExtraInfoAnswer(b, []byte("x"))...))
	b.Reset()
	f.Add(append([]byte{TypeHTTPRespCall, 0, 0, 0}, encodeHTTPRespCall(b, 1, 200, 2, []kv{{name: "a", value: "b"}})...))
	f.Add([]byte{2, 0, 0, 4, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			_, payload, err := ReadFrame(r)
			if err != nil {
				break
			}
			_, _ = DecodeError(payload)
			_, _ = DecodeReqCallAnswer(payload)
			_, _ = DecodeRespCallAnswer(payload)
			_, _ = DecodeExtraInfoQuestion(payload)
			_, _ = DecodePrepareConfAnswer(payload)
		}
		// whole buffer as a payload too
		_, _ = DecodeReqCallAnswer(data)
		_, _ = DecodeRespCallAnswer(data)
		_, _ = DecodeExtraInfoQuestion(data)
	})
}
