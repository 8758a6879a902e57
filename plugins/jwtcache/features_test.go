package jwtcache

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	idpsrv "github.com/apisix-edge/edge-runner/testbed/idp"
)

func TestParseConfV2Fields(t *testing.T) {
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
    - name: b2
      url: https://idp.example/b2/certs
      issuer: https://idp.example/realms/b
`)
	tests := []struct {
		conf string
		want []string // problems; nil = valid
	}{
		{`{"provider":"kc","token_sources":["header:Authorization","cookie:at","query:jwt","header:X-Token"],"hide_credentials":true}`, nil},
		{`{"provider":"kc","token_sources":[]}`, []string{"token_sources: must list 1 to 8 sources, got 0"}},
		{`{"provider":"kc","token_sources":["header:a","header:b","header:c","header:d","header:e","header:f","header:g","header:h","header:i"]}`, []string{"token_sources: must list 1 to 8 sources, got 9"}},
		{`{"provider":"kc","token_sources":["bearer"]}`, []string{`token_sources[0]: must be "header:<name>", "cookie:<name>" or "query:<name>", got "bearer"`}},
		{`{"provider":"kc","token_sources":["body:x"]}`, []string{`token_sources[0]: must start with "header:", "cookie:" or "query:", got "body:x"`}},
		{`{"provider":"kc","token_sources":["header:bad name"]}`, []string{`token_sources[0]: must be an HTTP header name, got "bad name"`}},
		{`{"provider":"kc","token_sources":["header:Cookie"]}`, []string{`token_sources[0]: "Cookie" cannot hold a token`}},
		{`{"provider":"kc","token_sources":["cookie:a;b"]}`, []string{`token_sources[0]: must be a cookie name`}},
		{`{"provider":"kc","token_sources":["header:authorization","header:Authorization"]}`, []string{`token_sources[1]: duplicate "header:Authorization"`}},
		{`{"provider":"kc","token_sources":["query:q"],"token_query":"q"}`, []string{"token_sources: set either token_sources or token_header/token_cookie/token_query, not both"}},
		{`{"provider":"kc","hide_credentials":"yes"}`, []string{"hide_credentials: must be a boolean"}},
		{`{"provider":"kc","claims_to_headers":{"realm_access.roles":"X-Roles","resource_access.shop.roles":"X-Shop-Roles"}}`, nil},
		{`{"provider":"kc","claims_to_headers":{"a..b":"X-A"}}`, []string{`claims_to_headers.a..b: claim a dotted path must not have empty segments`}},
		{`{"provider":"kc","claims_to_headers":{"a.b.c.d.e.f.g.h.i":"X-A"}}`, []string{"claims_to_headers.a.b.c.d.e.f.g.h.i: claim a path of at most 8 segments, got 9"}},
		{`{"provider":"kc","token_sources":["header:X-T"],"claims_to_headers":{"a":"x-t"}}`, []string{`claims_to_headers.a: "x-t" is a token header`}},
		{`{"provider":"kc","forward_payload_header":"X-JWT-Payload"}`, nil},
		{`{"provider":"kc","forward_payload_header":"Authorization"}`, []string{`forward_payload_header: "Authorization" is reserved`}},
		{`{"provider":"kc","forward_payload_header":"x-edge-consumer"}`, []string{`forward_payload_header: "x-edge-consumer" is set by the plugin itself`}},
		{`{"provider":"kc","claims_to_headers":{"sub":"X-P"},"forward_payload_header":"x-p"}`, []string{`forward_payload_header: header "x-p" is also the target of claim "sub"`}},
		{`{"provider":"kc","anonymous":true,"bypass_cors_preflight":true}`, nil},
		{`{"provider":"kc","anonymous":1}`, []string{"anonymous: must be a boolean"}},
		{`{"providers":["a","b"]}`, nil},
		{`{"providers":[]}`, []string{"providers: must list 1 to 16 providers, got 0"}},
		{`{"providers":["a","kc"]}`, []string{`providers[1]: provider "kc" has no issuer in the runner config`}},
		{`{"providers":["a","nope"]}`, []string{`providers[1]: "nope" is not in the runner config's jwks.providers`}},
		{`{"providers":["b","b2"]}`, []string{`providers[1]: provider "b2" has the same issuer as "b"`}},
		{`{"providers":["a"],"issuer":"https://idp.example/realms/a"}`, []string{"issuer: must be left out with providers"}},
		{`{"providers":["a"],"provider":"kc"}`, []string{"provider: set exactly one of provider, providers and jwks_url"}},
		{`{"provider":"a","issuer":"https://other"}`, []string{`issuer: "https://other" differs from provider "a"'s issuer "https://idp.example/realms/a"`}},
		{`{"provider":"a","issuer":"https://idp.example/realms/a"}`, nil},
		{`{"provider":"kc","required_scopes":["read:orders","write"]}`, nil},
		{`{"provider":"kc","required_scopes":[]}`, []string{"required_scopes: must not be empty"}},
		{`{"provider":"kc","required_scopes":["a b","","x\"","ok","ok"]}`, []string{`required_scopes[0]: must be a scope token`, `required_scopes[1]: must be a scope token`, `required_scopes[2]: must be a scope token`, `required_scopes[4]: duplicate "ok"`}},
		{`{"provider":"kc","required_claim_values":{"tenant_id":["acme","globex"],"org.tier":"gold"}}`, nil},
		{`{"provider":"kc","required_claim_values":{}}`, []string{"required_claim_values: must not be empty"}},
		{`{"provider":"kc","required_claim_values":{"t":[]}}`, []string{"required_claim_values.t: must list at least one value"}},
		{`{"provider":"kc","required_claim_values":{"t":["a","","a"]}}`, []string{`required_claim_values.t[1]: must be a non-empty value`, `required_claim_values.t[2]: must be a non-empty value`}},
		{`{"provider":"kc","required_claim_values":{"t":[1]}}`, []string{"required_claim_values: must be a string or a list of strings"}},
		{`{"provider":"kc","required_claim_values":{".t":["a"]}}`, []string{"required_claim_values..t: claim a dotted path must not have empty segments"}},
		{`{"provider":"kc","max_lifetime":"1h"}`, nil},
		{`{"provider":"kc","max_lifetime":"0s"}`, []string{"max_lifetime: must be between 1s and 720h, got 0s"}},
		{`{"provider":"kc","max_lifetime":"800h"}`, []string{"max_lifetime: must be between 1s and 720h"}},
		{`{"provider":"kc","max_lifetime":3600}`, []string{"max_lifetime: must be a duration string"}},
		{`{"provider":"kc","consumer_claim":"azp"}`, nil},
		{`{"provider":"kc","consumer_claim":""}`, []string{"consumer_claim: must not be empty"}},
		{`{"provider":"kc","realm":"shop api"}`, nil},
		{`{"provider":"kc","realm":""}`, []string{"realm: must be 1 to 128 printable ASCII characters"}},
		{`{"provider":"kc","realm":"a\"b"}`, []string{"realm: must be 1 to 128 printable ASCII characters"}},
		{`{"provider":"kc","required_claims":["realm_access.roles"]}`, nil},
	}
	for _, tt := range tests {
		_, err := parseConf(&cfg, []byte(tt.conf))
		got := core.Problems(err)
		if len(got) != len(tt.want) {
			t.Errorf("parseConf(%s): got %q, want %q", tt.conf, got, tt.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tt.want[i]) {
				t.Errorf("parseConf(%s) problem %d: got %q, want prefix %q", tt.conf, i, got[i], tt.want[i])
			}
		}
	}
}

