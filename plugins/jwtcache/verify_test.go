package jwtcache

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// matrixModule is a module whose provider "kc" holds an RS256 key (kid
// rs), an ES256 key (es) and an EdDSA key (ed), with alg set on the JWKs.
func matrixModule(t testing.TB, clk *clock) *JWTCache {
	t.Helper()
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs", MaxStale: core.Duration(time.Hour)}}}
	m, _, _ := testModule(t, cfg, clk.Now)
	install(t, m, "kc", jwksDoc(t, true, rsKey(t, "rs"), esKey(t, "es"), edKey(t, "ed")))
	return m
}

func TestVerifyMatrix(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	now := clk.Now()
	rc := bind(t, m, `{"provider":"kc","issuer":"https://idp","audience":["api","other"],"leeway":"30s","required_claims":["sub"]}`)
	genKeys(t)
	otherRSA := testKey{kid: "rs", alg: "RS256", priv: rsaB, method: jwt.SigningMethodRS256}

	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaA.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hsConfusion := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x", "iss": "https://idp", "aud": "api", "exp": now.Add(time.Hour).Unix()})
		tok.Header["kid"] = "rs"
		s, err := tok.SignedString(pubPEM)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	none := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "x", "iss": "https://idp", "aud": "api", "exp": now.Add(time.Hour).Unix()})
		tok.Header["kid"] = "rs"
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	rs384 := testKey{kid: "rs", alg: "RS384", priv: rsaA, method: jwt.SigningMethodRS384}
	esAsRS := testKey{kid: "rs", alg: "ES256", priv: ecA, method: jwt.SigningMethodES256}
	valid := sign(t, rsKey(t, "rs"), now, nil)
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + strings.TrimRight(parts[1], "=") + "A." + parts[2]

	tests := []struct {
		name   string
		token  string
		reason reason
		status int
	}{
		{"RS256", valid, reasonOK, 0},
		{"ES256", sign(t, esKey(t, "es"), now, nil), reasonOK, 0},
		{"EdDSA", sign(t, edKey(t, "ed"), now, nil), reasonOK, 0},
		{"second audience", sign(t, rsKey(t, "rs"), now, map[string]any{"aud": []string{"x", "other"}}), reasonOK, 0},
		{"expired within leeway", sign(t, rsKey(t, "rs"), now, map[string]any{"exp": now.Add(-20 * time.Second).Unix()}), reasonOK, 0},
		{"expired", sign(t, rsKey(t, "rs"), now, map[string]any{"exp": now.Add(-time.Minute).Unix()}), reasonExpired, 401},
		{"no exp", sign(t, rsKey(t, "rs"), now, map[string]any{"exp": nil}), reasonMissingClaim, 401},
		{"nbf in the future", sign(t, rsKey(t, "rs"), now, map[string]any{"nbf": now.Add(time.Minute).Unix()}), reasonNotYetValid, 401},
		{"iat in the future", sign(t, rsKey(t, "rs"), now, map[string]any{"iat": now.Add(time.Minute).Unix()}), reasonIssuedInFuture, 401},
		{"iat within leeway", sign(t, rsKey(t, "rs"), now, map[string]any{"iat": now.Add(20 * time.Second).Unix()}), reasonOK, 0},
		{"bad issuer", sign(t, rsKey(t, "rs"), now, map[string]any{"iss": "https://evil"}), reasonBadIssuer, 401},
		{"bad audience", sign(t, rsKey(t, "rs"), now, map[string]any{"aud": "nope"}), reasonBadAudience, 401},
		{"missing required sub", sign(t, rsKey(t, "rs"), now, map[string]any{"sub": nil}), reasonMissingClaim, 403},
		{"signed by another key under the same kid", sign(t, otherRSA, now, nil), reasonBadSignature, 401},
		{"tampered payload", tampered, reasonBadSignature, 401},
		{"alg none", none, reasonBadAlg, 401},
		{"HS256 with the RSA public key as secret", hsConfusion, reasonBadAlg, 401},
		{"RS384 against a JWK with alg RS256", sign(t, rs384, now, nil), reasonBadAlg, 401},
		{"ES256 against the RSA key", sign(t, esAsRS, now, nil), reasonBadAlg, 401},
		{"unknown kid", sign(t, rsKey(t, "nope"), now, nil), reasonUnknownKID, 401},
		{"garbage header", "e30.e30.c2ln", reasonBadAlg, 401},
		{"header not JSON", "bm90anNvbg.e30.c2ln", reasonMalformed, 401},
	}
	for _, tt := range tests {
		v := m.verify(rc, tt.token)
		if v.reason != tt.reason || v.status != tt.status {
			t.Errorf("%s: got (%s, %d), want (%s, %d)", tt.name, v.reason, v.status, tt.reason, tt.status)
		}
	}
}

