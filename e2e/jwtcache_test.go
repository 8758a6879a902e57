package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/idp"
	"github.com/golang-jwt/jwt/v5"
)

// The keys of the tests, generated once: RSA keys take a while.
var (
	jwtKeysOnce sync.Once
	jwtRSA      [2]*idp.Key
	jwtEC       *idp.Key
	jwtEd       *idp.Key
	jwtEnc      *idp.Key
)

func jwtGenKeys() {
	jwtKeysOnce.Do(func() {
		var err error
		for i := range jwtRSA {
			if jwtRSA[i], err = idp.NewRSA("", 2048); err != nil {
				panic(err)
			}
		}
		if jwtEC, err = idp.NewEC(""); err != nil {
			panic(err)
		}
		if jwtEd, err = idp.NewEd25519(""); err != nil {
			panic(err)
		}
		if jwtEnc, err = idp.NewRSAEncryption("enc-1"); err != nil {
			panic(err)
		}
	})
}

func jwtRS(kid string, i int) *idp.Key {
	jwtGenKeys()
	return jwtRSA[i].With(kid, nil)
}
func jwtES(kid string) *idp.Key {
	jwtGenKeys()
	return jwtEC.With(kid, nil)
}
func jwtEdDSA(kid string) *idp.Key {
	jwtGenKeys()
	return jwtEd.With(kid, nil)
}

// jwtIdP is a real JWKS endpoint on loopback (testbed/idp) serving the keys
// a test publishes, plus, like Keycloak, an encryption key that must be
// ignored.
type jwtIdP struct {
	*idp.Server
	t   *testing.T
	URL string
}

func jwtNewIdP(t *testing.T, keys ...*idp.Key) *jwtIdP {
	t.Helper()
	s, err := idp.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	i := &jwtIdP{Server: s, t: t, URL: s.URL()}
	i.publish(keys...)
	return i
}

func (i *jwtIdP) publish(keys ...*idp.Key) {
	i.t.Helper()
	jwtGenKeys()
	if err := i.Publish(append(keys, jwtEnc)...); err != nil {
		i.t.Fatal(err)
	}
}

// jwtSign signs a token with k; claims override the defaults (sub user-1,
// iss, aud api, iat now, exp in an hour); a nil value deletes a claim.
func jwtSign(t *testing.T, k *idp.Key, claims map[string]any) string {
	t.Helper()
	s, err := k.Sign(idp.Claims("user-1", "https://idp.test/realms/test", "api", time.Now(), claims))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwtStart starts a runner whose config is the jwks section (indented
// under "jwks:") plus an admin listener.
func jwtStart(t *testing.T, jwks string, opts testbed.RunnerOptions) *adminEnv {
	t.Helper()
	e := startWithAdmin(t, "jwks:\n"+jwks, opts)
	t.Cleanup(func() { // a runner built with E2E_RACE=1 reports races on its stderr
		if out := e.r.Output(); strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("data race in the runner:\n%s", out)
		}
	})
	return e
}

func jwtProvider(name, url, extra string) string {
	return fmt.Sprintf("    - name: %s\n      url: %s\n%s", name, url, extra)
}

func jwtRoute(id, conf string) *testbed.Route {
	return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{{Name: "jwtcache", Value: conf}}}
}

func jwtBearer(tok string, extra ...string) *testbed.Request {
	h := http.Header{"Authorization": {"Bearer " + tok}}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Add(extra[i], extra[i+1])
	}
	return &testbed.Request{Method: "GET", Path: "/api", Headers: h}
}

