package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/apisix-edge/edge-runner/testbed/idp"
	"github.com/golang-jwt/jwt/v5"
)

// TestJWTTokenSourcesAndHideCredentials: the first source present wins,
// and with hide_credentials the upstream never sees the token where it
// came from (the other cookies and arguments stay).
func TestJWTTokenSourcesAndHideCredentials(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("rs-1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, idp, 1)
	tok := jwtSign(t, jwtRS("rs-1", 0), nil)
	hide := jwtRoute("hide", `{"provider":"main","token_sources":["header:Authorization","cookie:at","query:jwt"],"hide_credentials":true}`)
	keep := jwtRoute("keep", `{"provider":"main","token_sources":["header:Authorization","cookie:at","query:jwt"]}`)
	tests := []struct {
		name   string
		route  *testbed.Route
		req    *testbed.Request
		status int
		auth   string // upstream Authorization
		cookie string // upstream Cookie
		args   string // upstream query
	}{
		{"bearer hidden", hide, &testbed.Request{Headers: http.Header{"Authorization": {"Bearer " + tok}, "Cookie": {"theme=dark"}}, Args: url.Values{"page": {"2"}}},
			200, "", "theme=dark", "page=2"},
		{"cookie hidden, other cookies kept", hide, &testbed.Request{Headers: http.Header{"Cookie": {"theme=dark; at=" + tok + "; lang=en"}}},
			200, "", "theme=dark; lang=en", ""},
		{"query hidden, other arguments kept", hide, &testbed.Request{Args: url.Values{"jwt": {tok}, "page": {"2"}}},
			200, "", "", "page=2"},
		{"default keeps the token", keep, &testbed.Request{Args: url.Values{"jwt": {tok}}},
			200, "", "", "jwt=" + tok},
		{"first present wins: an invalid cookie is not skipped", keep, &testbed.Request{Headers: http.Header{"Cookie": {"at=garbage"}}, Args: url.Values{"jwt": {tok}}},
			401, "", "", ""},
		{"Basic is no bearer token: the cookie counts", keep, &testbed.Request{Headers: http.Header{"Authorization": {"Basic dTpw"}, "Cookie": {"at=" + tok}}},
			200, "Basic dTpw", "at=" + tok, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := do(t, e.g, tt.route, tt.req)
			if res.Status != tt.status {
				t.Fatalf("got %d (%s), want %d", res.Status, res.Body, tt.status)
			}
			if tt.status != 200 {
				return
			}
			up := res.Upstream
			if got := up.Headers.Get("Authorization"); got != tt.auth {
				t.Errorf("upstream Authorization: got %q, want %q", got, tt.auth)
			}
			if got := up.Headers.Get("Cookie"); got != tt.cookie {
				t.Errorf("upstream Cookie: got %q, want %q", got, tt.cookie)
			}
			if got := up.Args.Encode(); got != tt.args {
				t.Errorf("upstream args: got %q, want %q", got, tt.args)
			}
			if got := up.Headers.Get("X-Edge-Consumer"); got != "user-1" {
				t.Errorf("upstream X-Edge-Consumer: got %q, want user-1", got)
			}
		})
	}
}