// TestKeyWithoutAlgStillChecksFamily: a JWK without alg accepts any alg of
// its family, and only that.
func TestKeyWithoutAlgStillChecksFamily(t *testing.T) {
	clk := newClock()
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs"}}}
	m, _, _ := testModule(t, cfg, clk.Now)
	install(t, m, "kc", jwksDoc(t, false, rsKey(t, "rs"), esKey(t, "es")))
	rc := bind(t, m, `{"provider":"kc"}`)
	now := clk.Now()
	genKeys(t)
	tests := []struct {
		name string
		key  testKey
		want reason
	}{
		{"PS256 on an RSA key", testKey{kid: "rs", priv: rsaA, method: jwt.SigningMethodPS256}, reasonOK},
		{"RS512 on an RSA key", testKey{kid: "rs", priv: rsaA, method: jwt.SigningMethodRS512}, reasonOK},
		{"ES256 on an RSA key", testKey{kid: "rs", priv: ecA, method: jwt.SigningMethodES256}, reasonBadAlg},
		{"RS256 on an EC key", testKey{kid: "es", priv: rsaA, method: jwt.SigningMethodRS256}, reasonBadAlg},
		{"no kid: tried against the fitting keys", testKey{priv: ecA, method: jwt.SigningMethodES256}, reasonOK},
	}
	for _, tt := range tests {
		if v := m.verify(rc, sign(t, tt.key, now, nil)); v.reason != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, v.reason, tt.want)
		}
	}
}

func TestAlgFitsKey(t *testing.T) {
	genKeys(t)
	tests := []struct {
		alg  string
		key  any
		want bool
	}{
		{"RS256", &rsaA.PublicKey, true},
		{"PS512", &rsaA.PublicKey, true},
		{"HS256", &rsaA.PublicKey, false},
		{"ES256", &ecA.PublicKey, true},
		{"ES384", &ecA.PublicKey, false}, // P-256 key
		{"EdDSA", edA.Public(), true},
		{"EdDSA", &rsaA.PublicKey, false},
		{"none", &rsaA.PublicKey, false},
		{"RS256", []byte("secret"), false},
	}
	for _, tt := range tests {
		if got := algFitsKey(tt.alg, tt.key); got != tt.want {
			t.Errorf("algFitsKey(%s, %T): got %v, want %v", tt.alg, tt.key, got, tt.want)
		}
	}
}

func TestCacheHitAndExpiry(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	rc := bind(t, m, `{"provider":"kc","leeway":"0s"}`)
	tok := sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"exp": clk.Now().Add(time.Minute).Unix()})
	for i := 0; i < 3; i++ {
		if v := m.verify(rc, tok); v.reason != reasonOK {
			t.Fatalf("request %d: got %s, want ok", i, v.reason)
		}
	}
	if h, ms := testutil.ToFloat64(m.hits), testutil.ToFloat64(m.misses); h != 2 || ms != 1 {
		t.Fatalf("got %v hits %v misses, want 2 and 1", h, ms)
	}
	// Another route with stricter rules still applies them on a hit.
	strict := bind(t, m, `{"provider":"kc","audience":"other"}`)
	if v := m.verify(strict, tok); v.reason != reasonBadAudience {
		t.Fatalf("cached token on a route with another audience: got %s, want bad_audience", v.reason)
	}
	rsOnly := bind(t, m, `{"provider":"kc","algorithms":["ES256"]}`)
	if v := m.verify(rsOnly, tok); v.reason != reasonBadAlg {
		t.Fatalf("cached RS256 token on an ES256-only route: got %s, want bad_alg", v.reason)
	}
	clk.Advance(time.Minute)
	if v := m.verify(rc, tok); v.reason != reasonExpired {
		t.Fatalf("at exp: got %s, want expired", v.reason)
	}
	if m.cache.Len() != 0 {
		t.Fatalf("got %d cache entries at exp, want 0 (never kept past exp)", m.cache.Len())
	}
}

