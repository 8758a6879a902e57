// Package idp is a real OpenID-provider key endpoint on loopback, for tests
// and load runs of JWT verification: it generates signing keys, signs
// tokens with them, and serves their public halves as a JWKS at a URL
// shaped like Keycloak's (.../realms/<realm>/protocol/openid-connect/certs),
// with an OpenID discovery document per realm
// (.../realms/<realm>/.well-known/openid-configuration). One server holds
// several realms, each with its own keys and issuer, as a Keycloak does
// with a realm per tenant. Faults are real: the server can answer with any
// status, body or delay, and can stop listening (connection refused) and
// come back on its port.
package idp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Key is a signing key and the JWS algorithm it signs with. A Key with a
// nil Method is an encryption key: it is published with use "enc" and alg
// RSA-OAEP, as Keycloak publishes one beside its signing keys, and cannot
// sign.
type Key struct {
	KID    string
	Signer crypto.Signer
	Method jwt.SigningMethod
}

// NewRSAEncryption returns an RSA key published for encryption only.
func NewRSAEncryption(kid string) (*Key, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("new rsa key: %w", err)
	}
	return &Key{KID: kid, Signer: k}, nil
}

// NewRSA returns an RS256 key of the given size (2048 if bits is 0).
func NewRSA(kid string, bits int) (*Key, error) {
	if bits == 0 {
		bits = 2048
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, fmt.Errorf("new rsa key: %w", err)
	}
	return &Key{KID: kid, Signer: k, Method: jwt.SigningMethodRS256}, nil
}

// NewEC returns an ES256 (P-256) key.
func NewEC(kid string) (*Key, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new ec key: %w", err)
	}
	return &Key{KID: kid, Signer: k, Method: jwt.SigningMethodES256}, nil
}

// NewEd25519 returns an EdDSA key.
func NewEd25519(kid string) (*Key, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new ed25519 key: %w", err)
	}
	return &Key{KID: kid, Signer: k, Method: jwt.SigningMethodEdDSA}, nil
}

// With returns a copy of k that signs under another kid or algorithm, for
// tokens that lie about their key (alg/kid confusion tests).
func (k *Key) With(kid string, m jwt.SigningMethod) *Key {
	c := *k
	c.KID = kid
	if m != nil {
		c.Method = m
	}
	return &c
}

// Sign returns a compact JWS of claims, with the key's kid in the header
// (none if KID is empty).
func (k *Key) Sign(claims map[string]any) (string, error) {
	if k.Method == nil {
		return "", errors.New("sign token: key " + k.KID + " is an encryption key")
	}
	tok := jwt.NewWithClaims(k.Method, jwt.MapClaims(claims))
	if k.KID != "" {
		tok.Header["kid"] = k.KID
	}
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// Claims returns the usual claims of an access token: sub, iss, aud, iat
// now and exp in an hour, with extra merged over them (a nil value
// deletes a claim).
func Claims(sub, iss, aud string, now time.Time, extra map[string]any) map[string]any {
	c := map[string]any{"sub": sub, "iss": iss, "aud": aud, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for n, v := range extra {
		if v == nil {
			delete(c, n)
		} else {
			c[n] = v
		}
	}
	return c
}

// JWKS renders the public keys as a JWKS document, each with kid, use and
// alg.
func JWKS(keys ...*Key) ([]byte, error) {
	doc := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		meta := jwkset.JWKMetadataOptions{KID: k.KID, USE: jwkset.UseEnc, ALG: jwkset.AlgRSAOAEP}
		if k.Method != nil {
			meta.USE, meta.ALG = jwkset.UseSig, jwkset.ALG(k.Method.Alg())
		}
		j, err := jwkset.NewJWKFromKey(k.Signer.Public(), jwkset.JWKOptions{Metadata: meta})
		if err != nil {
			return nil, fmt.Errorf("jwks: key %s: %w", k.KID, err)
		}
		doc.Keys = append(doc.Keys, j.Marshal())
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	return b, nil
}

// Server serves the JWKS and discovery documents of its realms on a
// loopback port.
type Server struct {
	addr string
	path string

	mu     sync.Mutex
	doc    []byte
	status int
	body   []byte
	delay  time.Duration
	hits   int
	paths  map[string]int
	realms map[string]*Realm
	srv    *http.Server
}

// Realm is one realm of the server: its own keys, issuer and discovery
// document.
type Realm struct {
	s    *Server
	name string

	// guarded by s.mu
	doc       []byte
	discovery []byte // nil: the document the realm would publish
}

// DefaultRealm is the realm Start creates, served by URL and Issuer.
const DefaultRealm = "edge"

// Start listens on a free loopback port and publishes keys.
func Start(keys ...*Key) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start idp: %w", err)
	}
	s := &Server{addr: ln.Addr().String(), path: "/realms/" + DefaultRealm + "/protocol/openid-connect/certs", status: http.StatusOK,
		paths: map[string]int{}, realms: map[string]*Realm{}}
	if err := s.Publish(keys...); err != nil {
		ln.Close()
		return nil, err
	}
	s.serve(ln)
	return s, nil
}

