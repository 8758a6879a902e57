package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/idp"
	"github.com/golang-jwt/jwt/v5"
)

// jwtPart shows the jwtcache plugin against a local JWKS endpoint (a
// stand-in for Keycloak's .../protocol/openid-connect/certs, testbed/idp)
// serving a key generated for this run.
var jwtPart = struct {
	key   *idp.Key
	other *idp.Key // another key under the same kid: a forged signature
}{}

func init() {
	register(part{name: "jwtcache", config: jwtConfig, run: jwtRun})
}

func jwtConfig(e *demoEnv) (string, error) {
	var err error
	if jwtPart.key, err = idp.NewRSA("demo-1", 2048); err != nil {
		return "", err
	}
	if jwtPart.other, err = idp.NewRSA("demo-1", 2048); err != nil {
		return "", err
	}
	srv, err := idp.Start(jwtPart.key)
	if err != nil {
		return "", err
	}
	e.cleanup(func() { _ = srv.Close() })
	return fmt.Sprintf("jwks:\n  providers:\n    - name: demo\n      url: %s\n      refresh_interval: 15m\n      max_stale: 6h\n      snapshot_file: %s\n",
		srv.URL(), filepath.Join(e.Dir, "jwks-demo.json")), nil
}

// jwtToken signs claims with key, or returns an unsigned alg-none token
// when key is nil.
func jwtToken(key *idp.Key, claims map[string]any) string {
	if key == nil {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(claims))
		tok.Header["kid"] = "demo-1"
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			return "sign-error"
		}
		return s
	}
	s, err := key.Sign(claims)
	if err != nil {
		return "sign-error"
	}
	return s
}

func jwtRun(ctx context.Context, e *demoEnv, w io.Writer) error {
	now := time.Now()
	claims := func(exp time.Time) map[string]any {
		return idp.Claims("alice", "http://idp.local/realms/demo", "shop", now, map[string]any{"tenant_id": "acme", "exp": exp.Unix()})
	}
	route := &testbed.Route{ID: "jwt-demo", PreReq: []testbed.PluginConf{{Name: "jwtcache",
		Value: `{"provider":"demo","issuer":"http://idp.local/realms/demo","audience":"shop","claims_to_headers":{"sub":"X-User-ID","tenant_id":"X-Tenant-ID"}}`}}}
	fmt.Fprintf(w, "route conf: %s\n", route.PreReq[0].Value)
	send := func(tok string, extra http.Header) (*testbed.Result, error) {
		h := http.Header{"Authorization": {"Bearer " + tok}}
		for k, v := range extra {
			h[k] = v
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return e.Gateway.Do(rctx, route, &testbed.Request{Method: "GET", Path: "/orders", Headers: h})
	}
	valid := jwtToken(jwtPart.key, claims(now.Add(time.Hour)))
	var res *testbed.Result
	var err error
	// The provider is fetched at start in the background; give it a moment.
	for i := 0; i < 40; i++ {
		if res, err = send(valid, http.Header{"X-User-Id": {"mallory"}, "X-Edge-Consumer": {"mallory"}}); err == nil && res.Status == 200 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if res.Status != 200 || !res.UpstreamCalled {
		return fmt.Errorf("valid token: got status %d, want 200", res.Status)
	}
	up := res.Upstream.Headers
	fmt.Fprintf(w, "valid RS256 token, client also sent X-User-ID: mallory -> %d; upstream got X-User-ID=%s X-Tenant-ID=%s X-Edge-Consumer=%s\n",
		res.Status, up.Get("X-User-Id"), up.Get("X-Tenant-Id"), up.Get("X-Edge-Consumer"))
	if up.Get("X-User-Id") != "alice" {
		return fmt.Errorf("spoofed X-User-ID reached the upstream: %q", up.Get("X-User-Id"))
	}
	rejected := []struct{ name, tok string }{
		{"expired", jwtToken(jwtPart.key, claims(now.Add(-time.Hour)))},
		{"bad signature (another key, same kid)", jwtToken(jwtPart.other, claims(now.Add(time.Hour)))},
		{"alg none", jwtToken(nil, claims(now.Add(time.Hour)))},
	}
	for _, r := range rejected {
		res, err := send(r.tok, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%-38s -> %d, WWW-Authenticate: %s, upstream called: %v\n", r.name, res.Status, res.Headers.Get("WWW-Authenticate"), res.UpstreamCalled)
		if res.Status != 401 || res.UpstreamCalled {
			return fmt.Errorf("%s: got %d, want 401", r.name, res.Status)
		}
	}
	if b, err := adminGet(e.AdminURL, "/metrics"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "apisix_edge_jwt_verifications_total{") && !strings.HasSuffix(line, " 0") {
				fmt.Fprintln(w, line)
			}
		}
	}
	return nil
}
