package core

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

type sample struct {
	Limit  int      `json:"limit"`
	Window Duration `json:"window"`
	Nested struct {
		Name string `json:"name"`
	} `json:"nested"`
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		in   string
		want []string // problems; nil means success
	}{
		{`{"limit":3,"window":"1s","nested":{"name":"x"}}`, nil},
		{`{"limit":3,"windw":"1s"}`, []string{"windw: unknown field"}},
		{`{"limit":"3"}`, []string{`limit: must be an integer, got JSON string`}},
		{`{"window":"1x"}`, []string{`window: must be a duration string such as "1s" or "250ms", got "1x"`}},
		{`{"window":5}`, []string{`window: must be a duration string such as "1s" or "250ms", got 5`}},
		{`{"nested":{"nme":"x"}}`, []string{"nested.nme: unknown field"}},
		{`{"nested":3}`, []string{"nested: must be an object"}},
		{`{"a":1,"b":2}`, []string{"a: unknown field", "b: unknown field"}},
		{``, []string{"conf is empty: want a JSON object"}},
		{`[1]`, []string{"conf must be a JSON object"}},
		{`{"limit":3} {}`, []string{"unexpected data after the JSON object"}},
		{`{"limit":`, []string{"truncated JSON"}},
	}
	for _, tt := range tests {
		var s sample
		got := Problems(DecodeStrict([]byte(tt.in), &s))
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("DecodeStrict(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzDecodeStrict(f *testing.F) {
	f.Add([]byte(`{"limit":3,"window":"1s","nested":{"name":"x"}}`))
	f.Add([]byte(`{"nested":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s sample
		_ = DecodeStrict(data, &s) // must not panic
	})
}

// testModule is a plugin whose behaviour the test chooses.
type testModule struct {
	policy FailPolicy
	panics bool
	called int
}

func (m *testModule) Name() string { return "test" }
func (m *testModule) ParseConf(in []byte) (any, error) {
	var s sample
	if err := DecodeStrict(in, &s); err != nil {
		return nil, err
	}
	if s.Limit <= 0 {
		return nil, Fieldf("limit", "must be > 0")
	}
	return &s, nil
}
func (m *testModule) RequestFilter(any, http.ResponseWriter, pkgHTTP.Request) {
	m.called++
	if m.panics {
		panic("boom")
	}
}
func (m *testModule) ResponseFilter(any, pkgHTTP.Response) {}
func (m *testModule) FailPolicy() FailPolicy               { return m.policy }
func (m *testModule) Start(context.Context)                {}
func (m *testModule) Shutdown(context.Context) error       { return nil }

func TestGuard(t *testing.T) {
	tests := []struct {
		name       string
		policy     FailPolicy
		panics     bool
		conf       string
		wantStatus int // 0: the request goes on untouched
		wantCalled int
	}{
		{"valid conf runs the plugin", FailClosed, false, `{"limit":1}`, 0, 1},
		{"invalid conf fails closed", FailClosed, false, `{"limit":0}`, 500, 0},
		{"unknown field fails closed", FailClosed, false, `{"limt":1}`, 500, 0},
		{"invalid conf fails open", FailOpen, false, `{"limit":0}`, 0, 0},
		{"panic fails closed", FailClosed, true, `{"limit":1}`, 500, 1},
		{"panic fails open", FailOpen, true, `{"limit":1}`, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			g := NewGuardMetrics(reg, NewLogThrottle(zap.NewNop(), 0), &Inflight{})
			m := &testModule{policy: tt.policy, panics: tt.panics}
			p := g.Guard(m)
			conf, err := p.ParseConf([]byte(tt.conf))
			if err != nil || conf == nil {
				t.Fatalf("got ParseConf error %v, conf %v: want no error, ever (the framework would drop the plugin)", err, conf)
			}
			w := httptest.NewRecorder()
			w.Code = 0
			p.RequestFilter(conf, w, nil)
			if w.Code != tt.wantStatus {
				t.Errorf("got status %d, want %d", w.Code, tt.wantStatus)
			}
			if m.called != tt.wantCalled {
				t.Errorf("got plugin called %d times, want %d", m.called, tt.wantCalled)
			}
			_, invalid := conf.(*InvalidConf)
			if got := testutil.ToFloat64(g.confErrors.WithLabelValues("test")); (got == 1) != invalid {
				t.Errorf("got %v conf errors counted for invalid=%v", got, invalid)
			}
			if got := testutil.ToFloat64(g.panics.WithLabelValues("test", "request")); (got == 1) != tt.panics {
				t.Errorf("got %v panics counted, want panics=%v", got, tt.panics)
			}
		})
	}
}

func TestLogThrottle(t *testing.T) {
	now := time.Unix(0, 0)
	var lines []string
	log := zap.New(zapcoreFunc(func(msg string) { lines = append(lines, msg) }))
	th := NewLogThrottle(log, time.Minute)
	th.now = func() time.Time { return now }
	err := errors.New("down")
	for i := 0; i < 100; i++ {
		th.Warn("redis", "redis failing", err)
	}
	if len(lines) != 1 {
		t.Fatalf("got %d lines for 100 events in one interval, want 1", len(lines))
	}
	now = now.Add(2 * time.Minute)
	th.Flush()
	if len(lines) != 2 || !strings.Contains(lines[1], "summary") {
		t.Fatalf("got lines %q, want a summary after the interval", lines)
	}
	th.Flush()
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want no summary when nothing was suppressed", len(lines))
	}
}