// TestJWTAnonymousAndClaimRules: anonymous routes pass without a token but
// never with a bad one, spoofed claim headers are removed; scopes, claim
// values, nested claims, the payload header and the realm reach the client
// and the upstream as documented.
func TestJWTAnonymousAndClaimRules(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("rs-1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, idp, 1)
	claims := map[string]any{"scope": "openid orders:read", "tenant_id": "acme", "azp": "svc-7",
		"realm_access": map[string]any{"roles": []string{"admin"}}}
	tok := jwtSign(t, jwtRS("rs-1", 0), claims)
	anon := jwtRoute("anon", `{"provider":"main","anonymous":true,"claims_to_headers":{"tenant_id":"X-Tenant-ID"}}`)
	rules := jwtRoute("rules", `{"provider":"main","realm":"shop","required_scopes":["orders:read"],`+
		`"required_claim_values":{"tenant_id":["globex","acme"]},"claims_to_headers":{"realm_access.roles":"X-Roles"},`+
		`"forward_payload_header":"X-JWT-Payload","consumer_claim":"azp","max_lifetime":"1h"}`)
	writeScope := jwtRoute("write", `{"provider":"main","realm":"shop","required_scopes":["orders:write"]}`)
	spoof := http.Header{"X-Tenant-ID": {"t-evil"}, "X-Edge-Consumer": {"admin"}}

	res := do(t, e.g, anon, &testbed.Request{Headers: spoof})
	if res.Status != 200 || res.Upstream.Headers.Get("X-Tenant-Id") != "" || res.Upstream.Headers.Get("X-Edge-Consumer") != "" {
		t.Errorf("anonymous without token: got %d, upstream %v, want 200 with the spoofed headers removed", res.Status, res.Upstream)
	}
	if res := do(t, e.g, anon, jwtBearer("a.b.c")); res.Status != 401 || res.UpstreamCalled {
		t.Errorf("anonymous with an invalid token: got %d, want 401", res.Status)
	}
	if res := do(t, e.g, anon, jwtBearer(tok)); res.Status != 200 || res.Upstream.Headers.Get("X-Tenant-Id") != "acme" {
		t.Errorf("anonymous with a valid token: got %d, want 200 with X-Tenant-ID acme", res.Status)
	}

	res = do(t, e.g, rules, jwtBearer(tok))
	if res.Status != 200 {
		t.Fatalf("claim rules met: got %d (%s), want 200", res.Status, res.Body)
	}
	up := res.Upstream.Headers
	payload := strings.Split(tok, ".")[1]
	for h, want := range map[string]string{"X-Roles": `["admin"]`, "X-Jwt-Payload": payload, "X-Edge-Consumer": "svc-7"} {
		if got := up.Get(h); got != want {
			t.Errorf("upstream %s: got %q, want %q", h, got, want)
		}
	}
	res = do(t, e.g, writeScope, jwtBearer(tok))
	if want := `Bearer realm="shop", error="insufficient_scope", scope="orders:write"`; res.Status != 403 || res.Headers.Get("WWW-Authenticate") != want {
		t.Errorf("missing scope: got %d %q, want 403 %q", res.Status, res.Headers.Get("WWW-Authenticate"), want)
	}
	if res := do(t, e.g, rules, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"scope": "orders:read", "tenant_id": "initech"}))); res.Status != 403 {
		t.Errorf("tenant not listed: got %d, want 403", res.Status)
	}
	if res := do(t, e.g, rules, &testbed.Request{}); res.Status != 401 || res.Headers.Get("WWW-Authenticate") != `Bearer realm="shop"` {
		t.Errorf("no token: got %d %q, want 401 Bearer realm=\"shop\"", res.Status, res.Headers.Get("WWW-Authenticate"))
	}
	preflight := jwtRoute("cors", `{"provider":"main","bypass_cors_preflight":true}`)
	if res := do(t, e.g, preflight, &testbed.Request{Method: "OPTIONS", Headers: http.Header{"Origin": {"https://app"}, "Access-Control-Request-Method": {"POST"}}}); res.Status != 200 {
		t.Errorf("CORS preflight: got %d, want 200", res.Status)
	}
}

