package jwtcache

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

func testJWKSConfig() Config {
	return mustConfig("jwks:\n  providers:\n    - name: kc\n      url: https://idp.example/certs\n")
}

// mustConfig decodes a runner config document holding a jwks section, with
// the defaults applied and validated.
func mustConfig(doc string) Config {
	var c struct {
		JWKS Config `yaml:"jwks"`
	}
	if err := core.DecodeYAML([]byte(doc), nil, &c); err != nil {
		panic(err)
	}
	c.JWKS.ApplyDefaults()
	if err := errors.Join(c.JWKS.Validate()...); err != nil {
		panic(err)
	}
	return c.JWKS
}

func TestParseConf(t *testing.T) {
	cfg := testJWKSConfig()
	tests := []struct {
		conf  string
		want  []string // problems; nil = valid
		check func(*routeConf) string
	}{
		{conf: `{"provider":"kc"}`, check: func(rc *routeConf) string {
			if rc.sources[0].kind != fromBearer || rc.leeway != 30*time.Second || len(rc.algList) != 10 || rc.algs["HS256"] {
				return fmt.Sprintf("defaults: got source %v leeway %s algs %v", rc.sources, rc.leeway, rc.algList)
			}
			return ""
		}},
		{conf: `{"provider":"kc","leeway":"0s","audience":"api","algorithms":["RS256"]}`, check: func(rc *routeConf) string {
			if rc.leeway != 0 || len(rc.audience) != 1 || rc.audience[0] != "api" || len(rc.algList) != 1 {
				return fmt.Sprintf("got leeway %s audience %v algs %v", rc.leeway, rc.audience, rc.algList)
			}
			return ""
		}},
		{conf: `{"provider":"kc","audience":["a","b"],"token_header":"x-token","claims_to_headers":{"sub":"x-user-id","tenant_id":"X-Tenant-ID"}}`, check: func(rc *routeConf) string {
			if len(rc.audience) != 2 || rc.sources[0] != (tokenSource{kind: fromHeader, name: "X-Token"}) || len(rc.headers) != 2 || rc.headers[0].header != "X-User-Id" {
				return fmt.Sprintf("got %+v", rc)
			}
			return ""
		}},
		{conf: `{"provider":"kc","token_header":"authorization"}`, check: func(rc *routeConf) string {
			if rc.sources[0].kind != fromBearer {
				return "authorization header must mean the Bearer scheme"
			}
			return ""
		}},
		{conf: `{"jwks_url":"https://idp/certs","token_cookie":"at"}`, check: func(rc *routeConf) string {
			if rc.jwksURL != "https://idp/certs" || rc.sources[0] != (tokenSource{kind: fromCookie, name: "at"}) {
				return fmt.Sprintf("got %+v", rc)
			}
			return ""
		}},
		{conf: `{}`, want: []string{"provider: is required (or providers, or jwks_url)"}},
		{conf: `{"provder":"kc"}`, want: []string{"provder: unknown field"}},
		{conf: `{"provider":"nope"}`, want: []string{`provider: "nope" is not in the runner config's jwks.providers (known: kc)`}},
		{conf: `{"provider":"kc","jwks_url":"https://a/"}`, want: []string{"provider: set exactly one of provider, providers and jwks_url"}},
		{conf: `{"jwks_url":"file:///etc/passwd"}`, want: []string{`jwks_url: must be an http or https URL, got scheme "file"`}},
		{conf: `{"provider":"kc","algorithms":["HS256"]}`, want: []string{`algorithms[0]: "HS256" is symmetric`}},
		{conf: `{"provider":"kc","algorithms":["none"]}`, want: []string{`algorithms[0]: "none" is never accepted`}},
		{conf: `{"provider":"kc","algorithms":["RS256","RS256","XS1"]}`, want: []string{`algorithms[1]: duplicate "RS256"`, `algorithms[2]: must be one of`}},
		{conf: `{"provider":"kc","leeway":"10m"}`, want: []string{"leeway: must be between 0s and 5m, got 10m0s"}},
		{conf: `{"provider":"kc","leeway":30}`, want: []string{"leeway: must be a duration string"}},
		{conf: `{"provider":"kc","audience":3}`, want: []string{"audience: must be a string or a list of strings"}},
		{conf: `{"provider":"kc","audience":[""]}`, want: []string{"audience[0]: must not be empty"}},
		{conf: `{"provider":"kc","token_header":"a","token_query":"b"}`, want: []string{"token_header: set at most one of token_header, token_cookie and token_query"}},
		{conf: `{"provider":"kc","token_header":"bad header"}`, want: []string{`token_header: must be an HTTP header name, got "bad header"`}},
		{conf: `{"provider":"kc","claims_to_headers":{"sub":"Authorization"}}`, want: []string{`claims_to_headers.sub: "Authorization" is reserved`}},
		{conf: `{"provider":"kc","claims_to_headers":{"sub":"x-edge-consumer"}}`, want: []string{`claims_to_headers.sub: "x-edge-consumer" is set by the plugin itself from consumer_claim`}},
		{conf: `{"provider":"kc","claims_to_headers":{"a":"X-A","b":"x-a"}}`, want: []string{`claims_to_headers.b: header "x-a" is also the target of claim "a"`}},
		{conf: `{"provider":"kc","claims_to_headers":{"a":"X\r\nY"}}`, want: []string{"claims_to_headers.a: must be an HTTP header name"}},
		{conf: `{"provider":"kc","token_header":"X-T","claims_to_headers":{"a":"x-t"}}`, want: []string{`claims_to_headers.a: "x-t" is a token header`}},
		{conf: `{"provider":"kc","required_claims":["tenant","",  "tenant"]}`, want: []string{"required_claims[1]: must not be empty", `required_claims[2]: duplicate "tenant"`}},
		{conf: `not json`, want: []string{"conf must be a JSON object"}},
	}
	for _, tt := range tests {
		rc, err := parseConf(&cfg, []byte(tt.conf))
		got := core.Problems(err)
		if tt.want == nil {
			if err != nil {
				t.Errorf("parseConf(%s): got %q, want no problem", tt.conf, got)
				continue
			}
			if tt.check != nil {
				if msg := tt.check(rc); msg != "" {
					t.Errorf("parseConf(%s): %s", tt.conf, msg)
				}
			}
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("parseConf(%s): got %q, want %d problems %q", tt.conf, got, len(tt.want), tt.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tt.want[i]) {
				t.Errorf("parseConf(%s) problem %d: got %q, want prefix %q", tt.conf, i, got[i], tt.want[i])
			}
		}
	}
}

