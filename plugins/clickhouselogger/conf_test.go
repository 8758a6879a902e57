package clickhouselogger

import (
	"strings"
	"testing"

	"github.com/apisix-edge/edge-runner/core"
)

func TestParseConf(t *testing.T) {
	tests := []struct {
		in   string
		want string // problems joined by "|"; "" means valid
		// checks on a valid conf
		ratio   float64
		table   string
		req     string
		reqVars string
		resp    string
	}{
		{in: `{}`, ratio: 1},
		{in: ``, ratio: 1},
		{in: `  `, ratio: 1},
		{in: `{"sample_ratio":1}`, ratio: 1},
		{in: `{"sample_ratio":0}`, ratio: 0},
		{in: `{"sample_ratio":0.25,"table":"edge_api"}`, ratio: 0.25, table: "edge_api"},
		{in: `{"req_headers":["X-Foo","x-bar-baz"],"resp_headers":["Content-Type"]}`, ratio: 1,
			req: "x-foo,x-bar-baz", reqVars: "http_x_foo,http_x_bar_baz", resp: "content-type"},
		{in: `{"route_id":"checkout"}`, ratio: 1},
		{in: `{"sample_ratio":1.5}`, want: "sample_ratio: must be between 0 and 1, got 1.5"},
		{in: `{"sample_ratio":-0.1}`, want: "sample_ratio: must be between 0 and 1, got -0.1"},
		{in: `{"sample_ratio":"1"}`, want: "sample_ratio: must be a number, got JSON string"},
		{in: `{"table":"bad-name"}`, want: `table: must be letters, digits and '_', not starting with a digit, got "bad-name"`},
		{in: `{"table":"1x"}`, want: `table: must be letters, digits and '_', not starting with a digit, got "1x"`},
		{in: `{"tabel":"x"}`, want: "tabel: unknown field"},
		{in: `{"req_headers":["X Foo"]}`, want: `req_headers[0]: must be an HTTP header name, got "X Foo"`},
		{in: `{"req_headers":["a","A"]}`, want: `req_headers[1]: duplicate header "A"`},
		{in: `{"resp_headers":[""]}`, want: `resp_headers[0]: must be an HTTP header name, got ""`},
		{in: `{"resp_headers":"Content-Type"}`, want: "resp_headers: must be a list, got JSON string"},
		{in: `{"req_headers":[` + strings.Repeat(`"a",`, 32) + `"b"]}`, want: "req_headers: must list at most 32 headers, got 33"},
		{in: `{"route_id":"` + strings.Repeat("r", 129) + `"}`, want: "route_id: must be at most 128 bytes, got 129"},
		{in: `{"sample_ratio":2,"table":"a b"}`, want: `table: must be letters, digits and '_', not starting with a digit, got "a b"|sample_ratio: must be between 0 and 1, got 2`},
		{in: `{"sample_ratio":2,"resp_hedaers":["X"]}`, want: "resp_hedaers: unknown field|sample_ratio: must be between 0 and 1, got 2"},
		{in: `[]`, want: "conf must be a JSON object"},
		{in: `{"table":"x"} {}`, want: "unexpected data after the JSON object"},
	}
	for _, tt := range tests {
		c, err := parseConf([]byte(tt.in))
		got := strings.Join(core.Problems(err), "|")
		if got != tt.want {
			t.Errorf("parseConf(%s): got problems %q, want %q", tt.in, got, tt.want)
			continue
		}
		if err != nil {
			continue
		}
		if c.ratio != tt.ratio || c.table != tt.table || strings.Join(c.reqNames, ",") != tt.req ||
			strings.Join(c.reqVars, ",") != tt.reqVars || strings.Join(c.respNames, ",") != tt.resp {
			t.Errorf("parseConf(%s): got %+v, want ratio %v table %q req %q vars %q resp %q", tt.in, c, tt.ratio, tt.table, tt.req, tt.reqVars, tt.resp)
		}
	}
}

func FuzzParseConf(f *testing.F) {
	for _, s := range []string{
		`{}`, ``, `{"sample_ratio":0.5}`, `{"table":"t","req_headers":["X-A"],"resp_headers":["B"]}`,
		`{"route_id":"x","sample_ratio":1e308}`, `{"req_headers":[null]}`, `{"sample_ratio":null}`,
		`{"table":"\u0000"}`, `{"resp_headers":["a","a"]}`, `{`, `nul`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := parseConf(in)
		if err != nil {
			if c != nil {
				t.Fatalf("got a conf and an error")
			}
			for _, p := range core.Problems(err) {
				if p == "" {
					t.Fatalf("empty problem in %v", err)
				}
			}
			return
		}
		// A valid conf is safe for the request path.
		if !(c.ratio >= 0 && c.ratio <= 1) || len(c.reqNames) != len(c.reqVars) ||
			len(c.reqNames) > maxConfHeaders || len(c.respNames) > maxConfHeaders || len(c.routeID) > maxRouteIDLen {
			t.Fatalf("parseConf(%q) accepted %+v", in, c)
		}
		for _, n := range append(append([]string{}, c.reqNames...), c.respNames...) {
			if n == "" || strings.ToLower(n) != n {
				t.Fatalf("parseConf(%q): header name %q not lower-cased", in, n)
			}
		}
	})
}