// TestJWTMultiProviderAndDiscovery: two realms on one IdP, one provider by
// URL and one by OpenID discovery; the token's iss selects, an unknown iss
// and a key of the other realm are 401.
func TestJWTMultiProviderAndDiscovery(t *testing.T) {
	jwtGenKeys()
	s := jwtNewIdP(t)
	ka, kb := jwtRS("ka", 0), jwtES("kb")
	ra, err := s.AddRealm("tenant-a", ka)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := s.AddRealm("tenant-b", kb)
	if err != nil {
		t.Fatal(err)
	}
	e := jwtStart(t, "  providers:\n"+
		jwtProvider("ta", ra.URL(), "      issuer: "+ra.Issuer()+"\n")+
		"    - name: tb\n      issuer: "+rb.Issuer()+"\n      discovery: true\n", testbed.RunnerOptions{})
	eventually(t, 5*time.Second, "both realms fetched", func() bool {
		return s.HitsOf("/realms/tenant-a/protocol/openid-connect/certs") >= 1 && s.HitsOf("/realms/tenant-b/protocol/openid-connect/certs") >= 1
	})
	if st, detail := e.jwtStatus(t, "jwks:tb"); st != "ok" || detail["jwks_uri"] != rb.URL() {
		t.Fatalf("discovery provider: got %s %v, want ok with jwks_uri %s", st, detail, rb.URL())
	}
	route := jwtRoute("multi", `{"providers":["ta","tb"],"audience":"api"}`)
	sign := func(k *idp.Key, iss, sub string) string {
		tok, err := k.Sign(idp.Claims(sub, iss, "api", time.Now(), nil))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name   string
		token  string
		status int
		user   string
	}{
		{"realm a", sign(ka, ra.Issuer(), "alice"), 200, "alice"},
		{"realm b (discovered)", sign(kb, rb.Issuer(), "bob"), 200, "bob"},
		{"realm a again (cached)", sign(ka, ra.Issuer(), "alice"), 200, "alice"},
		{"unknown issuer", sign(ka, "https://evil.test/realms/x", "eve"), 401, ""},
		{"a's key claiming b's issuer", sign(ka, rb.Issuer(), "eve"), 401, ""},
	}
	for _, tt := range tests {
		res := do(t, e.g, route, jwtBearer(tt.token))
		if res.Status != tt.status {
			t.Errorf("%s: got %d (%s), want %d", tt.name, res.Status, res.Body, tt.status)
			continue
		}
		if tt.status == 200 && res.Upstream.Headers.Get("X-Edge-Consumer") != tt.user {
			t.Errorf("%s: upstream consumer %q, want %q", tt.name, res.Upstream.Headers.Get("X-Edge-Consumer"), tt.user)
		}
	}
}

// TestJWTURLSecretNotShown (issue 15, hole 1): a JWKS URL with credentials
// and an access_token, failing: neither /status nor the runner's log shows
// them.
func TestJWTURLSecretNotShown(t *testing.T) {
	s := jwtNewIdP(t, jwtRS("rs-1", 0))
	u, _ := url.Parse(s.URL)
	u.User = url.UserPassword("svc-user", "pw-SECRET")
	u.RawQuery = "access_token=TOKEN-SECRET"
	if err := s.Down(); err != nil {
		t.Fatal(err)
	}
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", u.String(), "      refresh_interval: 1s\n"), testbed.RunnerOptions{})
	eventually(t, 5*time.Second, "fetch failure reported", func() bool {
		st, _ := e.jwtStatus(t, "jwks:main")
		return st == "down"
	})
	_, status := get(t, e.admin+"/status")
	if !strings.Contains(status, "last_error") {
		t.Fatalf("/status: got %s, want a last_error", status)
	}
	time.Sleep(1500 * time.Millisecond) // a retry or two, logged
	for where, text := range map[string]string{"/status": status, "runner log": e.r.Output()} {
		for _, secret := range []string{"svc-user", "pw-SECRET", "TOKEN-SECRET", "access_token"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %q:\n%s", where, secret, text)
			}
		}
	}
}

// TestJWTValidateV2 runs `go-runner validate` on v2 confs: each problem,
// holes included, named with its field; providers with discovery and file.
func TestJWTValidateV2(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "go-runner.yaml")
	if err := os.WriteFile(cfg, []byte("jwks:\n  providers:\n"+
		"    - name: a\n      issuer: https://kc.example/realms/a\n      discovery: true\n"+
		"    - name: b\n      file: /etc/jwks-b.json\n      issuer: https://kc.example/realms/b\n"+
		"    - name: c\n      url: https://kc.example/certs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	route := func(name, conf string) string {
		b, _ := json.Marshal(conf)
		f := filepath.Join(dir, name)
		doc := `{"uri":"/x","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"jwtcache","value":` + string(b) + `}]}}}`
		if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tt := range []struct {
		file string
		code int
		want []string
	}{
		{route("good.json", `{"providers":["a","b"],"token_sources":["header:Authorization","cookie:at"],"hide_credentials":true,"required_scopes":["orders:read"],"claims_to_headers":{"realm_access.roles":"X-Roles"}}`),
			0, []string{"good.json: ok"}},
		{route("holes.json", `{"provider":"c","issuer":"","audience":[],"algorithms":[]}`),
			1, []string{"issuer: must not be empty", "audience: must not be empty", "algorithms: must not be empty"}},
		{route("v2.json", `{"providers":["a","c"],"token_sources":["body:t"],"max_lifetime":"0s","realm":"a\"b"}`),
			1, []string{`providers[1]: provider "c" has no issuer`, `token_sources[0]: must start with`, "max_lifetime: must be between 1s and 720h", "realm: must be 1 to 128"}},
	} {
		out, err := exec.Command(runnerBin, "validate", "-c", cfg, tt.file).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code != tt.code {
			t.Errorf("validate %s: got exit %d (%s), want %d", filepath.Base(tt.file), code, out, tt.code)
		}
		for _, w := range tt.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("validate %s: got %q, want it to contain %q", filepath.Base(tt.file), out, w)
			}
		}
	}
}