// jwtStatus reads one backend of /status.
func (e *adminEnv) jwtStatus(t *testing.T, backend string) (string, map[string]any) {
	t.Helper()
	_, body := get(t, e.admin+"/status")
	var st struct {
		Backends map[string]struct {
			State  string         `json:"state"`
			Detail map[string]any `json:"detail"`
		} `json:"backends"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	b := st.Backends[backend]
	return b.State, b.Detail
}

func (e *adminEnv) metrics(t *testing.T) string {
	t.Helper()
	_, body := get(t, e.admin+"/metrics")
	return body
}

func jwtWaitFetched(t *testing.T, idp *jwtIdP, n int) {
	t.Helper()
	eventually(t, 5*time.Second, "jwks fetched", func() bool { return idp.Hits() >= n })
}

// TestJWTMatrix drives valid and invalid tokens (RS256, ES256, EdDSA and
// the attacks) through the built runner, and checks what the client and
// the upstream get.
func TestJWTMatrix(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("rs-1", 0), jwtES("es-1"), jwtEdDSA("ed-1"))
	e := jwtStart(t, "  unknown_kid_min_interval: 100ms\n  max_token_size: 2048\n  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, idp, 1)
	strict := jwtRoute("strict", `{"provider":"main","issuer":"https://idp.test/realms/test","audience":["api"],`+
		`"claims_to_headers":{"sub":"X-User-ID","tenant_id":"X-Tenant-ID"},"required_claims":["tenant_id"]}`)
	loose := jwtRoute("loose", `{"provider":"main","claims_to_headers":{"tenant_id":"X-Tenant-ID"}}`)

	withTenant := map[string]any{"tenant_id": "t-42"}
	pubDER, _ := x509.MarshalPKIXPublicKey(jwtRS("", 0).Signer.Public())
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "admin", "tenant_id": "t-1", "aud": "api",
		"iss": "https://idp.test/realms/test", "exp": time.Now().Add(time.Hour).Unix()})
	hs.Header["kid"] = "rs-1"
	hsTok, _ := hs.SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "admin", "tenant_id": "t-1", "aud": "api",
		"iss": "https://idp.test/realms/test", "exp": time.Now().Add(time.Hour).Unix()})
	none.Header["kid"] = "rs-1"
	noneTok, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	otherKeySameKid := jwtRS("rs-1", 1)

	tests := []struct {
		name    string
		route   *testbed.Route
		req     *testbed.Request
		status  int
		wwwAuth string
		user    string // X-User-Id and X-Edge-Consumer the upstream must see
		tenant  string
	}{
		{"RS256", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), withTenant)), 200, "", "user-1", "t-42"},
		{"ES256", strict, jwtBearer(jwtSign(t, jwtES("es-1"), withTenant)), 200, "", "user-1", "t-42"},
		{"EdDSA", strict, jwtBearer(jwtSign(t, jwtEdDSA("ed-1"), withTenant)), 200, "", "user-1", "t-42"},
		{"spoofed claim headers are replaced", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), withTenant),
			"X-User-ID", "admin", "x-tenant-id", "t-evil", "X-Edge-Consumer", "admin"), 200, "", "user-1", "t-42"},
		{"spoofed header for an absent claim is removed", loose, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), nil),
			"X-Tenant-ID", "t-evil", "X-Edge-Consumer", "admin"), 200, "", "user-1", ""},
		{"missing required claim", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), nil)), 403, `Bearer error="insufficient_scope"`, "", ""},
		{"expired", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": "t", "exp": time.Now().Add(-time.Hour).Unix()})), 401, `Bearer error="invalid_token"`, "", ""},
		{"not yet valid", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": "t", "nbf": time.Now().Add(time.Hour).Unix()})), 401, `Bearer error="invalid_token"`, "", ""},
		{"issued in the future", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": "t", "iat": time.Now().Add(time.Hour).Unix()})), 401, `Bearer error="invalid_token"`, "", ""},
		{"wrong issuer", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": "t", "iss": "https://evil"})), 401, `Bearer error="invalid_token"`, "", ""},
		{"wrong audience", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": "t", "aud": "other"})), 401, `Bearer error="invalid_token"`, "", ""},
		{"bad signature", strict, jwtBearer(jwtSign(t, otherKeySameKid, withTenant)), 401, `Bearer error="invalid_token"`, "", ""},
		{"alg none", strict, jwtBearer(noneTok), 401, `Bearer error="invalid_token"`, "", ""},
		{"HS256 signed with the RSA public key", strict, jwtBearer(hsTok), 401, `Bearer error="invalid_token"`, "", ""},
		{"ES256 token naming the RSA kid", strict, jwtBearer(jwtSign(t, jwtES("rs-1"), withTenant)), 401, `Bearer error="invalid_token"`, "", ""},
		{"unknown kid", strict, jwtBearer(jwtSign(t, jwtRS("nope", 0), withTenant)), 401, `Bearer error="invalid_token"`, "", ""},
		{"malformed", strict, jwtBearer("not-a-jwt"), 401, `Bearer error="invalid_token"`, "", ""},
		{"oversized", strict, jwtBearer(jwtSign(t, jwtRS("rs-1", 0), map[string]any{"tenant_id": strings.Repeat("x", 3000)})), 401, `Bearer error="invalid_token"`, "", ""},
		{"no token", strict, &testbed.Request{Method: "GET", Path: "/api"}, 401, "Bearer", "", ""},
		{"basic auth is no bearer token", strict, &testbed.Request{Method: "GET", Path: "/api", Headers: http.Header{"Authorization": {"Basic dTpw"}}}, 401, "Bearer", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := do(t, e.g, tt.route, tt.req)
			if res.Status != tt.status {
				t.Fatalf("got status %d (body %q), want %d", res.Status, res.Body, tt.status)
			}
			if tt.status != 200 {
				if res.UpstreamCalled {
					t.Fatal("upstream called for a rejected request")
				}
				if got := res.Headers.Get("WWW-Authenticate"); got != tt.wwwAuth {
					t.Errorf("got WWW-Authenticate %q, want %q", got, tt.wwwAuth)
				}
				if auth := tt.req.Headers.Get("Authorization"); len(auth) > 20 && strings.Contains(string(res.Body), auth[7:20]) {
					t.Errorf("body %q echoes the token", res.Body)
				}
				return
			}
			up := res.Upstream.Headers
			if got := up.Get("X-Edge-Consumer"); got != tt.user {
				t.Errorf("upstream X-Edge-Consumer: got %q, want %q", got, tt.user)
			}
			if tt.route == strict {
				if got := up.Get("X-User-Id"); got != tt.user {
					t.Errorf("upstream X-User-ID: got %q, want %q", got, tt.user)
				}
			}
			if got := up.Values("X-Tenant-Id"); strings.Join(got, ",") != tt.tenant {
				t.Errorf("upstream X-Tenant-ID: got %q, want %q", got, tt.tenant)
			}
		})
	}
	m := e.metrics(t)
	for _, want := range []string{
		`apisix_edge_jwt_verifications_total{outcome="accepted",reason="ok"} 5`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="bad_alg"} 3`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="bad_signature"} 1`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="unknown_kid"} 1`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="too_large"} 1`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="missing_token"} 2`,
		`apisix_edge_jwt_verifications_total{outcome="rejected",reason="missing_claim"} 1`,
		`apisix_edge_jwks_fetches_total{provider="main",result="ok"}`,
		`apisix_edge_jwks_stale{provider="main"} 0`,
		`apisix_edge_jwks_key_age_seconds{provider="main"}`,
		`apisix_edge_jwt_cache_lookups_total{result="miss"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics: missing %s", want)
		}
	}
}

func TestJWTTokenSources(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("rs-1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	tok := jwtSign(t, jwtRS("rs-1", 0), nil)
	tests := []struct {
		name  string
		conf  string
		req   *testbed.Request
		want  int
		other *testbed.Request // the token elsewhere: must not count
	}{
		{"cookie", `{"provider":"main","token_cookie":"access_token"}`,
			&testbed.Request{Headers: http.Header{"Cookie": {"theme=dark; access_token=" + tok}}}, 200, jwtBearer(tok)},
		{"query", `{"provider":"main","token_query":"access_token"}`,
			&testbed.Request{Args: url.Values{"access_token": {tok}}}, 200, jwtBearer(tok)},
		{"header", `{"provider":"main","token_header":"X-Access-Token"}`,
			&testbed.Request{Headers: http.Header{"X-Access-Token": {tok}}}, 200, jwtBearer(tok)},
	}
	for _, tt := range tests {
		route := jwtRoute(tt.name, tt.conf)
		if res := do(t, e.g, route, tt.req); res.Status != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, res.Status, tt.want)
		}
		if res := do(t, e.g, route, tt.other); res.Status != 401 {
			t.Errorf("%s: token in the Authorization header instead: got %d, want 401", tt.name, res.Status)
		}
	}
}

// TestJWTKeyRotation: a token signed with a new kid is accepted as soon as
// the IdP publishes it (unknown-kid refresh), and tokens of a removed key
// stop verifying, cached or not.
func TestJWTKeyRotation(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  unknown_kid_min_interval: 50ms\n  unknown_kid_wait: 2s\n  providers:\n"+
		jwtProvider("main", idp.URL, "      refresh_interval: 1h\n"), testbed.RunnerOptions{})
	route := jwtRoute("r", `{"provider":"main"}`)
	old := jwtSign(t, jwtRS("k1", 0), nil)
	if res := do(t, e.g, route, jwtBearer(old)); res.Status != 200 {
		t.Fatalf("k1 before rotation: got %d, want 200", res.Status)
	}
	hits := idp.Hits()
	idp.publish(jwtRS("k1", 0), jwtRS("k2", 1))
	if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k2", 1), nil))); res.Status != 200 {
		t.Fatalf("first k2 token after rotation: got %d, want 200 (refresh on unknown kid)", res.Status)
	}
	if idp.Hits() != hits+1 {
		t.Fatalf("got %d fetches for the new kid, want exactly 1", idp.Hits()-hits)
	}
	idp.publish(jwtRS("k2", 1))
	time.Sleep(60 * time.Millisecond) // past unknown_kid_min_interval
	// A third kid forces the next refresh, which drops k1.
	if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k3", 1), nil))); res.Status != 401 {
		t.Fatalf("unpublished k3: got %d, want 401", res.Status)
	}
	if res := do(t, e.g, route, jwtBearer(old)); res.Status != 401 {
		t.Fatalf("cached k1 token after k1 left the JWKS: got %d, want 401", res.Status)
	}
	if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k2", 1), nil))); res.Status != 200 {
		t.Fatalf("k2 after rotation: got %d, want 200", res.Status)
	}
}

// TestJWTOutageUntilMaxStale: with the JWKS endpoint answering 503, cached
// keys keep verifying (new tokens too) until max_stale, then the provider
// fails closed, in /status and metrics; it recovers when the IdP does.
func TestJWTOutageUntilMaxStale(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, "      refresh_interval: 1s\n      max_stale: 4s\n"), testbed.RunnerOptions{})
	route := jwtRoute("r", `{"provider":"main"}`)
	eventually(t, 5*time.Second, "provider ok", func() bool { s, _ := e.jwtStatus(t, "jwks:main"); return s == "ok" })
	idp.Respond(503, []byte("maintenance"), 0)
	eventually(t, 5*time.Second, "provider degraded", func() bool { s, _ := e.jwtStatus(t, "jwks:main"); return s == "degraded" })
	// The keys are at most ~2 s old here: fresh tokens (no cache entry)
	// still verify.
	if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k1", 0), map[string]any{"jti": "fresh"}))); res.Status != 200 {
		t.Fatalf("during the outage, within max_stale: got %d, want 200", res.Status)
	}
	down := time.Now()
	cached := jwtSign(t, jwtRS("k1", 0), nil)
	do(t, e.g, route, jwtBearer(cached))
	eventually(t, 8*time.Second, "fail closed", func() bool {
		return do(t, e.g, route, jwtBearer(cached)).Status != 200
	})
	took := time.Since(down)
	t.Logf("failed closed %s after the provider turned degraded (max_stale 4s from the last good fetch)", took.Round(10*time.Millisecond))
	if took < time.Second {
		t.Fatalf("failed closed %s after the first failed refresh, want about max_stale (4s) since the last good fetch", took)
	}
	res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k1", 0), map[string]any{"jti": "late"})))
	if res.Status != 503 || res.UpstreamCalled {
		t.Fatalf("past max_stale: got %d (upstream %v), want 503 without the upstream", res.Status, res.UpstreamCalled)
	}
	eventually(t, 3*time.Second, "status down", func() bool { s, _ := e.jwtStatus(t, "jwks:main"); return s == "down" })
	if m := e.metrics(t); !strings.Contains(m, `apisix_edge_jwks_stale{provider="main"} 1`) ||
		!strings.Contains(m, `apisix_edge_jwt_verifications_total{outcome="rejected",reason="keys_unavailable"}`) ||
		!strings.Contains(m, `apisix_edge_jwks_fetches_total{provider="main",result="error"}`) {
		t.Fatalf("/metrics past max_stale: want stale 1, keys_unavailable and fetch errors")
	}
	if out := e.r.Output(); !strings.Contains(out, "jwks:main") || !strings.Contains(out, "down") {
		t.Errorf("runner log does not say jwks:main went down:\n%s", out)
	}
	idp.Respond(200, nil, 0)
	back := eventually(t, 5*time.Second, "recovery", func() bool { return do(t, e.g, route, jwtBearer(cached)).Status == 200 })
	t.Logf("verifying again %s after the IdP came back", back.Round(10*time.Millisecond))
	if s, _ := e.jwtStatus(t, "jwks:main"); s != "ok" {
		t.Fatalf("after recovery: got state %s, want ok", s)
	}
}

// TestJWTRestartDuringOutageUsesSnapshot: the runner dies while the IdP is
// unreachable; the respawned runner verifies with the snapshot. A provider
// without snapshot_file on the same IdP fails closed, as every peer does.
func TestJWTRestartDuringOutageUsesSnapshot(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	snap := filepath.Join(t.TempDir(), "main.json")
	e := jwtStart(t, "  first_fetch_wait: 200ms\n  providers:\n"+
		jwtProvider("main", idp.URL, "      refresh_interval: 1s\n      max_stale: 1m\n      snapshot_file: "+snap+"\n")+
		jwtProvider("nosnap", idp.URL, "      refresh_interval: 1s\n      max_stale: 1m\n"),
		testbed.RunnerOptions{RespawnDelay: 200 * time.Millisecond})
	withSnap, without := jwtRoute("snap", `{"provider":"main"}`), jwtRoute("nosnap", `{"provider":"nosnap"}`)
	eventually(t, 5*time.Second, "snapshot written", func() bool { _, err := os.Stat(snap); return err == nil })
	tok := jwtSign(t, jwtRS("k1", 0), nil)
	for _, r := range []*testbed.Route{withSnap, without} {
		if res := do(t, e.g, r, jwtBearer(tok)); res.Status != 200 {
			t.Fatalf("%s before the outage: got %d, want 200", r.ID, res.Status)
		}
	}
	_ = idp.Down() // connection refused from now on
	if err := e.r.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.r.WaitRespawn(ctx, 1); err != nil {
		t.Fatal(err)
	}
	fresh := jwtSign(t, jwtRS("k1", 0), map[string]any{"jti": "after-restart"})
	if res := do(t, e.g, withSnap, jwtBearer(fresh)); res.Status != 200 {
		t.Fatalf("after the restart, with the snapshot: got %d, want 200\n%s", res.Status, e.r.Output())
	}
	if res := do(t, e.g, without, jwtBearer(fresh)); res.Status != 503 {
		t.Fatalf("after the restart, without snapshot: got %d, want 503 (fail closed)", res.Status)
	}
	state, detail := e.jwtStatus(t, "jwks:main")
	if state == "ok" || detail["snapshot_loaded"] == nil {
		t.Fatalf("jwks:main after the restart: got state %s detail %v, want degraded with snapshot_loaded", state, detail)
	}
}

// TestJWTPrewarm: providers are fetched at start with no traffic, so the
// first request is served from the cache without a fetch on its path.
func TestJWTPrewarm(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, idp, 1)
	hits := idp.Hits()
	res := do(t, e.g, jwtRoute("r", `{"provider":"main"}`), jwtBearer(jwtSign(t, jwtRS("k1", 0), nil)))
	if res.Status != 200 {
		t.Fatalf("first request: got %d, want 200", res.Status)
	}
	if idp.Hits() != hits {
		t.Fatalf("got %d fetches during the first request, want 0 (pre-warmed)", idp.Hits()-hits)
	}
	t.Logf("first request (PrepareConf + verification): %s", res.Latency)
}

// TestJWTWaitsAreBounded: a request never waits for a slow IdP longer than
// first_fetch_wait (before the first keys) or unknown_kid_wait.
func TestJWTWaitsAreBounded(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	idp.Respond(200, nil, 1500*time.Millisecond)
	e := jwtStart(t, "  first_fetch_wait: 200ms\n  unknown_kid_wait: 200ms\n  unknown_kid_min_interval: 50ms\n  providers:\n"+
		jwtProvider("main", idp.URL, "      fetch_timeout: 5s\n"), testbed.RunnerOptions{})
	route := jwtRoute("r", `{"provider":"main"}`)
	tok := jwtSign(t, jwtRS("k1", 0), nil)
	start := time.Now()
	res := do(t, e.g, route, jwtBearer(tok))
	took := time.Since(start)
	if res.Status != 503 || took > time.Second {
		t.Fatalf("before the first keys: got %d after %s, want 503 within ~200ms", res.Status, took)
	}
	t.Logf("request before the first fetch answered in %s (first_fetch_wait 200ms)", took.Round(time.Millisecond))
	eventually(t, 5*time.Second, "first keys", func() bool { return do(t, e.g, route, jwtBearer(tok)).Status == 200 })
	start = time.Now()
	res = do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k9", 0), nil)))
	took = time.Since(start)
	if res.Status != 401 || took > time.Second {
		t.Fatalf("unknown kid with a slow IdP: got %d after %s, want 401 within ~200ms", res.Status, took)
	}
	t.Logf("unknown kid with a 1.5 s IdP answered in %s (unknown_kid_wait 200ms)", took.Round(time.Millisecond))
}

// TestJWTBadJWKSKeepsKeys: an IdP answering garbage does not wipe the keys.
func TestJWTBadJWKSKeepsKeys(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, "      refresh_interval: 1s\n      max_body_size: 4096\n"), testbed.RunnerOptions{})
	route := jwtRoute("r", `{"provider":"main"}`)
	jwtWaitFetched(t, idp, 1)
	for _, body := range [][]byte{[]byte("<html>login</html>"), []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`), []byte(strings.Repeat(" ", 5000) + "{}")} {
		idp.Respond(200, body, 0)
		n := idp.Hits()
		jwtWaitFetched(t, idp, n+1)
		time.Sleep(50 * time.Millisecond) // let the runner process that answer
		if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtRS("k1", 0), nil))); res.Status != 200 {
			t.Fatalf("after a bad JWKS %.20q: got %d, want 200 with the previous keys", body, res.Status)
		}
	}
	if s, _ := e.jwtStatus(t, "jwks:main"); s != "degraded" {
		t.Fatalf("got state %s, want degraded", s)
	}
}

