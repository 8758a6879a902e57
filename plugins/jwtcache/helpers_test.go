package jwtcache

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// testKey is a signing key the tests publish in a JWKS.
type testKey struct {
	kid    string
	alg    string
	priv   crypto.Signer
	method jwt.SigningMethod
}

var (
	keysOnce sync.Once
	rsaA     *rsa.PrivateKey
	rsaB     *rsa.PrivateKey
	ecA      *ecdsa.PrivateKey
	edA      ed25519.PrivateKey
)

func genKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaB, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecA, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if _, edA, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

func rsKey(t testing.TB, kid string) testKey {
	genKeys(t)
	return testKey{kid: kid, alg: "RS256", priv: rsaA, method: jwt.SigningMethodRS256}
}

func esKey(t testing.TB, kid string) testKey {
	genKeys(t)
	return testKey{kid: kid, alg: "ES256", priv: ecA, method: jwt.SigningMethodES256}
}

func edKey(t testing.TB, kid string) testKey {
	genKeys(t)
	return testKey{kid: kid, alg: "EdDSA", priv: edA, method: jwt.SigningMethodEdDSA}
}

// jwksDoc renders the public JWKS of keys (with alg set when withAlg).
func jwksDoc(t testing.TB, withAlg bool, keys ...testKey) []byte {
	t.Helper()
	var doc jwkset.JWKSMarshal
	for _, k := range keys {
		meta := jwkset.JWKMetadataOptions{KID: k.kid, USE: jwkset.UseSig}
		if withAlg {
			meta.ALG = jwkset.ALG(k.alg)
		}
		j, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{Metadata: meta})
		if err != nil {
			t.Fatalf("jwk: %v", err)
		}
		doc.Keys = append(doc.Keys, j.Marshal())
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign makes a token with k; claims override the defaults (sub, iss, aud,
// iat, exp one hour after now). A nil claim value deletes the claim.
func sign(t testing.TB, k testKey, now time.Time, claims map[string]any) string {
	t.Helper()
	c := jwt.MapClaims{"sub": "user-1", "iss": "https://idp", "aud": "api", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for n, v := range claims {
		if v == nil {
			delete(c, n)
			continue
		}
		c[n] = v
	}
	tok := jwt.NewWithClaims(k.method, c)
	if k.kid != "" {
		tok.Header["kid"] = k.kid
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_800_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testModule builds a module on a fresh registry and status.
func testModule(t testing.TB, cfg Config, now func() time.Time) (*JWTCache, *prometheus.Registry, *core.Status) {
	t.Helper()
	reg := prometheus.NewRegistry()
	st := core.NewStatus("test", nil)
	applyTestDefaults(&cfg)
	m, err := newModule(cfg, core.Deps{Log: zap.NewNop(), Throttle: core.NewLogThrottle(zap.NewNop(), time.Minute), Metrics: reg, Status: st}, now)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg, st
}

// applyTestDefaults fills the section's defaults the way the config loader
// does, with waits short enough for unit tests.
func applyTestDefaults(j *Config) {
	if j.FirstFetchWait == 0 {
		j.FirstFetchWait = core.Duration(time.Millisecond)
	}
	if j.UnknownKIDMinInterval == 0 {
		j.UnknownKIDMinInterval = core.Duration(10 * time.Second)
	}
	if j.UnknownKIDWait == 0 {
		j.UnknownKIDWait = core.Duration(time.Millisecond)
	}
	if j.TokenCacheSize == 0 {
		j.TokenCacheSize = 100
	}
	if j.MaxTokenSize == 0 {
		j.MaxTokenSize = 8192
	}
	if j.MaxInlineProviders == 0 {
		j.MaxInlineProviders = 2
	}
	for i := range j.Providers {
		p := &j.Providers[i]
		d := inlineProvider(p.URL)
		if p.RefreshInterval == 0 {
			p.RefreshInterval = d.RefreshInterval
		}
		if p.MaxStale == 0 {
			p.MaxStale = d.MaxStale
		}
		if p.FetchTimeout == 0 {
			p.FetchTimeout = d.FetchTimeout
		}
		if p.MaxBodySize == 0 {
			p.MaxBodySize = d.MaxBodySize
		}
	}
}

// install gives provider name the keys of doc, fetched at the clock's now,
// as a successful fetch would.
func install(t testing.TB, m *JWTCache, name string, doc []byte) {
	t.Helper()
	p := m.providers[name]
	ks, err := parseJWKS(doc, m.now())
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	p.finish(p.started+1, ks, nil)
	p.started++
}

// bind parses a conf on m or fails the test.
func bind(t testing.TB, m *JWTCache, conf string) *routeConf {
	t.Helper()
	c, err := m.ParseConf([]byte(conf))
	if err != nil {
		t.Fatalf("ParseConf(%s): %v", conf, err)
	}
	return c.(*routeConf)
}
