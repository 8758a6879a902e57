package jwtcache

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// BenchmarkRequestFilterCacheHit is the whole plugin on a repeated token:
// token extraction, cache hit, claim checks, header hygiene and rewrites.
func BenchmarkRequestFilterCacheHit(b *testing.B) {
	clk := newClock()
	m := matrixModule(b, clk)
	rc := bind(b, m, `{"provider":"kc","issuer":"https://idp","audience":"api","claims_to_headers":{"sub":"X-User-ID"}}`)
	tok := sign(b, rsKey(b, "rs"), clk.Now(), nil)
	benchFilter(b, m, rc, "GET", http.Header{"Authorization": {"Bearer " + tok}}, nil)
}

func benchFilter(b *testing.B, m *JWTCache, rc *routeConf, method string, h http.Header, args url.Values) {
	r := newTestRequest(method, http.Header{}, nil)
	w := newTestWriter()
	reset := func() {
		r.reset(h)
		if args != nil {
			if r.args == nil {
				r.args = url.Values{}
			}
			clear(r.args)
			for k, v := range args {
				r.args[k] = v
			}
		}
	}
	reset()
	m.RequestFilter(rc, w, r)
	if w.status != 0 {
		b.Fatalf("got %d %s", w.status, w.body)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		reset()
		m.RequestFilter(rc, w, r)
	}
	if w.status != 0 {
		b.Fatal(w.status)
	}
}

// BenchmarkCacheHitFeatures runs the cache-hit path of the whole filter
// with each v2 feature on, against the same route without it, in one run:
// what each feature adds to a request.
func BenchmarkCacheHitFeatures(b *testing.B) {
	clk := newClock()
	cfg := Config{Providers: []ProviderConfig{
		{Name: "kc", URL: "http://127.0.0.1:1/certs", Issuer: "https://idp"},
		{Name: "kc2", URL: "http://127.0.0.1:1/certs2", Issuer: "https://idp2"},
	}}
	m, _, _ := testModule(b, cfg, clk.Now)
	install(b, m, "kc", jwksDoc(b, true, rsKey(b, "rs")))
	install(b, m, "kc2", jwksDoc(b, true, esKey(b, "es")))
	now := clk.Now()
	tok := sign(b, rsKey(b, "rs"), now, map[string]any{"scope": "openid read:orders", "tenant_id": "acme", "azp": "svc",
		"realm_access": map[string]any{"roles": []string{"admin"}}, "resource_access": map[string]any{"shop": map[string]any{"tenant": "acme"}}})
	bearer := http.Header{"Authorization": {"Bearer " + tok}}
	const base = `"provider":"kc","audience":"api","claims_to_headers":{"sub":"X-User-ID"}`
	cases := []struct {
		name   string
		conf   string
		method string
		hdr    http.Header
		args   url.Values
	}{
		{"baseline", `{` + base + `}`, "GET", bearer, nil},
		{"hide_credentials", `{` + base + `,"hide_credentials":true}`, "GET", bearer, nil},
		{"token_sources_third", `{` + base + `,"token_sources":["header:X-Token","query:jwt","cookie:at"]}`, "GET",
			http.Header{"Cookie": {"theme=dark; at=" + tok}}, url.Values{"page": {"1"}}},
		{"nested_claim", `{"provider":"kc","audience":"api","claims_to_headers":{"sub":"X-User-ID","resource_access.shop.tenant":"X-Tenant"}}`, "GET", bearer, nil},
		{"nested_list_claim", `{"provider":"kc","audience":"api","claims_to_headers":{"sub":"X-User-ID","realm_access.roles":"X-Roles"}}`, "GET", bearer, nil},
		{"forward_payload_header", `{` + base + `,"forward_payload_header":"X-JWT-Payload"}`, "GET", bearer, nil},
		{"required_scopes", `{` + base + `,"required_scopes":["read:orders","openid"]}`, "GET", bearer, nil},
		{"required_claim_values", `{` + base + `,"required_claim_values":{"tenant_id":["globex","acme"]}}`, "GET", bearer, nil},
		{"max_lifetime", `{` + base + `,"max_lifetime":"2h"}`, "GET", bearer, nil},
		{"consumer_claim", `{` + base + `,"consumer_claim":"azp"}`, "GET", bearer, nil},
		{"realm", `{` + base + `,"realm":"shop"}`, "GET", bearer, nil},
		{"anonymous_with_token", `{` + base + `,"anonymous":true}`, "GET", bearer, nil},
		{"bypass_cors_preflight_on_get", `{` + base + `,"bypass_cors_preflight":true}`, "GET", bearer, nil},
		{"providers_2", `{"providers":["kc2","kc"],"audience":"api","claims_to_headers":{"sub":"X-User-ID"}}`, "GET", bearer, nil},
		{"anonymous_no_token", `{` + base + `,"anonymous":true}`, "GET", http.Header{}, nil},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			benchFilter(b, m, bind(b, m, c.conf), c.method, c.hdr, c.args)
		})
	}
}

// BenchmarkColdVerify is the cache-miss path (a distinct token each time)
// for RS256-2048 and ES256 (P-256), next to the bare signature check of the
// same algorithm in the same run: the physical limit.
func BenchmarkColdVerify(b *testing.B) {
	clk := newClock()
	for _, k := range []testKey{rsKey(b, "rs"), esKey(b, "es")} {
		cfg := Config{TokenCacheSize: 1, Providers: []ProviderConfig{{Name: "kc", URL: "http://127.0.0.1:1/certs"}}}
		m, _, _ := testModule(b, cfg, clk.Now)
		install(b, m, "kc", jwksDoc(b, true, k))
		rc := bind(b, m, `{"provider":"kc","issuer":"https://idp","audience":"api"}`)
		toks := make([]string, 256)
		for i := range toks {
			toks[i] = sign(b, k, clk.Now(), map[string]any{"jti": i})
		}
		b.Run(k.alg+"/miss", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if v := m.verify(rc, toks[i%len(toks)]); v.status != 0 {
					b.Fatal(v.reason)
				}
				i++
			}
		})
		tok := toks[0]
		dot := strings.LastIndexByte(tok, '.')
		sig, err := jwt.NewParser().DecodeSegment(tok[dot+1:])
		if err != nil {
			b.Fatal(err)
		}
		digest := sha256.Sum256([]byte(tok[:dot]))
		b.Run(k.alg+"/bare", func(b *testing.B) {
			b.ReportAllocs()
			switch pub := k.priv.Public().(type) {
			case *rsa.PublicKey:
				for b.Loop() {
					if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
						b.Fatal(err)
					}
				}
			case *ecdsa.PublicKey:
				r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
				for b.Loop() {
					if !ecdsa.Verify(pub, digest[:], r, s) {
						b.Fatal("es256 signature does not verify")
					}
				}
			}
		})
	}
}
