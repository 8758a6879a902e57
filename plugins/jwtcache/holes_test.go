package jwtcache

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// closedPort returns a loopback address nothing listens on: a fetch there
// fails with "connection refused", a url.Error embedding the URL.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Hole 1: a secret in a JWKS URL (user name, password, query, fragment)
// must not reach /status, the status hook (the runner logs it) or the logs.
func TestHoleURLSecretsNeverShown(t *testing.T) {
	secretURL := "http://alice:s3cr3t-pw@" + closedPort(t) + "/realms/r/certs?access_token=TOKEN-SECRET&x=1"
	logCore, logs := observer.New(zap.DebugLevel)
	log := zap.New(logCore)
	var hooked []string
	st := core.NewStatus("test", func(_ string, _, _ core.State, err error) {
		if err != nil {
			hooked = append(hooked, err.Error())
		}
	})
	cfg := Config{Providers: []ProviderConfig{{Name: "kc", URL: secretURL}}}
	applyTestDefaults(&cfg)
	m, err := newModule(cfg, core.Deps{Log: log, Throttle: core.NewLogThrottle(log, time.Minute), Metrics: prometheus.NewRegistry(), Status: st}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	p := m.providers["kc"]
	if p.refresh(context.Background()) {
		t.Fatal("fetch from a closed port succeeded")
	}
	m.deps.Throttle.Flush()

	var shown []string
	b, _ := json.Marshal(st.Snapshot())
	shown = append(shown, string(b), p.lastErr)
	shown = append(shown, hooked...)
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		shown = append(shown, e.Message+" "+string(b))
	}
	if len(logs.All()) == 0 || len(hooked) == 0 || !strings.Contains(shown[0], "last_error") {
		t.Fatalf("got %d log lines, %d hook calls, status %s: want the failure reported", len(logs.All()), len(hooked), shown[0])
	}
	for _, s := range shown {
		for _, secret := range []string{"alice", "s3cr3t-pw", "TOKEN-SECRET", "access_token", "x=1"} {
			if strings.Contains(s, secret) {
				t.Errorf("got %q shown, want no %q in it", s, secret)
			}
		}
	}
	if !strings.Contains(shown[0], "/realms/r/certs") {
		t.Errorf("got status %s, want the redacted URL (host and path) still shown", shown[0])
	}
}

func TestRedactErr(t *testing.T) {
	ue := &url.Error{Op: "Get", URL: "https://u:p@idp.test/certs?token=T1#frag", Err: errors.New("dial tcp: refused")}
	redirected := &url.Error{Op: "Get", URL: "https://idp.test/other?code=T2", Err: errors.New("EOF")}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"url.Error", ue, `Get "https://idp.test/certs": dial tcp: refused`},
		{"wrapped url.Error", fmt.Errorf("fetch jwks: %w", ue), `fetch jwks: Get "https://idp.test/certs": dial tcp: refused`},
		{"redirect target, not the configured URL", fmt.Errorf("fetch jwks: %w", redirected), `fetch jwks: Get "https://idp.test/other": EOF`},
		{"bare URL in text", errors.New("see http://x.test/a?b=SECRET now"), "see http://x.test/a now"},
		{"nothing to redact", errTooLarge, "body too large"},
	}
	for _, tt := range tests {
		got := redactErr(tt.err)
		if got.Error() != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got.Error(), tt.want)
		}
		if !errors.Is(got, tt.err) {
			t.Errorf("%s: got a chain without the original error", tt.name)
		}
	}
	if got := redactURL("https://u:p@h.test:8443/a/b?q=1#f"); got != "https://h.test:8443/a/b" {
		t.Errorf("redactURL: got %q, want https://h.test:8443/a/b", got)
	}
	if err := CheckJWKSURL("ftp://u:p@h/x?access_token=S"); strings.Contains(err.Error(), "access_token") {
		t.Errorf("CheckJWKSURL: got %q, want the query redacted", err)
	}
	if err := CheckJWKSURL("https://u:p@/x?access_token=S"); err == nil || strings.Contains(err.Error(), "access_token") || strings.Contains(err.Error(), "u:p") {
		t.Errorf("CheckJWKSURL without host: got %v, want an error without secrets", err)
	}
}

// Hole 2: an empty check is never silently off.
func TestHoleEmptyChecksRejected(t *testing.T) {
	cfg := testJWKSConfig()
	tests := []struct {
		conf string
		want string
	}{
		{`{"provider":"kc","audience":[]}`, "audience: must not be empty"},
		{`{"provider":"kc","issuer":""}`, "issuer: must not be empty"},
		{`{"provider":"kc","algorithms":[]}`, "algorithms: must not be empty"},
		{`{"provider":"kc","audience":""}`, "audience[0]: must not be empty"},
	}
	for _, tt := range tests {
		_, err := parseConf(&cfg, []byte(tt.conf))
		got := core.Problems(err)
		if len(got) != 1 || !strings.HasPrefix(got[0], tt.want) {
			t.Errorf("parseConf(%s): got %q, want %q", tt.conf, got, tt.want)
		}
	}
}

