package ratelimit

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

func TestParseConf(t *testing.T) {
	tests := []struct {
		in   string
		want []string // problems; nil means valid
	}{
		{`{"limit":10,"window":"1s"}`, nil},
		{`{"limit":10,"window":"1m","key":"header:X-Api-Key","name":"api","rejected_code":503,"rejected_msg":"slow down","fail_mode":"local","show_headers":false,"tenant_header":"X-Tenant-ID"}`, nil},
		{`{"limit":1,"window":"250ms","key":"arg:user"}`, nil},
		{`{"limit":1,"window":"1s","key":"var:http_x_real_ip"}`, nil},
		{`{"limit":1,"window":"1s","key":"consumer","fail_mode":"closed"}`, nil},
		{`{"window":"1s"}`, []string{"limit: is required and must be between 1 and 1000000, got 0"}},
		{`{"limit":-1,"window":"1s"}`, []string{"limit: is required and must be between 1 and 1000000, got -1"}},
		{`{"limit":1000001,"window":"1s"}`, []string{"limit: is required and must be between 1 and 1000000, got 1000001"}},
		{`{"limit":1}`, []string{`window: is required: a duration such as "1s" or "1m"`}},
		{`{"limit":1,"window":"1"}`, []string{`window: must be a duration string such as "1s" or "250ms", got "1"`}},
		{`{"limit":1,"window":1}`, []string{`window: must be a duration string such as "1s" or "250ms", got 1`}},
		{`{"limit":1,"window":"25h"}`, []string{"window: must be between 1ms and 24h, got 25h0m0s"}},
		{`{"limit":1,"window":"1500us"}`, []string{"window: must be a whole number of milliseconds, got 1.5ms"}},
		{`{"limit":1,"window":"-1s"}`, []string{"window: must be between 1ms and 24h, got -1s"}},
		{`{"limit":1,"window":"1s","key":"ip"}`, []string{`key: must be remote_addr, consumer, header:<Name>, arg:<name> or var:<name>, got "ip"`}},
		{`{"limit":1,"window":"1s","key":"header:"}`, []string{`key: header:<Name> needs an HTTP header name (1 to 128 token characters), got "header:"`}},
		{`{"limit":1,"window":"1s","key":"header:X Y"}`, []string{`key: header:<Name> needs an HTTP header name (1 to 128 token characters), got "header:X Y"`}},
		{`{"limit":1,"window":"1s","key":"var:a-b"}`, []string{`key: var:<name> needs an nginx variable name (1 to 64 of A-Z a-z 0-9 _), got "var:a-b"`}},
		{`{"limit":1,"window":"1s","key":"arg:"}`, []string{`key: arg:<name> needs a query argument name (1 to 128 printable characters), got "arg:"`}},
		{`{"limit":1,"window":"1s","name":"a b"}`, []string{`name: must be 1 to 64 characters of A-Z a-z 0-9 _ . -, got "a b"`}},
		{`{"limit":1,"window":"1s","rejected_code":200}`, []string{"rejected_code: must be between 400 and 599, got 200"}},
		{`{"limit":1,"window":"1s","fail_mode":"fallback"}`, []string{`fail_mode: must be one of open, closed, local, got "fallback"`}},
		{`{"limit":1,"window":"1s","tenant_header":"X:T"}`, []string{`tenant_header: must be an HTTP header name (1 to 128 token characters), got "X:T"`}},
		{`{"limit":1,"window":"1s","show_headers":"yes"}`, []string{"show_headers: must be a boolean, got JSON string"}},
		{`{"limit":"10","window":"1s"}`, []string{"limit: must be an integer, got JSON string"}},
		{`{"limit":1,"window":"1s","limt":2}`, []string{"limt: unknown field"}},
		{`{"limit":0,"window":"0s","fail_mode":"x"}`, []string{
			"limit: is required and must be between 1 and 1000000, got 0",
			`window: is required: a duration such as "1s" or "1m"`,
			`fail_mode: must be one of open, closed, local, got "x"`}},
		{``, []string{"conf is empty: want a JSON object"}},
		{`[]`, []string{"conf must be a JSON object"}},
	}
	for _, tt := range tests {
		_, err := ParseConf([]byte(tt.in))
		got := core.Problems(err)
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("ParseConf(%s):\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestParseConfDefaults(t *testing.T) {
	c := mustConf(t, `{"limit":5,"window":"2s"}`)
	if c.Key != "remote_addr" || c.keyKind != keyAddr || c.RejectedCode != 429 || c.failMode != failOpen || !c.show {
		t.Fatalf("got key %q kind %c code %d fail %d show %v, want remote_addr a 429 open true", c.Key, c.keyKind, c.RejectedCode, c.failMode, c.show)
	}
	if c.window != 2*time.Second || string(c.body) != `{"error_msg":"too many requests"}` {
		t.Fatalf("got window %s body %s", c.window, c.body)
	}
	// No name: the counter belongs to the conf, so two different confs
	// never share one, and the same conf always maps to the same one.
	c2 := mustConf(t, `{"limit":6,"window":"2s"}`)
	c3 := mustConf(t, `{"limit":5,"window":"2s"}`)
	if c.ns == c2.ns || c.ns != c3.ns || !strings.HasPrefix(c.ns, "c:") {
		t.Fatalf("got namespaces %q %q %q, want distinct for distinct confs, equal for equal ones", c.ns, c2.ns, c3.ns)
	}
	n := mustConf(t, `{"limit":5,"window":"2s","name":"shared"}`)
	if n.ns != "n:shared" {
		t.Fatalf("got ns %q, want n:shared", n.ns)
	}
}

func FuzzParseConf(f *testing.F) {
	for _, s := range []string{
		`{"limit":10,"window":"1s"}`,
		`{"limit":10,"window":"1m","key":"header:X-Api-Key","name":"api","rejected_code":503,"rejected_msg":"m","fail_mode":"local","show_headers":false,"tenant_header":"X-Tenant-ID"}`,
		`{"limit":1,"window":"1s","key":"var:remote_addr"}`,
		`{"limit":1,"window":"1s","key":"arg:\u0000"}`,
		`{"limit":1e3,"window":"1h"}`,
		`{"limit":1,"window":"1s"}{}`,
		`{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseConf(in)
		if err != nil {
			if c != nil {
				t.Fatalf("got a conf and an error")
			}
			for _, p := range core.Problems(err) {
				if p == "" {
					t.Fatalf("empty problem for %q", in)
				}
			}
			return
		}
		// A valid conf upholds every invariant the request path relies on.
		if c.Limit < 1 || c.Limit > maxLimit || c.window < time.Millisecond || c.window > maxWindow {
			t.Fatalf("accepted limit %d window %s", c.Limit, c.window)
		}
		if c.RejectedCode < 400 || c.RejectedCode > 599 || c.ns == "" || len(c.body) == 0 {
			t.Fatalf("accepted conf with code %d ns %q", c.RejectedCode, c.ns)
		}
		switch c.keyKind {
		case keyAddr, keyConsumer:
		case keyHeader, keyArg, keyVar:
			if c.keyName == "" {
				t.Fatalf("key %q with empty name", c.Key)
			}
		default:
			t.Fatalf("key %q has kind %q", c.Key, c.keyKind)
		}
		if strings.ContainsAny(c.ns, "{}|") {
			t.Fatalf("namespace %q would break the key layout", c.ns)
		}
	})
}

func ExampleParseConf() {
	_, err := ParseConf([]byte(`{"limit":0,"window":"1m","key":"ip"}`))
	for _, p := range core.Problems(err) {
		fmt.Println(p)
	}
	// Output:
	// limit: is required and must be between 1 and 1000000, got 0
	// key: must be remote_addr, consumer, header:<Name>, arg:<name> or var:<name>, got "ip"
}
