package ratelimit

import (
	"strings"
	"testing"
	"time"
)

func TestLocalLimiterSlides(t *testing.T) {
	l := newLocalLimiter(10)
	t0 := time.Unix(100, 0)
	allowed := 0
	for i := 0; i < 8; i++ {
		if ok, _, _ := l.decide("k", 5, time.Second, 1, t0, true); ok {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("got %d allowed of 8 in one window, want 5", allowed)
	}
	// Half-way into the next window, half of the previous window's 5 still
	// weigh: 2.5, so 2 more fit (2.5+2 < 5, 2.5+3 > 5).
	allowed = 0
	for i := 0; i < 5; i++ {
		if ok, _, _ := l.decide("k", 5, time.Second, 1, t0.Add(1500*time.Millisecond), true); ok {
			allowed++
		}
	}
	if allowed != 2 {
		t.Fatalf("got %d allowed half-way into the next window, want 2", allowed)
	}
	// Two windows later nothing weighs any more.
	if ok, rem, _ := l.decide("k", 5, time.Second, 1, t0.Add(3*time.Second), true); !ok || rem != 4 {
		t.Fatalf("got allowed %v remaining %d after two idle windows, want true 4", ok, rem)
	}
	// Another key is counted on its own.
	if ok, _, _ := l.decide("other", 5, time.Second, 1, t0, true); !ok {
		t.Fatalf("got other key rejected, want allowed")
	}
}

func TestLocalLimiterBounded(t *testing.T) {
	l := newLocalLimiter(100)
	t0 := time.Unix(100, 0)
	for i := 0; i < 1000; i++ {
		l.decide(strings.Repeat("x", i%50)+string(rune('a'+i%26))+itoa(int64(i)), 1, time.Second, 1, t0, true)
	}
	if got := l.len(); got != 100 {
		t.Fatalf("got %d keys tracked, want the bound 100", got)
	}
}

func TestOverLimitCache(t *testing.T) {
	o := newOverLimit(2)
	t0 := time.Unix(100, 0)
	o.set("a", t0.Add(time.Second))
	if _, ok := o.until("a", t0.Add(999*time.Millisecond)); !ok {
		t.Fatalf("got a not cached before its slot frees, want cached")
	}
	if _, ok := o.until("a", t0.Add(time.Second)); ok {
		t.Fatalf("got a cached when its slot frees, want gone")
	}
	if o.len() != 0 {
		t.Fatalf("got %d entries, want the expired one removed", o.len())
	}
	for _, k := range []string{"a", "b", "c"} {
		o.set(k, t0.Add(time.Minute))
	}
	if o.len() != 2 {
		t.Fatalf("got %d entries, want the bound 2", o.len())
	}
}

func TestBoundKey(t *testing.T) {
	tests := []struct {
		in    string
		plain bool
	}{
		{"203.0.113.7", true},
		{"2001:db8::1", true},
		{"alice@example.com", true},
		{"tenant-42_x.y", true},
		{"", false},
		{"a{b}", false},
		{"a|b", false},
		{"a b", false},
		{"ü", false},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{strings.Repeat("a", 1<<20), false},
	}
	for _, tt := range tests {
		got := boundKey(tt.in)
		if (got == tt.in) != tt.plain {
			t.Errorf("boundKey(%.20q): got %.40q, want plain=%v", tt.in, got, tt.plain)
		}
		if len(got) > maxPlainKey+1 {
			t.Errorf("boundKey(%.20q): got %d bytes, want at most %d", tt.in, len(got), maxPlainKey+1)
		}
	}
	if boundKey("a b") == boundKey("a  b") {
		t.Errorf("distinct odd keys hash alike")
	}
}

func TestParseOverride(t *testing.T) {
	tests := []struct {
		in      string
		want    override
		wantErr bool
	}{
		{"500", override{limit: 500}, false},
		{"500/1m", override{limit: 500, window: time.Minute}, false},
		{" 7/250ms ", override{limit: 7, window: 250 * time.Millisecond}, false},
		{"0", override{}, true},
		{"x/1s", override{}, true},
		{"5/1x", override{}, true},
		{"5/48h", override{limit: 5, window: 48 * time.Hour}, false},
		{"5/8785h", override{}, true},
		{"unlimited", override{unlimited: true}, false},
		{"9007199254740992", override{limit: 1 << 53}, false},
		{"9007199254740993", override{}, true},
		{"5/1500us", override{}, true},
	}
	for _, tt := range tests {
		got, err := parseOverride(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseOverride(%q): got %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCeilSeconds(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int64
	}{{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {-time.Second, 1}} {
		if got := ceilSeconds(tt.d); got != tt.want {
			t.Errorf("ceilSeconds(%s): got %d, want %d", tt.d, got, tt.want)
		}
	}
}