// TestJWTCritRejected (issue 15, hole 3): a token with crit, or b64 false,
// correctly signed by a published key, is 401 through the runner.
func TestJWTCritRejected(t *testing.T) {
	s := jwtNewIdP(t, jwtRS("rs-1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", s.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, s, 1)
	route := jwtRoute("crit", `{"provider":"main"}`)
	signed := func(header map[string]any) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(idp.Claims("user-1", "https://idp.test", "api", time.Now(), nil)))
		tok.Header["kid"] = "rs-1"
		for k, v := range header {
			tok.Header[k] = v
		}
		out, err := tok.SignedString(jwtRS("rs-1", 0).Signer)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, tt := range []struct {
		name   string
		header map[string]any
		want   int
	}{
		{"plain", nil, 200},
		{"crit x-unknown", map[string]any{"crit": []string{"x-unknown"}, "x-unknown": true}, 401},
		{"crit exp", map[string]any{"crit": []string{"exp"}, "exp": 1}, 401},
		{"b64 false with crit b64", map[string]any{"b64": false, "crit": []string{"b64"}}, 401},
	} {
		if res := do(t, e.g, route, jwtBearer(signed(tt.header))); res.Status != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, res.Status, tt.want)
		}
	}
	if m := e.metrics(t); !strings.Contains(m, `apisix_edge_jwt_verifications_total{outcome="rejected",reason="unsupported_crit"} 3`) {
		t.Errorf("/metrics: want 3 unsupported_crit rejections")
	}
}

// TestJWTVerifiedConsumerKeysRateLimit: ratelimit key "consumer" after
// jwtcache counts the consumer jwtcache verified (consumer_claim azp), never
// a client-sent X-Edge-Consumer.
func TestJWTVerifiedConsumerKeysRateLimit(t *testing.T) {
	backing.MustRequire(t, backing.RedisServer)
	rd := backing.MustRedis(t, backing.RedisOptions{})
	s := jwtNewIdP(t, jwtRS("rs-1", 0))
	e := startWithAdmin(t, "jwks:\n  providers:\n"+jwtProvider("main", s.URL, "")+"redis:\n"+rlStandalone(rd.Addr()), testbed.RunnerOptions{})
	jwtWaitFetched(t, s, 1)
	route := &testbed.Route{ID: "jwt-rl", PreReq: []testbed.PluginConf{
		{Name: "jwtcache", Value: `{"provider":"main","consumer_claim":"azp"}`},
		{Name: "ratelimit", Value: `{"limit":2,"window":"1m","name":"jwtrl","key":"consumer"}`},
	}}
	alice := func(sub string) string {
		return jwtSign(t, jwtRS("rs-1", 0), map[string]any{"azp": "alice", "sub": sub})
	}
	bob := jwtSign(t, jwtRS("rs-1", 0), map[string]any{"azp": "bob"})
	tests := []struct {
		name string
		req  *testbed.Request
		want int
	}{
		{"alice 1", jwtBearer(alice("s1")), 200},
		{"alice 2, another sub", jwtBearer(alice("s2")), 200},
		{"alice 3: over the limit", jwtBearer(alice("s3")), 429},
		{"alice claiming to be carol in the header", jwtBearer(alice("s4"), "X-Edge-Consumer", "carol"), 429},
		{"bob", jwtBearer(bob, "X-Edge-Consumer", "alice"), 200},
	}
	for _, tt := range tests {
		res := do(t, e.g, route, tt.req)
		if res.Status != tt.want {
			t.Errorf("%s: got %d (%s), want %d", tt.name, res.Status, res.Body, tt.want)
		}
		if tt.want == 200 && res.Upstream.Headers.Get("X-Edge-Consumer") == "" {
			t.Errorf("%s: upstream without X-Edge-Consumer", tt.name)
		}
	}
}