// signWithHeader signs claims with k under extra header parameters.
func signWithHeader(t testing.TB, k testKey, header map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, claims)
	tok.Header["kid"] = k.kid
	for n, v := range header {
		tok.Header[n] = v
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Hole 3: crit names extensions the verifier must understand (RFC 7515
// section 4.1.11); it understands none, so every crit token is rejected,
// signed by the right key or not.
func TestHoleCritRejected(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	rc := bind(t, m, `{"provider":"kc"}`)
	now := clk.Now()
	claims := jwt.MapClaims{"sub": "u", "iss": "https://idp", "aud": "api", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	k := rsKey(t, "rs")
	tests := []struct {
		name   string
		header map[string]any
		want   reason
	}{
		{"no crit", nil, reasonOK},
		{"b64 true without crit", map[string]any{"b64": true}, reasonOK},
		{"unknown extension", map[string]any{"crit": []string{"x-unknown"}, "x-unknown": 1}, reasonUnsupportedCrit},
		{"unknown extension absent from the header", map[string]any{"crit": []string{"x-unknown"}}, reasonMalformed},
		{"registered name exp", map[string]any{"crit": []string{"exp"}, "exp": 1}, reasonUnsupportedCrit},
		{"registered JWS name alg", map[string]any{"crit": []string{"alg"}}, reasonMalformed},
		{"b64 false with crit b64", map[string]any{"b64": false, "crit": []string{"b64"}}, reasonUnsupportedCrit},
		{"b64 false without crit", map[string]any{"b64": false}, reasonUnsupportedCrit},
		{"b64 not a boolean", map[string]any{"b64": "false"}, reasonMalformed},
		{"empty crit", map[string]any{"crit": []string{}}, reasonMalformed},
		{"crit not a list", map[string]any{"crit": "x-unknown", "x-unknown": 1}, reasonMalformed},
		{"crit with a non-string", map[string]any{"crit": []any{"x-a", 3}, "x-a": 1}, reasonMalformed},
		{"crit with duplicates", map[string]any{"crit": []string{"x-a", "x-a"}, "x-a": 1}, reasonMalformed},
		{"crit with an empty name", map[string]any{"crit": []string{""}, "": 1}, reasonMalformed},
		{"crit null", map[string]any{"crit": nil}, reasonMalformed},
	}
	for _, tt := range tests {
		tok := signWithHeader(t, k, tt.header, claims)
		if v := m.verify(rc, tok); v.reason != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, v.reason, tt.want)
		}
	}
	// A crit token is never cached: asking again still rejects it.
	tok := signWithHeader(t, k, map[string]any{"crit": []string{"x-unknown"}, "x-unknown": 1}, claims)
	for i := 0; i < 2; i++ {
		if v := m.verify(rc, tok); v.status != 401 {
			t.Fatalf("request %d: got %d, want 401", i, v.status)
		}
	}
}

// FuzzJWSHeader: whatever the header, a token is accepted only when the
// header holds no crit, no b64 other than true, and an allowed alg.
func FuzzJWSHeader(f *testing.F) {
	for _, s := range []string{
		`{"alg":"RS256","kid":"rs","typ":"JWT"}`,
		`{"alg":"RS256","kid":"rs","crit":["x"],"x":1}`,
		`{"alg":"RS256","kid":"rs","crit":[]}`,
		`{"alg":"RS256","kid":"rs","b64":false,"crit":["b64"]}`,
		`{"alg":"RS256","kid":"rs","crit":["exp"],"exp":1}`,
		`{"alg":"RS256","kid":"rs","crit":[1,"a","a"]}`,
		`{"alg":"none","kid":"rs"}`,
	} {
		f.Add([]byte(s))
	}
	clk := newClock()
	m := matrixModule(f, clk)
	rc := bind(f, m, `{"provider":"kc"}`)
	genKeys(f)
	now := clk.Now()
	payload := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"u","exp":%d}`, now.Add(time.Hour).Unix())))
	f.Fuzz(func(t *testing.T, header []byte) {
		signing := base64.RawURLEncoding.EncodeToString(header) + "." + payload
		sig, err := jwt.SigningMethodRS256.Sign(signing, rsaA)
		if err != nil {
			t.Fatal(err)
		}
		tok := signing + "." + base64.RawURLEncoding.EncodeToString(sig)
		if checkCrit(nil) != nil {
			t.Fatal("checkCrit(nil) rejects")
		}
		var h map[string]any
		herr := json.Unmarshal(header, &h)
		_ = checkCrit(h) // never panics, whatever the JSON
		v := m.verify(rc, tok)
		if v.reason != reasonOK {
			return
		}
		if herr != nil {
			t.Fatalf("accepted a header that is not JSON: %q", header)
		}
		if _, has := h["crit"]; has {
			t.Fatalf("accepted a crit header: %s", header)
		}
		if b, has := h["b64"]; has && b != true {
			t.Fatalf("accepted b64 %v: %s", b, header)
		}
		if h["alg"] != "RS256" {
			t.Fatalf("accepted alg %v signed with RS256", h["alg"])
		}
	})
}