// TestJWTInlineProvider: a route may name a jwks_url; it is fetched when
// the route is first prepared and labelled "inline".
func TestJWTInlineProvider(t *testing.T) {
	idp := jwtNewIdP(t, jwtES("es-1"))
	e := jwtStart(t, "  max_inline_providers: 1\n", testbed.RunnerOptions{})
	route := jwtRoute("inline", `{"jwks_url":"`+idp.URL+`","algorithms":["ES256"]}`)
	if res := do(t, e.g, route, jwtBearer(jwtSign(t, jwtES("es-1"), nil))); res.Status != 200 {
		t.Fatalf("inline provider: got %d, want 200", res.Status)
	}
	second := jwtRoute("inline2", `{"jwks_url":"`+idp.URL+`?realm=2"}`)
	if res := do(t, e.g, second, jwtBearer(jwtSign(t, jwtES("es-1"), nil))); res.Status != 500 {
		t.Fatalf("a second jwks_url beyond max_inline_providers: got %d, want 500 (invalid conf fails closed)", res.Status)
	}
	if st, _ := e.jwtStatus(t, "jwks:inline-1"); st != "ok" {
		t.Fatalf("jwks:inline-1: got %q, want ok", st)
	}
	if m := e.metrics(t); !strings.Contains(m, `apisix_edge_jwks_fetches_total{provider="inline",result="ok"} 1`) {
		t.Fatal(`/metrics: want apisix_edge_jwks_fetches_total{provider="inline",result="ok"} 1`)
	}
}