// TestCacheRecency: a hit moves its token to the front of the LRU at most
// once a second, so a token in use outlives tokens verified once, except
// against a burst of new tokens within a second of its last move.
func TestCacheRecency(t *testing.T) {
	clk := newClock()
	cfg := Config{TokenCacheSize: 2, Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs", MaxStale: core.Duration(time.Hour)}}}
	m, _, _ := testModule(t, cfg, clk.Now)
	install(t, m, "kc", jwksDoc(t, true, rsKey(t, "rs")))
	rc := bind(t, m, `{"provider":"kc"}`)
	toks := map[string]string{}
	for _, sub := range []string{"a", "b", "c", "d"} {
		toks[sub] = sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"sub": sub, "exp": clk.Now().Add(time.Hour).Unix()})
	}
	steps := []struct {
		advance time.Duration
		sub     string
		hit     bool
	}{
		{0, "a", false},
		{0, "b", false},
		{2 * time.Second, "a", true}, // moved to the front: b is the oldest
		{0, "c", false},              // evicts b
		{0, "a", true},               // not moved again within the second
		{0, "b", false},              // so a, the oldest, is evicted
		{0, "a", false},
		{2 * time.Second, "b", true},
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		h0 := testutil.ToFloat64(m.hits)
		if v := m.verify(rc, toks[st.sub]); v.reason != reasonOK {
			t.Fatalf("step %d (%s): got %s, want ok", i, st.sub, v.reason)
		}
		if got := testutil.ToFloat64(m.hits) > h0; got != st.hit {
			t.Errorf("step %d (%s): got hit %v, want %v", i, st.sub, got, st.hit)
		}
	}
}

func TestCacheInvalidatedWhenKeyLeaves(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	rc := bind(t, m, `{"provider":"kc"}`)
	tok := sign(t, rsKey(t, "rs"), clk.Now(), nil)
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("got %s, want ok", v.reason)
	}
	if m.cache.Len() != 1 {
		t.Fatalf("got %d cache entries, want 1", m.cache.Len())
	}
	install(t, m, "kc", jwksDoc(t, true, esKey(t, "es"))) // rotation: rs is gone
	if m.cache.Len() != 0 {
		t.Fatalf("got %d cache entries after the kid left, want 0", m.cache.Len())
	}
	if v := m.verify(rc, tok); v.reason != reasonUnknownKID {
		t.Fatalf("after the kid left: got %s, want unknown_kid", v.reason)
	}
	// The same kid with other key material is another key: the entry must
	// not survive either.
	install(t, m, "kc", jwksDoc(t, true, rsKey(t, "rs")))
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("kid back: got %s, want ok", v.reason)
	}
	genKeys(t)
	install(t, m, "kc", jwksDoc(t, true, testKey{kid: "rs", alg: "RS256", priv: rsaB}))
	if v := m.verify(rc, tok); v.reason != reasonBadSignature {
		t.Fatalf("kid reused with another key: got %s, want bad_signature (not a cache hit)", v.reason)
	}
}