func TestConfigProviderKinds(t *testing.T) {
	tests := []struct {
		provider string
		want     string // "" = valid
	}{
		{"url: https://a/certs", ""},
		{"issuer: https://kc/realms/a\n      discovery: true", ""},
		{"file: /etc/jwks.json", ""},
		{"url: https://a/certs\n      issuer: urn:not-a-url", ""},
		{"issuer: https://kc/realms/a", "jwks.providers[0].url: is required (or discovery: true with issuer, or file)"},
		{"url: https://a/certs\n      file: /x.json", "jwks.providers[0].url: set exactly one of url, discovery and file"},
		{"discovery: true", "jwks.providers[0].issuer: is required with discovery: true"},
		{"issuer: urn:x\n      discovery: true", `jwks.providers[0].issuer: must be an http or https URL, got scheme "urn"`},
		{"issuer: https://kc/a?x=1\n      discovery: true", "jwks.providers[0].issuer: must not have a query with discovery"},
		{"file: jwks.json", `jwks.providers[0].file: must be an absolute path, got "jwks.json"`},
		{"file: /etc/", `jwks.providers[0].file: must name a file, not a directory`},
		{"file: /etc/j.json\n      snapshot_file: /tmp/s.json", "jwks.providers[0].snapshot_file: must be empty with file"},
	}
	for _, tt := range tests {
		var c struct {
			JWKS Config `yaml:"jwks"`
		}
		doc := "jwks:\n  providers:\n    - name: p\n      " + tt.provider + "\n"
		if err := core.DecodeYAML([]byte(doc), nil, &c); err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		c.JWKS.ApplyDefaults()
		errs := c.JWKS.Validate()
		got := ""
		if len(errs) > 0 {
			got = errs[0].Error()
		}
		if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("%q: got %q (%d problems), want %q", tt.provider, got, len(errs), tt.want)
		}
	}
	file := ProviderConfig{File: "/x.json"}
	file.applyDefaults()
	if file.RefreshInterval.D() != DefaultFilePollInterval {
		t.Errorf("file refresh_interval default: got %s, want %s", file.RefreshInterval, DefaultFilePollInterval)
	}
}