// TestJWTInvalidConfFailsClosed: the framework would drop a plugin whose
// conf fails to parse and let everything through; here every request on
// such a route gets 500, and the log names the field and the rule once.
func TestJWTInvalidConfFailsClosed(t *testing.T) {
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	tok := jwtSign(t, jwtRS("k1", 0), nil)
	tests := []struct{ conf, logged string }{
		{`{"provider":"missing"}`, `provider: \"missing\" is not in the runner config's jwks.providers`},
		{`{"provder":"main"}`, "provder: unknown field"},
		{`{"provider":"main","algorithms":["HS256"]}`, `algorithms[0]: \"HS256\" is symmetric`},
		{`{"provider":"main","leeway":30}`, "leeway: must be a duration string"},
	}
	for i, tt := range tests {
		route := jwtRoute(fmt.Sprintf("bad-%d", i), tt.conf)
		for j := 0; j < 2; j++ {
			res := do(t, e.g, route, jwtBearer(tok))
			if res.Status != 500 || res.UpstreamCalled {
				t.Fatalf("conf %s: got %d (upstream %v), want 500 without the upstream", tt.conf, res.Status, res.UpstreamCalled)
			}
		}
	}
	// the runner's stderr reaches the test bed through a pipe: wait for the
	// last conf's line before counting
	eventually(t, 5*time.Second, "the last conf's log line", func() bool {
		return strings.Contains(e.r.Output(), tests[len(tests)-1].logged)
	})
	out := e.r.Output()
	for _, tt := range tests {
		if n := strings.Count(out, tt.logged); n != 1 {
			t.Errorf("log lines naming %q: got %d, want 1\n%s", tt.logged, n, out)
		}
	}
}

func TestJWTValidateCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "go-runner.yaml")
	os.WriteFile(cfg, []byte("jwks:\n  providers:\n    - name: keycloak\n      url: https://kc.example/certs\n"), 0o644)
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"uri":"/x","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"jwtcache","value":"{\"provider\":\"keycloak\"}"}]}}}`), 0o644)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"uri":"/x","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"jwtcache","value":"{\"provider\":\"kc\"}"}]}}}`), 0o644)
	for _, tt := range []struct {
		file string
		code int
		want string
	}{
		{good, 0, "good.json: ok"},
		{bad, 1, `provider: "kc" is not in the runner config's jwks.providers (known: keycloak)`},
	} {
		out, err := exec.Command(runnerBin, "validate", "-c", cfg, tt.file).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code != tt.code || !strings.Contains(string(out), tt.want) {
			t.Errorf("validate %s: got exit %d %q, want %d containing %q", filepath.Base(tt.file), code, out, tt.code, tt.want)
		}
	}
}
