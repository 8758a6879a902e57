package clickhouselogger

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBound(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"ab€", 4, "ab"}, // € is 3 bytes: never cut inside it
		{"ab€", 5, "ab€"},
		{"€€", 3, "€"},
		{"", 0, ""},
	}
	for _, tt := range tests {
		got := bound(tt.in, tt.max)
		if got != tt.want || !utf8.ValidString(got) {
			t.Errorf("bound(%q, %d): got %q, want %q", tt.in, tt.max, got, tt.want)
		}
		if got := boundBytes([]byte(tt.in), tt.max); got != tt.want {
			t.Errorf("boundBytes(%q, %d): got %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

func TestParseLatencyMs(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
	}{
		{"0.012", 12}, {"1.5", 1500}, {"0", 0}, {"", 0}, {"-1", 0}, {"abc", 0}, {"NaN", 0},
		{"0.0004", 0}, {"0.0006", 1}, {"1e12", 4294967295},
	}
	for _, tt := range tests {
		if got := parseLatencyMs(tt.in); got != tt.want {
			t.Errorf("parseLatencyMs(%q): got %d, want %d", tt.in, got, tt.want)
		}
	}
}

// composite builds a value as the nginx map of compositeSnippet does.
func composite(fields ...string) string {
	return strings.Join(append([]string{compositeTag}, fields...), "\n")
}

func TestParseComposite(t *testing.T) {
	good := composite("0.042", "POST", "api.example.com", "/v1/items", "203.0.113.9", "curl/8", "", "abc123", "t-1", "alice")
	var r row
	if !parseComposite(good, &r, 1024) {
		t.Fatalf("parseComposite(%q): got false, want true", good)
	}
	want := row{latencyMs: 42, method: "POST", host: "api.example.com", path: "/v1/items", clientIP: "203.0.113.9",
		userAgent: "curl/8", requestID: "abc123", tenant: "t-1", consumer: "alice"}
	if fmt.Sprint(r) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", r, want)
	}
	// What nginx 1.22 returned for the documented snippet (return 200
	// $edge_log_fields; curl -H 'X-Request-Id: rid-1' /x): the empty
	// tenant and consumer at the end are fields too.
	r = row{}
	if !parseComposite("e1\n0.000\nGET\n127.0.0.1\n/x\n127.0.0.1\ncurl/7.88.1\nrid-1\n4a34d29a284066d8c089284ff47bf2bd\n\n", &r, 1024) ||
		r.path != "/x" || r.requestID != "rid-1" || r.userAgent != "curl/7.88.1" || r.tenant != "" || r.consumer != "" {
		t.Errorf("real nginx value: got %+v", r)
	}
	// X-Request-Id wins over $request_id.
	r = row{}
	parseComposite(composite("0", "GET", "h", "/", "ip", "ua", "client-id", "nginx-id", "", ""), &r, 1024)
	if r.requestID != "client-id" {
		t.Errorf("got request id %q, want the X-Request-Id header's", r.requestID)
	}
	// Values are bounded.
	r = row{}
	parseComposite(composite("0", "GET", "h", "/"+strings.Repeat("p", 100), "ip", strings.Repeat("u", 100), "", "", "", ""), &r, 16)
	if len(r.path) != 16 || len(r.userAgent) != 16 {
		t.Errorf("got path %d bytes, ua %d bytes, want 16 each", len(r.path), len(r.userAgent))
	}
	for _, bad := range []string{
		"",
		"e1",
		"e2\n" + strings.Repeat("x\n", 9) + "x",
		composite("0", "GET", "h", "/a\n/b", "ip", "ua", "", "", "", ""), // a separator inside a value
		composite("0", "GET", "h", "/", "ip", "ua", "", "", ""),          // one field short
		"e1x" + composite("0", "GET", "h", "/", "ip", "ua", "", "", "", "")[2:],
	} {
		r := row{method: "untouched"}
		if parseComposite(bad, &r, 1024) || r.method != "untouched" {
			t.Errorf("parseComposite(%q): got true or a changed row, want false and the row untouched", bad)
		}
	}
}

// TestCompositeSnippet: the snippet the docs show lists exactly the fields
// parseComposite reads, in its order.
func TestCompositeSnippet(t *testing.T) {
	s := compositeSnippet("edge_log_fields", "http_x_tenant_id")
	want := "map $request_method $edge_log_fields {\n    default \"e1" +
		`\n${request_time}\n${request_method}\n${host}\n${uri}\n${remote_addr}\n${http_user_agent}` +
		`\n${http_x_request_id}\n${request_id}\n${http_x_tenant_id}\n${http_x_edge_consumer}` + "\";\n}\n"
	if s != want {
		t.Errorf("got snippet\n%s\nwant\n%s", s, want)
	}
	if n := strings.Count(s, `\n`); n != compositeFields-1 {
		t.Errorf("got %d separators, want %d", n, compositeFields-1)
	}
}

func FuzzParseComposite(f *testing.F) {
	f.Add(composite("0.042", "POST", "h", "/", "ip", "ua", "", "id", "t", "c"), 64)
	f.Add("e1\n\n\n\n\n\n\n\n\n\n", 16)
	f.Add("e1\n€€€€€€€", 16)
	f.Fuzz(func(t *testing.T, v string, max int) {
		if max < 16 || max > 4096 {
			return
		}
		var r row
		if !parseComposite(v, &r, max) {
			return
		}
		for _, s := range []string{r.method, r.host, r.path, r.clientIP, r.userAgent, r.requestID, r.tenant, r.consumer} {
			if len(s) > max || strings.Contains(s, "\n") {
				t.Fatalf("field %q escapes its bound %d or holds a separator", s, max)
			}
		}
	})
}

// TestDocSnippet: docs/clickhouselogger.md shows exactly the snippet that
// parseComposite reads, in nginx form and indented for APISIX's config.yaml.
func TestDocSnippet(t *testing.T) {
	doc, err := os.ReadFile("../../docs/clickhouselogger.md")
	if err != nil {
		t.Fatal(err)
	}
	snip := compositeSnippet(DefaultClickHouseCompositeVar, "http_x_tenant_id")
	if !strings.Contains(string(doc), "```nginx\n"+snip+"```") {
		t.Errorf("the doc's nginx snippet differs from\n%s", snip)
	}
	var yaml strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimSuffix(snip, "\n"), "\n") {
		yaml.WriteString("    " + l)
	}
	if !strings.Contains(string(doc), "http_configuration_snippet: |\n"+yaml.String()+"\n```") {
		t.Errorf("the doc's config.yaml snippet differs from\n%s", yaml.String())
	}
}