// filter runs the plugin on one request and returns the answer (0 when it
// proceeds) and the request as the upstream would get it.
func filter(m *JWTCache, rc *routeConf, r *testRequest) *testWriter {
	w := newTestWriter()
	m.RequestFilter(rc, w, r)
	return w
}

func TestRequestFilterV2(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	now := clk.Now()
	k := rsKey(t, "rs")
	tok := sign(t, k, now, map[string]any{
		"azp": "svc-1", "scope": "openid read:orders", "tenant_id": "acme",
		"realm_access":       map[string]any{"roles": []string{"admin", "user"}},
		"resource_access":    map[string]any{"shop": map[string]any{"roles": []string{"buyer"}}},
		"realm_access.roles": nil,
	})
	dotted := sign(t, k, now, map[string]any{"realm_access.roles": "top-level-wins", "realm_access": map[string]any{"roles": "nested"}})
	payload := strings.Split(tok, ".")[1]
	bearer := http.Header{"Authorization": {"Bearer " + tok}}
	spoofed := func(h http.Header) http.Header {
		h = h.Clone()
		for _, n := range []string{"X-Roles", "X-Shop-Roles", "X-Edge-Consumer", "X-Jwt-Payload", "X-Tenant"} {
			h.Set(n, "spoofed")
		}
		return h
	}

	tests := []struct {
		name     string
		conf     string
		method   string
		hdr      http.Header
		args     url.Values
		status   int
		wwwAuth  string
		upstream map[string]string // headers the upstream must see ("" = absent)
		args2    url.Values        // args the upstream must see
		consumer string            // verified consumer ("" = none)
	}{
		{name: "nested claims, payload, consumer from sub",
			conf: `{"provider":"kc","claims_to_headers":{"realm_access.roles":"X-Roles","resource_access.shop.roles":"X-Shop-Roles","tenant_id":"X-Tenant"},"forward_payload_header":"X-JWT-Payload"}`,
			hdr:  spoofed(bearer),
			upstream: map[string]string{"X-Roles": `["admin","user"]`, "X-Shop-Roles": `["buyer"]`, "X-Tenant": "acme",
				"X-Jwt-Payload": payload, "X-Edge-Consumer": "user-1", "Authorization": "Bearer " + tok},
			consumer: "user-1"},
		{name: "a top-level claim named with dots wins over the path",
			conf: `{"provider":"kc","claims_to_headers":{"realm_access.roles":"X-Roles"}}`,
			hdr:  http.Header{"Authorization": {"Bearer " + dotted}}, upstream: map[string]string{"X-Roles": "top-level-wins"}, consumer: "user-1"},
		{name: "consumer_claim azp",
			conf: `{"provider":"kc","consumer_claim":"azp"}`, hdr: bearer,
			upstream: map[string]string{"X-Edge-Consumer": "svc-1"}, consumer: "svc-1"},
		{name: "consumer_claim absent: no consumer",
			conf: `{"provider":"kc","consumer_claim":"client_id"}`, hdr: spoofed(bearer),
			upstream: map[string]string{"X-Edge-Consumer": ""}},
		{name: "hide_credentials: Authorization removed",
			conf: `{"provider":"kc","hide_credentials":true}`, hdr: bearer,
			upstream: map[string]string{"Authorization": ""}, consumer: "user-1"},
		{name: "hide_credentials: the one cookie removed, others kept",
			conf:     `{"provider":"kc","token_sources":["cookie:at"],"hide_credentials":true}`,
			hdr:      http.Header{"Cookie": {"theme=dark; at=" + tok, "lang=en"}},
			upstream: map[string]string{"Cookie": "theme=dark; lang=en"}, consumer: "user-1"},
		{name: "hide_credentials: a lone cookie leaves no Cookie header",
			conf: `{"provider":"kc","token_sources":["cookie:at"],"hide_credentials":true}`,
			hdr:  http.Header{"Cookie": {"at=" + tok}}, upstream: map[string]string{"Cookie": ""}, consumer: "user-1"},
		{name: "hide_credentials: query argument removed",
			conf: `{"provider":"kc","token_sources":["query:jwt"],"hide_credentials":true}`,
			args: url.Values{"jwt": {tok}, "page": {"2"}}, args2: url.Values{"page": {"2"}}, consumer: "user-1"},
		{name: "hide_credentials: named header removed",
			conf: `{"provider":"kc","token_header":"X-Token","hide_credentials":true}`,
			hdr:  http.Header{"X-Token": {tok}}, upstream: map[string]string{"X-Token": ""}, consumer: "user-1"},
		{name: "without hide_credentials the token stays (default)",
			conf: `{"provider":"kc","token_sources":["query:jwt"]}`,
			args: url.Values{"jwt": {tok}}, args2: url.Values{"jwt": {tok}}, consumer: "user-1"},
		{name: "token_sources: the first present wins",
			conf: `{"provider":"kc","token_sources":["header:Authorization","cookie:at","query:jwt"]}`,
			hdr:  http.Header{"Cookie": {"at=" + tok}}, args: url.Values{"jwt": {"garbage"}}, consumer: "user-1"},
		{name: "token_sources: a present invalid token is not skipped",
			conf: `{"provider":"kc","token_sources":["cookie:at","query:jwt"]}`,
			hdr:  http.Header{"Cookie": {"at=not-a-jwt"}}, args: url.Values{"jwt": {tok}}, status: 401, wwwAuth: `Bearer error="invalid_token"`},
		{name: "token_sources: Basic is no bearer token, the next source counts",
			conf: `{"provider":"kc","token_sources":["header:Authorization","query:jwt"]}`,
			hdr:  http.Header{"Authorization": {"Basic dTpw"}}, args: url.Values{"jwt": {tok}}, consumer: "user-1"},
		{name: "token_sources: none present",
			conf: `{"provider":"kc","token_sources":["cookie:at","query:jwt"]}`, status: 401, wwwAuth: "Bearer"},
		{name: "anonymous: no token proceeds, spoofed headers removed, no consumer",
			conf: `{"provider":"kc","anonymous":true,"claims_to_headers":{"tenant_id":"X-Tenant"},"forward_payload_header":"X-JWT-Payload"}`,
			hdr:  spoofed(http.Header{}), upstream: map[string]string{"X-Tenant": "", "X-Edge-Consumer": "", "X-Jwt-Payload": "", "X-Roles": "spoofed"}},
		{name: "anonymous: an invalid token is still 401",
			conf: `{"provider":"kc","anonymous":true}`, hdr: http.Header{"Authorization": {"Bearer a.b.c"}}, status: 401, wwwAuth: `Bearer error="invalid_token"`},
		{name: "anonymous: a valid token is verified as usual",
			conf: `{"provider":"kc","anonymous":true}`, hdr: bearer, upstream: map[string]string{"X-Edge-Consumer": "user-1"}, consumer: "user-1"},
		{name: "required_scopes granted",
			conf: `{"provider":"kc","required_scopes":["read:orders","openid"]}`, hdr: bearer, consumer: "user-1"},
		{name: "required_scopes missing: 403 insufficient_scope",
			conf: `{"provider":"kc","required_scopes":["read:orders","write:orders"],"realm":"shop"}`, hdr: bearer,
			status: 403, wwwAuth: `Bearer realm="shop", error="insufficient_scope", scope="read:orders write:orders"`},
		{name: "required_claim_values match",
			conf: `{"provider":"kc","required_claim_values":{"tenant_id":["globex","acme"],"realm_access.roles":"admin"}}`, hdr: bearer, consumer: "user-1"},
		{name: "required_claim_values mismatch: 403",
			conf: `{"provider":"kc","required_claim_values":{"tenant_id":["globex"]}}`, hdr: bearer, status: 403, wwwAuth: `Bearer error="insufficient_scope"`},
		{name: "required_claim_values on an absent claim: 403",
			conf: `{"provider":"kc","required_claim_values":{"org":["x"]}}`, hdr: bearer, status: 403, wwwAuth: `Bearer error="insufficient_scope"`},
		{name: "max_lifetime within",
			conf: `{"provider":"kc","max_lifetime":"1h"}`, hdr: bearer, consumer: "user-1"},
		{name: "max_lifetime exceeded: 401",
			conf: `{"provider":"kc","max_lifetime":"59m"}`, hdr: bearer, status: 401, wwwAuth: `Bearer error="invalid_token"`},
		{name: "realm on a missing token",
			conf: `{"provider":"kc","realm":"shop"}`, status: 401, wwwAuth: `Bearer realm="shop"`},
		{name: "realm on an invalid token",
			conf: `{"provider":"kc","realm":"shop"}`, hdr: http.Header{"Authorization": {"Bearer x.y.z"}}, status: 401, wwwAuth: `Bearer realm="shop", error="invalid_token"`},
		{name: "CORS preflight bypassed",
			conf: `{"provider":"kc","bypass_cors_preflight":true}`, method: "OPTIONS",
			hdr: spoofed(http.Header{"Origin": {"https://app"}, "Access-Control-Request-Method": {"POST"}}), upstream: map[string]string{"X-Edge-Consumer": ""}},
		{name: "OPTIONS without Access-Control-Request-Method is no preflight",
			conf: `{"provider":"kc","bypass_cors_preflight":true}`, method: "OPTIONS", hdr: http.Header{"Origin": {"https://app"}}, status: 401, wwwAuth: "Bearer"},
		{name: "preflight without bypass_cors_preflight needs a token",
			conf: `{"provider":"kc"}`, method: "OPTIONS", hdr: http.Header{"Origin": {"https://app"}, "Access-Control-Request-Method": {"POST"}}, status: 401, wwwAuth: "Bearer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := bind(t, m, tt.conf)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			args := url.Values{}
			for k, v := range tt.args {
				args[k] = append([]string(nil), v...)
			}
			r := newTestRequest(method, tt.hdr.Clone(), args)
			w := filter(m, rc, r)
			if w.status != tt.status {
				t.Fatalf("got status %d (%s), want %d", w.status, w.body, tt.status)
			}
			if got := w.h.Get("WWW-Authenticate"); got != tt.wwwAuth {
				t.Errorf("got WWW-Authenticate %q, want %q", got, tt.wwwAuth)
			}
			if tt.status != 0 {
				return
			}
			for h, want := range tt.upstream {
				if got := strings.Join(r.hdr.h.Values(h), "|"); got != want {
					t.Errorf("upstream %s: got %q, want %q", h, got, want)
				}
			}
			if tt.args2 != nil && r.args.Encode() != tt.args2.Encode() {
				t.Errorf("upstream args: got %q, want %q", r.args.Encode(), tt.args2.Encode())
			}
			got, _ := core.VerifiedConsumer(r)
			if got != tt.consumer {
				t.Errorf("verified consumer: got %q, want %q", got, tt.consumer)
			}
		})
	}
	if pl, err := base64.RawURLEncoding.DecodeString(payload); err != nil || !strings.Contains(string(pl), `"tenant_id":"acme"`) {
		t.Errorf("forwarded payload: got %q (%v), want the token's claims", pl, err)
	}
}

