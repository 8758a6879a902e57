package jwtcache

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/apisix-edge/edge-runner/core"
)

func TestParseJWKS(t *testing.T) {
	good := jwksDoc(t, true, rsKey(t, "rs"), esKey(t, "es"), edKey(t, "ed"))
	withExtra := func(extra ...string) []byte {
		var doc map[string][]json.RawMessage
		if err := json.Unmarshal(good, &doc); err != nil {
			t.Fatal(err)
		}
		for _, e := range extra {
			doc["keys"] = append(doc["keys"], json.RawMessage(e))
		}
		b, _ := json.Marshal(doc)
		return b
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallJWK, _ := jwkset.NewJWKFromKey(&small.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "small"}})
	smallRaw, _ := json.Marshal(smallJWK.Marshal())
	rsJWK := string(jwksDoc(t, true, rsKey(t, "rs2")))
	rsJWK = rsJWK[strings.Index(rsJWK, "[")+1 : strings.LastIndex(rsJWK, "]")]

	tests := []struct {
		name    string
		doc     []byte
		wantErr string
		kids    int
		skipped int
	}{
		{"three algorithms", good, "", 3, 0},
		{"encryption and symmetric keys are skipped", withExtra(
			strings.Replace(strings.Replace(rsJWK, `"use":"sig"`, `"use":"enc"`, 1), `"alg":"RS256"`, `"alg":"RSA-OAEP"`, 1),
			`{"kty":"oct","k":"c2VjcmV0","kid":"hmac","alg":"HS256"}`,
			`{"kty":"OKP","crv":"X25519","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo","kid":"x"}`,
			`{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA","kid":"k1"}`,
			string(smallRaw),
			`{"kty":"RSA","kid":"ops","key_ops":["encrypt"],"n":"AQAB","e":"AQAB"}`,
		), "", 3, 6},
		{"not JSON", []byte("<html>"), "parse jwks: not a JSON object with a keys list", 0, 0},
		{"a list", []byte("[]"), "parse jwks: not a JSON object", 0, 0},
		{"no keys field", []byte(`{"foo":1}`), "parse jwks: no keys list", 0, 0},
		{"empty keys", []byte(`{"keys":[]}`), "parse jwks: no usable signing key (0 skipped)", 0, 0},
		{"only unusable keys", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`), "parse jwks: no usable signing key (1 skipped)", 0, 0},
		{"malformed RSA key", withExtra(`{"kty":"RSA","kid":"bad","n":"!!!","e":"AQAB"}`), `parse jwks: key 3 (kid "bad")`, 0, 0},
		{"key not an object", withExtra(`"x"`), "parse jwks: key 3: not a JWK object", 0, 0},
		{"duplicate kid", withExtra(strings.Replace(rsJWK, `"rs2"`, `"rs"`, 1)), `parse jwks: key 3: duplicate kid "rs"`, 0, 0},
		{"alg that does not fit the key", []byte(strings.Replace(string(good), `"alg":"ES256"`, `"alg":"RS256"`, 1)), "", 2, 1},
	}
	for _, tt := range tests {
		ks, err := parseJWKS(tt.doc, time.Now())
		if tt.wantErr != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Errorf("%s: got error %v, want prefix %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: got error %v", tt.name, err)
			continue
		}
		if len(ks.all) != tt.kids || ks.skipped != tt.skipped {
			t.Errorf("%s: got %d keys %v and %d skipped, want %d and %d", tt.name, len(ks.all), ks.kids(), ks.skipped, tt.kids, tt.skipped)
		}
	}
	many := `{"keys":[` + strings.TrimSuffix(strings.Repeat(`{"kty":"oct"},`, maxKeys+1), ",") + `]}`
	if _, err := parseJWKS([]byte(many), time.Now()); err == nil || !strings.Contains(err.Error(), "more than 256") {
		t.Errorf("too many keys: got %v, want an error", err)
	}
}

// idp is a JWKS endpoint on loopback whose answer the test chooses.
type idp struct {
	mu     sync.Mutex
	status int
	body   []byte
	hits   int
	srv    *httptest.Server
}

func newIdP(t *testing.T, body []byte) *idp {
	i := &idp{status: 200, body: body}
	i.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		i.mu.Lock()
		st, b := i.status, i.body
		i.hits++
		i.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(st)
		_, _ = w.Write(b)
	}))
	t.Cleanup(i.srv.Close)
	return i
}

func (i *idp) serve(status int, body []byte) {
	i.mu.Lock()
	i.status, i.body = status, body
	i.mu.Unlock()
}

func TestFetchKeepsKeysOnBadResponses(t *testing.T) {
	good := jwksDoc(t, true, rsKey(t, "rs"))
	srv := newIdP(t, good)
	clk := newClock()
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: srv.srv.URL, MaxBodySize: 4096}}}
	m, _, st := testModule(t, cfg, clk.Now)
	p := m.providers["kc"]
	ctx := context.Background()
	if !p.refresh(ctx) {
		t.Fatalf("first fetch failed: %s", p.lastErr)
	}
	first := p.set.Load()
	tests := []struct {
		name    string
		status  int
		body    []byte
		wantErr string
	}{
		{"503", 503, []byte("down"), "fetch jwks: status 503"},
		{"not JSON", 200, []byte("<html>oops</html>"), "parse jwks: not a JSON object"},
		{"too large", 200, []byte(`{"keys":[],"pad":"` + strings.Repeat("x", 5000) + `"}`), "fetch jwks: body too large: more than 4096 bytes"},
		{"unusable keys", 200, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`), "parse jwks: no usable signing key"},
	}
	for _, tt := range tests {
		srv.serve(tt.status, tt.body)
		if p.refresh(ctx) {
			t.Fatalf("%s: refresh succeeded, want a failure", tt.name)
		}
		if !strings.HasPrefix(p.lastErr, tt.wantErr) {
			t.Errorf("%s: got error %q, want prefix %q", tt.name, p.lastErr, tt.wantErr)
		}
		if p.set.Load() != first {
			t.Fatalf("%s: keys replaced, want the previous ones kept", tt.name)
		}
		if got := st.Backend("jwks:kc").State(); got != core.StateDegraded {
			t.Errorf("%s: got state %s, want degraded", tt.name, got)
		}
	}
	srv.serve(200, jwksDoc(t, true, rsKey(t, "rs"), esKey(t, "es")))
	if !p.refresh(ctx) || len(p.set.Load().all) != 2 || st.Backend("jwks:kc").State() != core.StateOK {
		t.Fatalf("recovery: got error %q, %d keys, want ok with 2", p.lastErr, len(p.set.Load().all))
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kc.json")
	const url = "https://idp/certs"
	at := time.Unix(1_800_000_000, 0).UTC()
	ks, err := parseJWKS(jwksDoc(t, true, rsKey(t, "rs"), edKey(t, "ed")), at)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshot(path, url, "", ks); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("got %d files in the snapshot dir, want 1 (no temp file left)", len(entries))
	}
	got, _, err := readSnapshot(path, url, 1<<20, at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !got.fetchedAt.Equal(at) || got.fp != ks.fp {
		t.Fatalf("got fetched_at %s fp %x, want %s %x", got.fetchedAt, got.fp[:4], at, ks.fp[:4])
	}
	if _, _, err := readSnapshot(path, "https://other/certs", 1<<20, at); err == nil || !strings.Contains(err.Error(), "another url") {
		t.Fatalf("other url: got %v, want it ignored", err)
	}
	if _, _, err := readSnapshot(path, url, 1<<20, at.Add(-time.Hour)); err == nil || !strings.Contains(err.Error(), "not in the past") {
		t.Fatalf("snapshot from the future: got %v, want it ignored", err)
	}
	if err := os.WriteFile(path, []byte(`{"version":1,"url":"`+url+`","fetched_at":"2027-01-01T00:00:00Z","jwks":{"keys":[]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readSnapshot(path, url, 1<<20, at); err == nil || !strings.Contains(err.Error(), "no usable signing key") {
		t.Fatalf("snapshot without keys: got %v, want an error", err)
	}
	if err := writeSnapshot(filepath.Join(dir, "missing", "x.json"), url, "", ks); err == nil {
		t.Fatal("snapshot into a missing directory: got no error")
	}
}

// TestProviderLoadsSnapshotBeforeFetching: with the IdP unreachable, the
// snapshot's keys verify, and the provider reports degraded, not down.
func TestProviderLoadsSnapshotBeforeFetching(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "kc.json")
	url := "http://127.0.0.1:1/certs" // nothing listens on port 1
	ks, err := parseJWKS(jwksDoc(t, true, rsKey(t, "rs")), clk.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshot(path, url, "", ks); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: url, SnapshotFile: path, FetchTimeout: core.Duration(time.Second)}}}
	m, _, st := testModule(t, cfg, clk.Now)
	p := m.providers["kc"]
	p.loadSnapshot()
	rc := bind(t, m, `{"provider":"kc"}`)
	if v := m.verify(rc, sign(t, rsKey(t, "rs"), clk.Now(), nil)); v.reason != reasonOK {
		t.Fatalf("with the snapshot: got %s, want ok", v.reason)
	}
	if p.refresh(context.Background()) {
		t.Fatal("fetch from a closed port succeeded")
	}
	if got := st.Backend("jwks:kc").State(); got != core.StateDegraded {
		t.Fatalf("got state %s, want degraded (snapshot keys within max_stale)", got)
	}
}