func TestInlineProvidersAreBounded(t *testing.T) {
	m, _, _ := testModule(t, Config{MaxInlineProviders: 2}, time.Now)
	for i, u := range []string{"https://a/certs", "https://b/certs", "https://a/certs"} {
		if _, err := m.ParseConf([]byte(`{"jwks_url":"` + u + `"}`)); err != nil {
			t.Fatalf("conf %d: got %v, want ok", i, err)
		}
	}
	_, err := m.ParseConf([]byte(`{"jwks_url":"https://c/certs"}`))
	if err == nil || !strings.Contains(err.Error(), "jwks_url: too many distinct jwks_url providers: at most 2") {
		t.Fatalf("third distinct url: got %v, want the bound named", err)
	}
	forbidden, _, _ := testModule(t, Config{MaxInlineProviders: -1}, time.Now)
	if _, err := forbidden.ParseConf([]byte(`{"jwks_url":"https://a/certs"}`)); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("max_inline_providers -1: got %v, want jwks_url disabled", err)
	}
}

func TestExtractToken(t *testing.T) {
	const tok = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	bearer := tokenSource{kind: fromBearer}
	tests := []struct {
		name   string
		src    tokenSource
		hdr    http.Header
		args   url.Values
		want   string
		reason reason
	}{
		{"bearer", bearer, http.Header{"Authorization": {"Bearer " + tok}}, nil, tok, ""},
		{"bearer lower-case scheme and spaces", bearer, http.Header{"Authorization": {"  bearer   " + tok + " "}}, nil, tok, ""},
		{"no header", bearer, http.Header{}, nil, "", reasonMissingToken},
		{"basic scheme", bearer, http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, nil, "", reasonMissingToken},
		{"bearer without token", bearer, http.Header{"Authorization": {"Bearer "}}, nil, "", reasonMissingToken},
		{"two segments", bearer, http.Header{"Authorization": {"Bearer a.b"}}, nil, "", reasonMalformed},
		{"four segments", bearer, http.Header{"Authorization": {"Bearer a.b.c.d"}}, nil, "", reasonMalformed},
		{"empty payload", bearer, http.Header{"Authorization": {"Bearer a..c"}}, nil, "", reasonMalformed},
		{"padding", bearer, http.Header{"Authorization": {"Bearer a=.b.c"}}, nil, "", reasonMalformed},
		{"alg none shape passes to the parser", bearer, http.Header{"Authorization": {"Bearer a.b."}}, nil, "a.b.", ""},
		{"too large", bearer, http.Header{"Authorization": {"Bearer " + strings.Repeat("a", 300) + ".b.c"}}, nil, "", reasonTooLarge},
		{"named header", tokenSource{kind: fromHeader, name: "X-Token"}, http.Header{"X-Token": {tok}}, nil, tok, ""},
		{"named header tolerates Bearer", tokenSource{kind: fromHeader, name: "X-Token"}, http.Header{"X-Token": {"Bearer " + tok}}, nil, tok, ""},
		{"cookie", tokenSource{kind: fromCookie, name: "at"}, http.Header{"Cookie": {"a=1; at=" + tok + "; b=2"}}, nil, tok, ""},
		{"quoted cookie in a second line", tokenSource{kind: fromCookie, name: "at"}, http.Header{"Cookie": {"x=y", `at="` + tok + `"`}}, nil, tok, ""},
		{"cookie name is exact", tokenSource{kind: fromCookie, name: "at"}, http.Header{"Cookie": {"xat=" + tok}}, nil, "", reasonMissingToken},
		{"query", tokenSource{kind: fromQuery, name: "access_token"}, nil, url.Values{"access_token": {tok}}, tok, ""},
		{"query missing", tokenSource{kind: fromQuery, name: "access_token"}, nil, url.Values{}, "", reasonMissingToken},
	}
	for _, tt := range tests {
		// the header as a map, and as the server lends it (no copy)
		for _, hdr := range []headerReader{tt.hdr, peekHeader{tt.hdr}} {
			tok, why := extractFrom(tt.src, hdr, argsOf(tt.args), 256)
			got := tok.String()
			if why == "" && !jwsShape(got) { // what verify checks first on a miss
				got, why = "", reasonMalformed
			}
			if got != tt.want || why != tt.reason {
				t.Errorf("%s (%T): got (%q, %q), want (%q, %q)", tt.name, hdr, got, why, tt.want, tt.reason)
			}
		}
	}
}