// twoRealms starts a real IdP with realms a and b (their own keys) and a
// module whose providers ra and rb fetch them.
func twoRealms(t *testing.T, clk *clock) (*JWTCache, *idpsrv.Realm, *idpsrv.Realm, *idpsrv.Key, *idpsrv.Key) {
	t.Helper()
	ka, err := idpsrv.NewEC("ka")
	if err != nil {
		t.Fatal(err)
	}
	kb, err := idpsrv.NewEC("kb")
	if err != nil {
		t.Fatal(err)
	}
	s, err := idpsrv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ra, err := s.AddRealm("a", ka)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := s.AddRealm("b", kb)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Providers: []ProviderConfig{
		{Name: "ra", URL: ra.URL(), Issuer: ra.Issuer()},
		{Name: "rb", Issuer: rb.Issuer(), Discovery: true},
	}}
	m, _, _ := testModule(t, cfg, clk.Now)
	for _, n := range []string{"ra", "rb"} {
		if !m.providers[n].refresh(context.Background()) {
			t.Fatalf("provider %s: first fetch failed: %s", n, m.providers[n].lastErr)
		}
	}
	return m, ra, rb, ka, kb
}

func TestMultiProviderSelectsByIssuer(t *testing.T) {
	clk := newClock()
	m, ra, rb, ka, kb := twoRealms(t, clk)
	rc := bind(t, m, `{"providers":["ra","rb"],"audience":"api"}`)
	now := clk.Now()
	signTok := func(k *idpsrv.Key, iss string) string {
		s, err := k.Sign(idpsrv.Claims("u", iss, "api", now, nil))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name  string
		token string
		want  reason
	}{
		{"realm a", signTok(ka, ra.Issuer()), reasonOK},
		{"realm b", signTok(kb, rb.Issuer()), reasonOK},
		{"realm a again: cache hit", signTok(ka, ra.Issuer()), reasonOK},
		{"a's key claiming b's issuer", signTok(ka, rb.Issuer()), reasonUnknownKID},
		{"b's key claiming a's issuer", signTok(kb.With("ka", nil), ra.Issuer()), reasonBadSignature},
		{"unknown issuer", signTok(ka, "https://evil.test"), reasonBadIssuer},
		{"no issuer", signTok(ka, ""), reasonBadIssuer},
	}
	for _, tt := range tests {
		if v := m.verify(rc, tt.token); v.reason != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, v.reason, tt.want)
		}
	}
	// A route naming one provider checks that provider's issuer too.
	single := bind(t, m, `{"provider":"ra"}`)
	if v := m.verify(single, signTok(ka, rb.Issuer())); v.reason != reasonBadIssuer {
		t.Fatalf("provider ra, iss of rb: got %s, want bad_issuer", v.reason)
	}
}