// URL is the JWKS URL of the default realm.
func (s *Server) URL() string { return "http://" + s.addr + s.path }

// Issuer is the issuer a Keycloak realm at this address would put in iss.
func (s *Server) Issuer() string { return "http://" + s.addr + "/realms/" + DefaultRealm }

// DiscoveryURL is the default realm's OpenID configuration URL.
func (s *Server) DiscoveryURL() string { return s.Issuer() + "/.well-known/openid-configuration" }

// Publish replaces the default realm's keys (a rotation step).
func (s *Server) Publish(keys ...*Key) error {
	doc, err := JWKS(keys...)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
	return nil
}

// AddRealm adds a realm named name (letters, digits, '-' and '_') that
// publishes keys. Adding an existing realm replaces its keys.
func (s *Server) AddRealm(name string, keys ...*Key) (*Realm, error) {
	if name == "" || name == DefaultRealm || strings.ContainsAny(name, "/?#%") {
		return nil, fmt.Errorf("add realm: invalid name %q", name)
	}
	s.mu.Lock()
	r := s.realms[name]
	if r == nil {
		r = &Realm{s: s, name: name}
		s.realms[name] = r
	}
	s.mu.Unlock()
	if err := r.Publish(keys...); err != nil {
		return nil, err
	}
	return r, nil
}

// Issuer is the realm's iss.
func (r *Realm) Issuer() string { return "http://" + r.s.addr + "/realms/" + r.name }

// URL is the realm's JWKS URL.
func (r *Realm) URL() string { return r.Issuer() + "/protocol/openid-connect/certs" }

// DiscoveryURL is the realm's OpenID configuration URL.
func (r *Realm) DiscoveryURL() string { return r.Issuer() + "/.well-known/openid-configuration" }

// Publish replaces the realm's keys.
func (r *Realm) Publish(keys ...*Key) error {
	doc, err := JWKS(keys...)
	if err != nil {
		return err
	}
	r.s.mu.Lock()
	r.doc = doc
	r.s.mu.Unlock()
	return nil
}

// SetDiscovery makes the realm serve doc as its OpenID configuration (a
// wrong issuer, another jwks_uri, garbage); nil restores the real one.
func (r *Realm) SetDiscovery(doc []byte) {
	r.s.mu.Lock()
	r.discovery = doc
	r.s.mu.Unlock()
}

// Discovery is the OpenID configuration a realm at issuer publishes, with
// the fields Keycloak serves that a resource server reads.
func Discovery(issuer string) []byte {
	b, _ := json.Marshal(map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              issuer + "/protocol/openid-connect/certs",
		"authorization_endpoint":                issuer + "/protocol/openid-connect/auth",
		"token_endpoint":                        issuer + "/protocol/openid-connect/token",
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256", "EdDSA"},
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
	})
	return b
}

// HitsOf counts the requests served at path (without the query).
func (s *Server) HitsOf(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paths[path]
}

// Respond makes every answer use status and, if body is not nil, body
// instead of the JWKS, after delay. Respond(200, nil, 0) restores normal
// answers.
func (s *Server) Respond(status int, body []byte, delay time.Duration) {
	s.mu.Lock()
	s.status, s.body, s.delay = status, body, delay
	s.mu.Unlock()
}

// Hits counts the requests served.
func (s *Server) Hits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits
}

func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 5 * time.Second}
	s.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// document returns what path serves: a realm's JWKS or discovery
// document; any other path gets the default realm's JWKS. Called with mu
// held.
func (s *Server) document(path string) []byte {
	realm, rest, ok := strings.Cut(strings.TrimPrefix(path, "/realms/"), "/")
	if !ok || !strings.HasPrefix(path, "/realms/") {
		return s.doc
	}
	r := s.realms[realm]
	issuer := "http://" + s.addr + "/realms/" + realm
	switch {
	case rest == ".well-known/openid-configuration" && r != nil && r.discovery != nil:
		return r.discovery
	case rest == ".well-known/openid-configuration" && (r != nil || realm == DefaultRealm):
		return Discovery(issuer)
	case r != nil:
		return r.doc
	}
	return s.doc
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.hits++
	s.paths[r.URL.Path]++
	status, body, delay := s.status, s.document(r.URL.Path), s.delay
	if s.body != nil {
		body = s.body
	}
	s.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Down stops listening and closes every connection: fetches get
// "connection refused".
func (s *Server) Down() error {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("idp down: %w", err)
	}
	return nil
}

// Up listens again on the same port, retrying briefly while the kernel
// releases it.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	var last error
	for try := 0; try < 50; try++ {
		ln, err := net.Listen("tcp", s.addr)
		if err == nil {
			s.serve(ln)
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("idp up: %w", last)
}

// Close stops the server for good.
func (s *Server) Close() error { return s.Down() }
