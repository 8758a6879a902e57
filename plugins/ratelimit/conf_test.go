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
		{`{"limit":1,"window":"25h"}`, []string{"window: must be between 1ms and 24h with sliding_log, got 25h0m0s"}},
		{`{"limit":1,"window":"1500us"}`, []string{"window: must be a whole number of milliseconds, got 1.5ms"}},
		{`{"limit":1,"window":"-1s"}`, []string{"window: must be between 1ms and 24h with sliding_log, got -1s"}},
		{`{"limit":1,"window":"1s","key":"ip"}`, []string{`key: must be remote_addr, consumer, route, header:<Name>, arg:<name>, var:<name> or const:<name>, got "ip"`}},
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
		// v2: algorithms, rules, cost, keys, modes, headers, delayed sync.
		{`{"limit":9007199254740992,"window":"8784h","algorithm":"fixed_window"}`, nil},
		{`{"limit":9007199254740993,"window":"8785h","algorithm":"sliding_window"}`, []string{
			"limit: is required and must be between 1 and 9007199254740992, got 9007199254740993",
			"window: must be between 1ms and 366 days (8784h) with sliding_window, got 8785h0m0s"}},
		{`{"limit":1,"window":"1s","algorithm":"token_bucket"}`, []string{`algorithm: must be one of sliding_log, sliding_window, fixed_window, got "token_bucket"`}},
		{`{"rules":[{"limit":10,"window":"1s"},{"limit":10000,"window":"24h","algorithm":"fixed_window"}],"key":["consumer","header:X-Api-Key"]}`, nil},
		{`{"limit":5,"rules":[{"limit":10,"window":"1s"}]}`, []string{"limit: must not be set with rules (each rule has its own), got 5"}},
		{`{"rules":[]}`, []string{"rules: must hold 1 to 8 rules, got an empty list"}},
		{`{"rules":{}}`, []string{"rules: must be a list of rule objects {limit, window, key, algorithm, cost}"}},
		{`{"rules":[{"limit":10,"window":"1s","burst":3},{"window":"2s","key":"ip"}]}`, []string{
			"rules[0].burst: unknown field",
			"rules[1].limit: is required and must be between 1 and 1000000, got 0",
			`rules[1].key: must be remote_addr, consumer, route, header:<Name>, arg:<name>, var:<name> or const:<name>, got "ip"`}},
		{`{"rules":[{"limit":10,"window":"1s"},{"limit":20,"window":"1s"}]}`, []string{"rules[1]: has the same algorithm, window and key as rules[0]"}},
		{`{"rules":[{"limit":10,"window":"1s","key":"const:all"},{"limit":20,"window":"1s","key":["route","arg:u"]}]}`, nil},
		{`{"limit":1,"window":"1s","key":["consumer","consumer"]}`, []string{`key: has the part "consumer" twice`}},
		{`{"limit":1,"window":"1s","key":["a","b","c","d","e"]}`, []string{"key: must have 1 to 4 parts, got 5"}},
		{`{"limit":1,"window":"1s","key":"const:"}`, []string{`key: const:<name> needs 1 to 64 characters of A-Z a-z 0-9 _ . -, got "const:"`}},
		{`{"limit":1,"window":"1s","key":7}`, []string{"key: must be a key part string or a list of them"}},
		{`{"limit":100,"window":"1s","cost":5}`, nil},
		{`{"limit":100,"window":"1s","cost":"header:X-Cost","max_cost":50}`, nil},
		{`{"limit":100,"window":"1s","cost":0}`, []string{"cost: must be between 1 and max_cost (1000), got 0"}},
		{`{"limit":100,"window":"1s","cost":"body"}`, []string{`cost: must be an integer, "header:<Name>" or "var:<nginx variable>", got "body"`}},
		{`{"limit":100,"window":"1s","cost":1.5}`, []string{`cost: must be an integer or "header:<Name>" / "var:<name>", got 1.5`}},
		{`{"limit":100,"window":"1s","max_cost":5000}`, []string{"max_cost: must be at most 1000 with sliding_log (one entry per unit), got 5000"}},
		{`{"limit":100,"window":"1s","algorithm":"fixed_window","max_cost":5000,"cost":4000}`, nil},
		{`{"limit":1,"window":"1s","mode":"shadow","headers":"both"}`, nil},
		{`{"limit":1,"window":"1s","mode":"dry","headers":"draft"}`, []string{
			`mode: must be enforce or shadow, got "dry"`,
			`headers: must be one of x, ietf, both, none, got "draft"`}},
		{`{"limit":1,"window":"1s","show_headers":false,"headers":"ietf"}`, []string{`show_headers: false contradicts headers "ietf" (use headers: none)`}},
		{`{"limit":1,"window":"1s","algorithm":"fixed_window","sync_interval":"100ms"}`, nil},
		{`{"limit":1,"window":"1s","sync_interval":"5ms"}`, []string{
			"sync_interval: must be between 10ms and 1m, got 5ms",
			"sync_interval: needs sliding_window or fixed_window in every rule, rule 0 is sliding_log"}},
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
	if len(c.parts) != 1 || c.parts[0].kind != keyAddr || c.RejectedCode != 429 || c.failMode != failOpen || !c.show || !c.hdrX || c.hdrIETF || c.shadow {
		t.Fatalf("got key %v code %d fail %d show %v x %v ietf %v shadow %v, want remote_addr 429 open, X-RateLimit headers, enforce", c.parts, c.RejectedCode, c.failMode, c.show, c.hdrX, c.hdrIETF, c.shadow)
	}
	r := c.rules[0]
	if len(c.rules) != 1 || r.window != 2*time.Second || r.alg != algSlidingLog || r.cost.fixed != 1 || r.suffix != "" || string(c.body) != `{"error_msg":"too many requests"}` {
		t.Fatalf("got rules %+v body %s, want one sliding_log rule of cost 1 on v1's key", c.rules, c.body)
	}
	if c.MaxCost != 1000 || c.Headers != "x" || c.Mode != "enforce" || c.SyncInterval != 0 {
		t.Fatalf("got max_cost %d headers %q mode %q sync %s, want 1000 x enforce 0", c.MaxCost, c.Headers, c.Mode, c.SyncInterval)
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
		`{"rules":[{"limit":10,"window":"1s","cost":2},{"limit":9,"window":"24h","algorithm":"fixed_window","key":["consumer","const:x"]}],"mode":"shadow","headers":"ietf"}`,
		`{"limit":5,"window":"1h","algorithm":"sliding_window","cost":"var:bytes","max_cost":99,"sync_interval":"1s"}`,
		`{"rules":[{"rules":[]}]}`,
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
		if len(c.rules) < 1 || len(c.rules) > maxRules || len(c.parts) > maxRules*maxKeyParts {
			t.Fatalf("accepted %d rules, %d key parts", len(c.rules), len(c.parts))
		}
		for _, r := range c.rules {
			maxL, maxW := int64(maxLimitO1), maxWindowO1
			if r.alg == algSlidingLog {
				maxL, maxW = maxLimit, maxWindow
			}
			if r.limit < 1 || r.limit > maxL || r.window < time.Millisecond || r.window > maxW || r.window%time.Millisecond != 0 {
				t.Fatalf("accepted limit %d window %s for %c", r.limit, r.window, r.alg)
			}
			if len(r.parts) < 1 || len(r.parts) > maxKeyParts {
				t.Fatalf("accepted a rule with %d key parts", len(r.parts))
			}
			if r.cost.fixed == 0 && r.cost.name == "" || r.cost.fixed > c.MaxCost || r.alg == algSlidingLog && r.cost.fixed > maxCostLog {
				t.Fatalf("accepted cost %+v (max_cost %d) for %c", r.cost, c.MaxCost, r.alg)
			}
			if c.SyncInterval != 0 && r.alg == algSlidingLog {
				t.Fatalf("accepted delayed sync with sliding_log")
			}
		}
		if c.RejectedCode < 400 || c.RejectedCode > 599 || c.ns == "" || len(c.body) == 0 {
			t.Fatalf("accepted conf with code %d ns %q", c.RejectedCode, c.ns)
		}
		for _, p := range c.parts {
			switch p.kind {
			case keyAddr, keyConsumer:
			case keyHeader, keyArg, keyVar, keyConst, keyRoute:
				if p.name == "" || strings.ContainsAny(p.name, "{}|") && p.kind == keyConst {
					t.Fatalf("key part %+v with a bad name", p)
				}
			default:
				t.Fatalf("key part has kind %q", p.kind)
			}
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
	// key: must be remote_addr, consumer, route, header:<Name>, arg:<name>, var:<name> or const:<name>, got "ip"
}

// ExampleParseConf_rules shows a conf with several rules and the way a
// problem names its rule.
func ExampleParseConf_rules() {
	c, err := ParseConf([]byte(`{"key":"consumer","headers":"ietf","rules":[
		{"limit":10,"window":"1s"},
		{"limit":10000,"window":"24h","algorithm":"fixed_window"}]}`))
	fmt.Println(len(c.rules), c.KeysOnConsumer(), err)
	_, err = ParseConf([]byte(`{"rules":[{"limit":10,"window":"1s"},{"limit":5,"window":"400d","algorithm":"fixed_window"}]}`))
	for _, p := range core.Problems(err) {
		fmt.Println(p)
	}
	// Output:
	// 2 true <nil>
	// rules[1].window: must be a duration string such as "1s" or "250ms", got "400d"
}

func FuzzParseOverride(f *testing.F) {
	for _, s := range []string{"500", "500/1m", "unlimited", " 7/250ms ", "9007199254740992/8784h", "0", "-1/1s", "5/", "/1s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOverride(s)
		if err != nil {
			if o != (override{}) {
				t.Fatalf("got %+v with an error", o)
			}
			return
		}
		if o.unlimited {
			if o.limit != 0 || o.window != 0 {
				t.Fatalf("unlimited with limit %d window %s", o.limit, o.window)
			}
			return
		}
		if o.limit < 1 || o.limit > maxLimitO1 || o.window < 0 || o.window > maxWindowO1 || o.window%time.Millisecond != 0 {
			t.Fatalf("accepted %q as %+v", s, o)
		}
	})
}