func TestDiscoveryProvider(t *testing.T) {
	clk := newClock()
	m, _, rb, _, kb := twoRealms(t, clk)
	p := m.providers["rb"]
	if u := p.jwksURI.Load(); u == nil || *u != rb.URL() {
		t.Fatalf("discovered jwks_uri: got %v, want %s", u, rb.URL())
	}
	rc := bind(t, m, `{"provider":"rb"}`)
	tok, _ := kb.Sign(idpsrv.Claims("u", rb.Issuer(), "api", clk.Now(), nil))
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("token of the discovered keys: got %s, want ok", v.reason)
	}
	// The route checks the provider's issuer without naming it.
	other, _ := kb.Sign(idpsrv.Claims("u", "https://evil.test", "api", clk.Now(), nil))
	if v := m.verify(rc, other); v.reason != reasonBadIssuer {
		t.Fatalf("another iss on a provider with issuer: got %s, want bad_issuer", v.reason)
	}

	// A document naming another issuer is refused: the jwks_uri read
	// before keeps serving, and the problem shows in /status.
	rb.SetDiscovery([]byte(`{"issuer":"https://evil.test","jwks_uri":"http://127.0.0.1:1/certs"}`))
	if !p.refresh(context.Background()) {
		t.Fatalf("discovery with another issuer: got failure %q, want the last jwks_uri used", p.lastErr)
	}
	if got := m.deps.Status.Snapshot().Backends["jwks:rb"].LastError; !strings.Contains(got, "is not the configured issuer") {
		t.Fatalf("got last_error %q, want the issuer mismatch", got)
	}
	if u := p.jwksURI.Load(); *u != rb.URL() {
		t.Fatalf("jwks_uri: got %s, want %s kept", *u, rb.URL())
	}
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("after a refused discovery: got %s, want ok", v.reason)
	}
	// Without a jwks_uri read before, a discovery failure is a failed
	// refresh.
	cfg := Config{Providers: []ProviderConfig{{Name: "fresh", Issuer: rb.Issuer(), Discovery: true}}}
	m2, _, _ := testModule(t, cfg, clk.Now)
	if m2.providers["fresh"].refresh(context.Background()) {
		t.Fatal("first discovery with another issuer: got success")
	}
	if !strings.Contains(m2.providers["fresh"].lastErr, "is not the configured issuer") {
		t.Fatalf("got %q, want the issuer mismatch", m2.providers["fresh"].lastErr)
	}
	// A jwks_uri that is no http URL is refused.
	rb.SetDiscovery([]byte(`{"issuer":"` + rb.Issuer() + `","jwks_uri":"file:///etc/passwd"}`))
	if _, err := p.discover(context.Background()); err == nil || !strings.Contains(err.Error(), "jwks_uri must be an http or https URL") {
		t.Fatalf("file jwks_uri: got %v, want refused", err)
	}
}

