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