func TestStaleKeysFailClosed(t *testing.T) {
	clk := newClock()
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs", RefreshInterval: core.Duration(time.Minute), MaxStale: core.Duration(10 * time.Minute)}}}
	m, reg, st := testModule(t, cfg, clk.Now)
	rc := bind(t, m, `{"provider":"kc"}`)
	tok := sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"exp": clk.Now().Add(24 * time.Hour).Unix()})
	if v := m.verify(rc, tok); v.reason != reasonKeysUnavailable || v.status != http.StatusServiceUnavailable {
		t.Fatalf("before any key: got (%s, %d), want (keys_unavailable, 503)", v.reason, v.status)
	}
	install(t, m, "kc", jwksDoc(t, true, rsKey(t, "rs")))
	p := m.providers["kc"]
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("fresh keys: got %s, want ok", v.reason)
	}
	clk.Advance(9 * time.Minute)
	p.finish(p.started+1, nil, errTooLarge) // a failed refresh within max_stale
	p.started++
	if got := st.Backend("jwks:kc").State(); got != core.StateDegraded {
		t.Fatalf("failing within max_stale: got state %s, want degraded", got)
	}
	if v := m.verify(rc, tok); v.reason != reasonOK {
		t.Fatalf("within max_stale: got %s, want ok", v.reason)
	}
	clk.Advance(2 * time.Minute)
	if v := m.verify(rc, tok); v.reason != reasonKeysUnavailable {
		t.Fatalf("past max_stale, cached token: got %s, want keys_unavailable", v.reason)
	}
	p.finish(p.started+1, nil, errTooLarge)
	p.started++
	if got := st.Backend("jwks:kc").State(); got != core.StateDown {
		t.Fatalf("past max_stale: got state %s, want down", got)
	}
	const want = `
# HELP apisix_edge_jwks_key_age_seconds Seconds since the keys in use were last fetched successfully (absent until a provider has keys; inline providers: the oldest).
# TYPE apisix_edge_jwks_key_age_seconds gauge
apisix_edge_jwks_key_age_seconds{provider="kc"} 660
# HELP apisix_edge_jwks_stale 1 while the provider fails closed because its keys are older than max_stale or it never had keys, else 0.
# TYPE apisix_edge_jwks_stale gauge
apisix_edge_jwks_stale{provider="kc"} 1
# HELP apisix_edge_jwks_fetches_total JWKS fetches by provider and result (ok, error); inline jwks_url providers are labelled inline.
# TYPE apisix_edge_jwks_fetches_total counter
apisix_edge_jwks_fetches_total{provider="kc",result="error"} 2
apisix_edge_jwks_fetches_total{provider="kc",result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "apisix_edge_jwks_key_age_seconds", "apisix_edge_jwks_stale", "apisix_edge_jwks_fetches_total"); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownKIDRefreshIsRateLimited(t *testing.T) {
	clk := newClock()
	cfg := Config{UnknownKIDMinInterval: core.Duration(10 * time.Second),
		Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs"}}}
	m, _, _ := testModule(t, cfg, clk.Now)
	p := m.providers["kc"]
	// No loop runs, so a granted refresh is only kicked, and the wait ends
	// at the (1 ms) bound; what matters is whether a kick was granted.
	p.refreshForKID(time.Millisecond)
	if len(p.kick) != 1 {
		t.Fatalf("first unknown kid: got %d kicks, want 1", len(p.kick))
	}
	<-p.kick
	p.finish(p.started+1, nil, errTooLarge) // that refresh ends
	p.started++
	p.refreshForKID(time.Millisecond)
	if len(p.kick) != 0 {
		t.Fatalf("second unknown kid within the interval: got a kick, want none")
	}
	clk.Advance(10 * time.Second)
	p.refreshForKID(time.Millisecond)
	if len(p.kick) != 1 {
		t.Fatalf("after the interval: got %d kicks, want 1", len(p.kick))
	}
}

func TestVerificationMetrics(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	rc := bind(t, m, `{"provider":"kc"}`)
	m.fail(discard{}, rc, reject(reasonMissingToken))
	v := m.verify(rc, sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"exp": clk.Now().Add(-time.Hour).Unix()}))
	m.fail(discard{}, rc, v)
	if got := testutil.ToFloat64(m.byReason[reasonExpired]); got != 1 {
		t.Fatalf("expired counter: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.verifications.WithLabelValues("rejected", "missing_token")); got != 1 {
		t.Fatalf("missing_token counter: got %v, want 1", got)
	}
}

type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

func TestClaimHeaderValue(t *testing.T) {
	tests := []struct {
		in   any
		want string
		ok   bool
	}{
		{"u-1", "u-1", true},
		{json.Number("12345678901234567890"), "12345678901234567890", true},
		{true, "true", true},
		{[]any{"a", "b"}, `["a","b"]`, true},
		{map[string]any{"k": 1.0}, `{"k":1}`, true},
		{"a\r\nX-Injected: 1", "", false},
		{"", "", false},
		{nil, "", false},
		{strings.Repeat("a", 5000), "", false},
	}
	for _, tt := range tests {
		got, ok := claimHeaderValue(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("claimHeaderValue(%v): got (%q, %v), want (%q, %v)", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// BenchmarkVerifyCacheHit is the repeated-token path: hash, lookup, claim
// checks.
func BenchmarkVerifyCacheHit(b *testing.B) {
	clk := newClock()
	m := matrixModule(b, clk)
	rc := bind(b, m, `{"provider":"kc","issuer":"https://idp","audience":"api"}`)
	tok := sign(b, rsKey(b, "rs"), clk.Now(), nil)
	m.verify(rc, tok)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if v := m.verify(rc, tok); v.status != 0 {
			b.Fatal(v.reason)
		}
	}
}

// BenchmarkVerifyRS256Miss verifies a distinct RS256 (2048-bit) token each
// time: the cache holds one entry and tokens cycle through 256.
func BenchmarkVerifyRS256Miss(b *testing.B) {
	clk := newClock()
	cfg := Config{TokenCacheSize: 1, Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs"}}}
	m, _, _ := testModule(b, cfg, clk.Now)
	install(b, m, "kc", jwksDoc(b, true, rsKey(b, "rs")))
	rc := bind(b, m, `{"provider":"kc","issuer":"https://idp","audience":"api"}`)
	toks := make([]string, 256)
	for i := range toks {
		toks[i] = sign(b, rsKey(b, "rs"), clk.Now(), map[string]any{"jti": i})
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if v := m.verify(rc, toks[i%len(toks)]); v.status != 0 {
			b.Fatal(v.reason)
		}
		i++
	}
}

// BenchmarkRSAVerifyPKCS1v15 is the physical limit of the miss path: one
// bare RSA-2048 PKCS#1 v1.5 verification of a SHA-256 digest.
func BenchmarkRSAVerifyPKCS1v15(b *testing.B) {
	genKeys(b)
	tok := sign(b, rsKey(b, "rs"), newClock().Now(), nil)
	i := strings.LastIndexByte(tok, '.')
	sig, err := jwt.NewParser().DecodeSegment(tok[i+1:])
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte(tok[:i]))
	b.ReportAllocs()
	for b.Loop() {
		if err := rsa.VerifyPKCS1v15(&rsaA.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCacheHitNeedsTheSameToken: the cache's key is a 64-bit hash, so two
// tokens may share it; an entry found under a forged token's key but made
// for another token is a miss, and the forged token is verified (and
// fails) as if nothing were cached.
func TestCacheHitNeedsTheSameToken(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	rc := bind(t, m, `{"provider":"kc","issuer":"https://idp","audience":"api"}`)
	good := sign(t, rsKey(t, "rs"), clk.Now(), nil)
	if v := m.verify(rc, good); v.reason != reasonOK {
		t.Fatalf("good token: %s", v.reason)
	}
	p := rc.provs[0].prov
	goodTok := tokenString(good)
	e, ok := m.cache.Peek(cacheKey{prov: p.id, hash: goodTok.hash()})
	if !ok || e.token != good {
		t.Fatal("good token not cached")
	}
	// the forged token: the good one's signature on another payload
	parts := strings.Split(good, ".")
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"admin","iss":"https://idp","aud":"api","exp":9999999999}`)) + "." + parts[2]
	forgedTok := tokenString(forged)
	m.cache.Add(cacheKey{prov: p.id, hash: forgedTok.hash()}, e) // as a hash collision would
	if v := m.verify(rc, forged); v.reason != reasonBadSignature {
		t.Fatalf("forged token under the good one's entry: got %q, want %q", v.reason, reasonBadSignature)
	}
	if v := m.verify(rc, good); v.reason != reasonOK {
		t.Fatalf("good token after: %s", v.reason)
	}
}