func TestDiscoverySnapshotKeepsJWKSURI(t *testing.T) {
	clk := newClock()
	k, _ := idpsrv.NewEC("k")
	s, err := idpsrv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, _ := s.AddRealm("snap", k)
	snap := filepath.Join(t.TempDir(), "jwks.json")
	cfg := Config{Providers: []ProviderConfig{{Name: "d", Issuer: r.Issuer(), Discovery: true, SnapshotFile: snap}}}
	m, _, _ := testModule(t, cfg, clk.Now)
	if !m.providers["d"].refresh(context.Background()) {
		t.Fatal(m.providers["d"].lastErr)
	}
	// A new runner during an IdP outage: keys and jwks_uri from the
	// snapshot.
	if err := s.Down(); err != nil {
		t.Fatal(err)
	}
	m2, _, _ := testModule(t, cfg, clk.Now)
	p := m2.providers["d"]
	p.loadSnapshot()
	if u := p.jwksURI.Load(); u == nil || *u != r.URL() {
		t.Fatalf("jwks_uri after the snapshot: got %v, want %s", u, r.URL())
	}
	tok, _ := k.Sign(idpsrv.Claims("u", r.Issuer(), "api", clk.Now(), nil))
	if v := m2.verify(bind(t, m2, `{"provider":"d"}`), tok); v.reason != reasonOK {
		t.Fatalf("from the snapshot: got %s, want ok", v.reason)
	}
}

