package idp_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/apisix-edge/edge-runner/testbed/idp"
	"github.com/golang-jwt/jwt/v5"
)

func get(url string) (int, []byte, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Tokens signed by each kind of key verify against the served JWKS with an
// independent verifier (keyfunc + golang-jwt), and only with the right key.
func TestSignedTokensVerifyAgainstServedJWKS(t *testing.T) {
	rsaKey, err := idp.NewRSA("rs", 0)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := idp.NewEC("es")
	edKey, _ := idp.NewEd25519("ed")
	other, _ := idp.NewRSA("rs", 0) // same kid, different key material
	s, err := idp.Start(rsaKey, ecKey, edKey)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, body, err := get(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	kf, err := keyfunc.NewJWKSetJSON(json.RawMessage(body))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		key  *idp.Key
		want bool
	}{{rsaKey, true}, {ecKey, true}, {edKey, true}, {other, false}} {
		tok, err := tc.key.Sign(idp.Claims("alice", s.Issuer(), "api", now, nil))
		if err != nil {
			t.Fatal(err)
		}
		_, err = jwt.Parse(tok, kf.Keyfunc, jwt.WithIssuer(s.Issuer()), jwt.WithAudience("api"))
		if got := err == nil; got != tc.want {
			t.Errorf("%s/%s: verified %v (%v), want %v", tc.key.KID, tc.key.Method.Alg(), got, err, tc.want)
		}
	}
}

func TestFaults(t *testing.T) {
	k, _ := idp.NewEC("k1")
	s, err := idp.Start(k)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Respond(http.StatusServiceUnavailable, []byte("down"), 0)
	if code, body, _ := get(s.URL()); code != 503 || string(body) != "down" {
		t.Errorf("after Respond(503): got %d %q, want 503 \"down\"", code, body)
	}
	s.Respond(http.StatusOK, nil, 0)
	if err := s.Down(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(s.URL()); err == nil {
		t.Error("after Down: got an answer, want connection refused")
	}
	if err := s.Up(); err != nil {
		t.Fatal(err)
	}
	k2, _ := idp.NewEC("k2")
	if err := s.Publish(k2); err != nil {
		t.Fatal(err)
	}
	code, body, err := get(s.URL())
	var doc struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err != nil || code != 200 || json.Unmarshal(body, &doc) != nil || len(doc.Keys) != 1 || doc.Keys[0].KID != "k2" {
		t.Errorf("after Up and Publish(k2): got %d %s (%v), want 200 with kid k2 only", code, body, err)
	}
	if got := s.Hits(); got != 2 {
		t.Errorf("hits: got %d, want 2", got)
	}
}

// Several realms on one server: each serves its own keys and a discovery
// document naming its issuer and JWKS URL, which an independent verifier
// follows.
func TestRealmsAndDiscovery(t *testing.T) {
	ka, _ := idp.NewEC("a1")
	kb, _ := idp.NewEC("b1")
	s, err := idp.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ra, err := s.AddRealm("tenant-a", ka)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := s.AddRealm("tenant-b", kb)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddRealm("bad/name"); err == nil {
		t.Error("AddRealm(bad/name): got no error, want one")
	}
	for _, tc := range []struct {
		realm *idp.Realm
		key   *idp.Key
		other *idp.Key
	}{{ra, ka, kb}, {rb, kb, ka}} {
		code, body, err := get(tc.realm.DiscoveryURL())
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err != nil || code != 200 || json.Unmarshal(body, &doc) != nil {
			t.Fatalf("discovery: got %d %s (%v), want 200 with a JSON document", code, body, err)
		}
		if doc.Issuer != tc.realm.Issuer() || doc.JWKSURI != tc.realm.URL() {
			t.Errorf("discovery: got issuer %q jwks_uri %q, want %q and %q", doc.Issuer, doc.JWKSURI, tc.realm.Issuer(), tc.realm.URL())
		}
		_, jwks, err := get(doc.JWKSURI)
		if err != nil {
			t.Fatal(err)
		}
		kf, err := keyfunc.NewJWKSetJSON(json.RawMessage(jwks))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []*idp.Key{tc.key, tc.other} {
			tok, _ := k.Sign(idp.Claims("alice", tc.realm.Issuer(), "api", time.Now(), nil))
			_, err := jwt.Parse(tok, kf.Keyfunc, jwt.WithIssuer(tc.realm.Issuer()))
			if got, want := err == nil, k == tc.key; got != want {
				t.Errorf("realm %s, key %s: got verified %v, want %v", tc.realm.Issuer(), k.KID, got, want)
			}
		}
	}
	ra.SetDiscovery([]byte(`{"issuer":"https://evil.test"}`))
	if _, body, _ := get(ra.DiscoveryURL()); string(body) != `{"issuer":"https://evil.test"}` {
		t.Errorf("SetDiscovery: got %s, want the set document", body)
	}
	if got := s.HitsOf("/realms/tenant-a/.well-known/openid-configuration"); got != 2 {
		t.Errorf("HitsOf discovery: got %d, want 2", got)
	}
	if code, _, _ := get(s.DiscoveryURL()); code != 200 {
		t.Errorf("default realm discovery: got %d, want 200", code)
	}
}