func FuzzParseConf(f *testing.F) {
	cfg := mustConfig(`jwks:
  providers:
    - name: kc
      url: https://idp.example/certs
    - name: a
      url: https://idp.example/a/certs
      issuer: https://idp.example/realms/a
    - name: b
      issuer: https://idp.example/realms/b
      discovery: true
`)
	for _, s := range []string{
		`{"provider":"kc"}`,
		`{"jwks_url":"https://a/b","issuer":"x","audience":["a"],"algorithms":["ES256"],"leeway":"1s"}`,
		`{"provider":"kc","token_cookie":"c","claims_to_headers":{"sub":"X-U"},"required_claims":["t"]}`,
		`{"provider":"kc","audience":"a","token_query":"q"}`,
		`{"leeway":null,"audience":null}`,
		`{"providers":["a","b"],"token_sources":["header:Authorization","cookie:at","query:jwt"],"hide_credentials":true}`,
		`{"provider":"a","claims_to_headers":{"realm_access.roles":"X-Roles"},"forward_payload_header":"X-P","anonymous":true}`,
		`{"provider":"kc","required_scopes":["a","b"],"required_claim_values":{"t":["x"],"o.t":"y"},"max_lifetime":"1h"}`,
		`{"provider":"kc","consumer_claim":"azp","bypass_cors_preflight":true,"realm":"shop"}`,
		`{"provider":"kc","issuer":"","audience":[],"algorithms":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rc, err := parseConf(&cfg, data)
		if err != nil {
			return
		}
		if len(rc.provs) == 0 || len(rc.sources) == 0 || len(rc.algList) == 0 {
			t.Fatalf("accepted a conf without a provider, a token source or an algorithm: %s", data)
		}
		for a := range rc.algs {
			if !slices.Contains(asymmetric, a) {
				t.Fatalf("accepted algorithm %q", a)
			}
		}
		if rc.audience != nil && (len(rc.audience) == 0 || slices.Contains(rc.audience, "")) {
			t.Fatalf("accepted an empty audience: %s", data)
		}
		for _, rp := range rc.provs {
			if len(rc.provs) > 1 && rp.issuer == "" {
				t.Fatalf("accepted several providers, one without issuer: %s", data)
			}
		}
		for _, h := range append(slices.Clone(rc.strip), rc.payloadHdr) {
			if reservedHeaders[h] {
				t.Fatalf("accepted reserved header %q as a target: %s", h, data)
			}
		}
		for _, v := range []string{rc.authMissing, rc.authInvalid, rc.authScope} {
			if strings.ContainsAny(v, "\r\n") || !strings.HasPrefix(v, "Bearer") {
				t.Fatalf("WWW-Authenticate %q from %s", v, data)
			}
		}
		if !slices.Contains(rc.strip, "X-Edge-Consumer") {
			t.Fatalf("X-Edge-Consumer not stripped: %s", data)
		}
	})
}

func FuzzExtractToken(f *testing.F) {
	f.Add("Bearer a.b.c", "at=a.b.c", "a.b.c", uint8(0))
	f.Add("bearer  x.y.", "x=1; at=\"a.b.c\"", "", uint8(2))
	f.Add("Basic zzz", ";;=;at", "a..b", uint8(3))
	f.Fuzz(func(t *testing.T, auth, cookie, query string, kind uint8) {
		src := []tokenSource{{kind: fromBearer}, {kind: fromHeader, name: "Authorization"}, {kind: fromCookie, name: "at"}, {kind: fromQuery, name: "q"}}[kind%4]
		hdr := http.Header{"Authorization": {auth}, "Cookie": {cookie}}
		found, why := extractFrom(src, hdr, argsOf(url.Values{"q": {query}}), 512)
		tok := found.String()
		lent, lentWhy := extractFrom(src, peekHeader{hdr}, argsOf(url.Values{"q": {query}}), 512)
		if lent.String() != tok || lentWhy != why {
			t.Fatalf("through PeekHeader (%q, %q), through Get (%q, %q)", lent.String(), lentWhy, tok, why)
		}
		if why == "" {
			if len(tok) > 512 || tok == "" || tok != strings.Trim(tok, " \t") {
				t.Fatalf("accepted %q", tok)
			}
		} else if tok != "" {
			t.Fatalf("reason %q with token %q", why, tok)
		}
	})
}

func ExampleValidateConf() {
	cfg := mustConfig("jwks:\n  providers:\n    - name: keycloak\n      url: https://kc.example/realms/main/protocol/openid-connect/certs\n")
	for _, conf := range []string{
		`{"provider":"keycloak","audience":"api","claims_to_headers":{"sub":"X-User-ID","realm_access.roles":"X-Roles"},"hide_credentials":true}`,
		`{"provider":"keycloack","algorithms":["HS256"]}`,
		`{"provider":"keycloak","audience":[],"token_sources":["body:token"],"required_scopes":["a b"]}`,
	} {
		fmt.Println(core.Problems(ValidateConf(&cfg, []byte(conf))))
	}
	// Output:
	// []
	// [provider: "keycloack" is not in the runner config's jwks.providers (known: keycloak) algorithms[0]: "HS256" is symmetric: a JWKS holds public keys, so HMAC would let anyone sign (algorithm confusion)]
	// [audience: must not be empty: leave it out to not check aud token_sources[0]: must start with "header:", "cookie:" or "query:", got "body:token" required_scopes[0]: must be a scope token (RFC 6749 3.3: printable ASCII, no space, quote or backslash), got "a b"]
}

// argsOf is query arguments as a request offers them.
type argsOf url.Values

func (a argsOf) Args() url.Values { return url.Values(a) }