func TestFileProviderWatched(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "jwks.json")
	write := func(doc []byte, mod time.Time) {
		t.Helper()
		if err := os.WriteFile(path, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	rsDoc := jwksDoc(t, true, rsKey(t, "rs"))
	esDoc := jwksDoc(t, true, esKey(t, "es"))
	write(rsDoc, clk.Now())
	cfg := Config{Providers: []ProviderConfig{{Name: "f", File: path, RefreshInterval: core.Duration(10 * time.Second), MaxStale: core.Duration(time.Minute)}}}
	m, _, st := testModule(t, cfg, clk.Now)
	p := m.providers["f"]
	rc := bind(t, m, `{"provider":"f"}`)
	rsTok := sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"exp": clk.Now().Add(24 * time.Hour).Unix()})
	esTok := sign(t, esKey(t, "es"), clk.Now(), map[string]any{"exp": clk.Now().Add(24 * time.Hour).Unix()})
	ctx := context.Background()

	steps := []struct {
		name   string
		change func()
		ok     bool
		rs, es reason
		state  core.State
	}{
		{"first read", func() {}, true, reasonOK, reasonUnknownKID, core.StateOK},
		{"unchanged: confirmed, not read", func() { clk.Advance(50 * time.Second) }, true, reasonOK, reasonUnknownKID, core.StateOK},
		{"same size and mtime: not read again", func() {
			clk.Advance(50 * time.Second) // past max_stale since the first read: only the confirmation keeps it
			st, _ := os.Stat(path)
			write(append(rsDoc[:0:0], make([]byte, len(rsDoc))...), st.ModTime())
		}, true, reasonOK, reasonUnknownKID, core.StateOK},
		{"rotated: another mtime", func() { write(esDoc, clk.Now().Add(time.Second)) }, true, reasonUnknownKID, reasonOK, core.StateOK},
		{"invalid content: keys kept, degraded", func() { write([]byte("{"), clk.Now().Add(2*time.Second)) }, false, reasonUnknownKID, reasonOK, core.StateDegraded},
		{"removed: keys kept until max_stale", func() { clk.Advance(30 * time.Second); os.Remove(path) }, false, reasonUnknownKID, reasonOK, core.StateDegraded},
		{"removed past max_stale: fail closed", func() { clk.Advance(31 * time.Second) }, false, reasonKeysUnavailable, reasonKeysUnavailable, core.StateDown},
		{"back", func() { write(rsDoc, clk.Now()) }, true, reasonOK, reasonUnknownKID, core.StateOK},
	}
	for _, s := range steps {
		s.change()
		if got := p.refresh(ctx); got != s.ok {
			t.Fatalf("%s: got refresh %v (%s), want %v", s.name, got, p.lastErr, s.ok)
		}
		if v := m.verify(rc, rsTok); v.reason != s.rs {
			t.Errorf("%s: RS token got %s, want %s", s.name, v.reason, s.rs)
		}
		if v := m.verify(rc, esTok); v.reason != s.es {
			t.Errorf("%s: ES token got %s, want %s", s.name, v.reason, s.es)
		}
		if got := st.Backend("jwks:f").State(); got != s.state {
			t.Errorf("%s: got state %s, want %s", s.name, got, s.state)
		}
	}
}

// TestHeaderValueMemo: list and object claims are rendered once per cached
// token, the same text every time; scalars are not memoized; the memo is
// bounded.
func TestHeaderValueMemo(t *testing.T) {
	all := map[string]any{"sub": "u", "realm_access": map[string]any{"roles": []any{"admin", "user"}}, "obj": map[string]any{"k": "v"}}
	for i := 0; i < maxRendered+5; i++ {
		all[fmt.Sprintf("l%d", i)] = []any{i}
	}
	c := newVerifiedClaims(all)
	tests := []struct {
		path string
		want string
		ok   bool
	}{
		{"realm_access.roles", `["admin","user"]`, true},
		{"realm_access.roles", `["admin","user"]`, true},
		{"obj", `{"k":"v"}`, true},
		{"sub", "u", true},
		{"missing.path", "", false},
	}
	for _, tt := range tests {
		got, ok := c.headerValue(newClaimPath(tt.path))
		if got != tt.want || ok != tt.ok {
			t.Errorf("headerValue(%s): got (%q, %v), want (%q, %v)", tt.path, got, ok, tt.want, tt.ok)
		}
	}
	if n := len(*c.rendered.Load()); n != 2 {
		t.Fatalf("got %d memoized values, want 2 (the list and the object)", n)
	}
	for i := 0; i < maxRendered+5; i++ {
		p := newClaimPath(fmt.Sprintf("l%d", i))
		if got, _ := c.headerValue(p); got != fmt.Sprintf("[%d]", i) {
			t.Fatalf("l%d: got %q", i, got)
		}
	}
	if n := len(*c.rendered.Load()); n != maxRendered {
		t.Fatalf("got %d memoized values, want the bound %d", n, maxRendered)
	}
	// Concurrent hits of one cached token (run with -race).
	shared := newVerifiedClaims(all)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 8; i++ {
				p := newClaimPath(fmt.Sprintf("l%d", i))
				if got, _ := shared.headerValue(p); got != fmt.Sprintf("[%d]", i) {
					t.Errorf("concurrent l%d: got %q", i, got)
				}
			}
		}()
	}
	wg.Wait()
}
