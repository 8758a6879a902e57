package jwtcache

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/golang-jwt/jwt/v5"
)

// Conf is the per-route conf: the JSON string in APISIX's plugin conf.
type Conf struct {
	// Provider names a provider of the runner config's jwks.providers.
	// Exactly one of provider and jwks_url is required.
	Provider string `json:"provider"`
	// JWKSURL defines a provider inline: fetched on first use, refreshed
	// and bounded like a configured one (every default, no snapshot).
	JWKSURL string `json:"jwks_url"`
	// Issuer, if set, must equal the token's iss. Absent: not checked; ""
	// is an error (a check that is silently off).
	Issuer *string `json:"issuer"`
	// Audience, if set (a string or a list), must share a value with the
	// token's aud. Absent: not checked; [] and "" are errors.
	Audience StringList `json:"audience"`
	// Algorithms are the accepted alg values. If empty, every asymmetric
	// algorithm: RS256/384/512, PS256/384/512, ES256/384/512, EdDSA. HS*
	// and none are never accepted: the keys come from a public JWKS. []
	// is an error.
	Algorithms []string `json:"algorithms"`
	// Leeway is the clock skew allowed on exp, nbf and iat. If absent, 30s.
	// At most 5m.
	Leeway *core.Duration `json:"leeway"`
	// TokenHeader, TokenCookie and TokenQuery name where the token is read
	// (at most one). If none is set: the Authorization header, scheme
	// Bearer. A header other than Authorization carries the bare token (a
	// "Bearer " prefix is tolerated).
	TokenHeader string `json:"token_header"`
	TokenCookie string `json:"token_cookie"`
	TokenQuery  string `json:"token_query"`
	// ClaimsToHeaders maps a top-level claim to an upstream request header,
	// such as {"sub": "X-User-ID"}. A client-sent header of that name is
	// always removed first. Strings are passed as is, numbers and booleans
	// as their JSON text, lists and objects as compact JSON.
	ClaimsToHeaders map[string]string `json:"claims_to_headers"`
	// RequiredClaims are top-level claims that must be present (and not
	// null); a verified token without one gets 403.
	RequiredClaims []string `json:"required_claims"`
}

// StringList is a JSON string or list of strings.
type StringList []string

// UnmarshalJSON accepts "a" or ["a", "b"].
func (s *StringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = StringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return &core.FieldError{Rule: "must be a string or a list of strings"}
	}
	*s = many
	return nil
}

// asymmetric are the algorithms a JWKS of public keys can verify.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

const (
	defaultLeeway  = 30 * time.Second
	maxLeeway      = 5 * time.Minute
	maxClaimHeader = 32
)

// sourceKind is where a route reads its token.
type sourceKind uint8

const (
	fromBearer sourceKind = iota // Authorization: Bearer <token>
	fromHeader                   // a named header holding the token
	fromCookie
	fromQuery
)

// tokenSource locates the token in a request.
type tokenSource struct {
	kind sourceKind
	name string // canonical header name, cookie name or query argument
}

// claimHeader is one claims_to_headers entry.
type claimHeader struct {
	claim  string
	header string // canonical
}

// routeConf is a validated conf, ready for the request path.
type routeConf struct {
	providerName string // "" for jwks_url
	jwksURL      string
	algs         map[string]bool
	algList      []string
	leeway       time.Duration
	issuer       string
	audience     []string
	source       tokenSource
	headers      []claimHeader
	required     []string

	// Set by the module when it binds the conf.
	prov      *provider
	parser    *jwt.Parser
	validator *jwt.Validator
}

// reservedHeaders may not be targets of claims_to_headers: they carry the
// request itself or the token.
var reservedHeaders = map[string]bool{
	"Host": true, "Authorization": true, "Cookie": true, "Content-Length": true, "Content-Type": true,
	"Transfer-Encoding": true, "Connection": true, "Te": true, "Upgrade": true, "Keep-Alive": true,
	"Proxy-Authorization": true, "Trailer": true, "Expect": true,
}

// parseConf decodes and validates one conf against the runner config. It
// does no I/O: `go-runner validate` uses it as is.
func parseConf(cfg *Config, data []byte) (*routeConf, error) {
	var c Conf
	if err := core.DecodeStrict(data, &c); err != nil {
		return nil, err
	}
	var errs []error
	rc := &routeConf{leeway: defaultLeeway}
	if c.Issuer != nil {
		if *c.Issuer == "" {
			errs = append(errs, core.Fieldf("issuer", "must not be empty: leave it out to not check iss"))
		}
		rc.issuer = *c.Issuer
	}
	if c.Audience != nil && len(c.Audience) == 0 {
		errs = append(errs, core.Fieldf("audience", "must not be empty: leave it out to not check aud"))
	}

	switch {
	case c.Provider != "" && c.JWKSURL != "":
		errs = append(errs, core.Fieldf("provider", "set either provider or jwks_url, not both"))
	case c.Provider != "":
		if cfg.Provider(c.Provider) == nil {
			errs = append(errs, core.Fieldf("provider", "%q is not in the runner config's jwks.providers (%s)", c.Provider, providerNames(cfg)))
		}
		rc.providerName = c.Provider
	case c.JWKSURL != "":
		if err := CheckJWKSURL(c.JWKSURL); err != nil {
			errs = append(errs, core.Fieldf("jwks_url", "%s", err.Error()))
		} else if cfg.MaxInlineProviders < 0 {
			errs = append(errs, core.Fieldf("jwks_url", "is disabled by the runner config (jwks.max_inline_providers: -1): name a provider"))
		}
		rc.jwksURL = c.JWKSURL
	default:
		errs = append(errs, core.Fieldf("provider", "is required (or jwks_url)"))
	}

	for i, a := range c.Audience {
		if a == "" {
			errs = append(errs, core.Fieldf(fmt.Sprintf("audience[%d]", i), "must not be empty"))
		}
	}
	rc.audience = c.Audience

	switch {
	case c.Algorithms == nil:
		rc.algList = asymmetric
	case len(c.Algorithms) == 0:
		errs = append(errs, core.Fieldf("algorithms", "must not be empty: leave it out to accept every asymmetric algorithm"))
	default:
		seen := map[string]bool{}
		for i, a := range c.Algorithms {
			at := fmt.Sprintf("algorithms[%d]", i)
			switch {
			case a == "none" || strings.EqualFold(a, "none"):
				errs = append(errs, core.Fieldf(at, `"none" is never accepted`))
			case strings.HasPrefix(strings.ToUpper(a), "HS"):
				errs = append(errs, core.Fieldf(at, "%q is symmetric: a JWKS holds public keys, so HMAC would let anyone sign (algorithm confusion)", a))
			case !slices.Contains(asymmetric, a):
				errs = append(errs, core.Fieldf(at, "must be one of %s, got %q", strings.Join(asymmetric, ", "), a))
			case seen[a]:
				errs = append(errs, core.Fieldf(at, "duplicate %q", a))
			default:
				seen[a] = true
				rc.algList = append(rc.algList, a)
			}
		}
	}
	rc.algs = make(map[string]bool, len(rc.algList))
	for _, a := range rc.algList {
		rc.algs[a] = true
	}

	if c.Leeway != nil {
		if l := c.Leeway.D(); l < 0 || l > maxLeeway {
			errs = append(errs, core.Fieldf("leeway", "must be between 0s and 5m, got %s", c.Leeway))
		} else {
			rc.leeway = l
		}
	}

	set := 0
	for _, s := range []string{c.TokenHeader, c.TokenCookie, c.TokenQuery} {
		if s != "" {
			set++
		}
	}
	switch {
	case set > 1:
		errs = append(errs, core.Fieldf("token_header", "set at most one of token_header, token_cookie and token_query"))
	case c.TokenHeader != "":
		if !core.ValidHeaderName(c.TokenHeader) {
			errs = append(errs, core.Fieldf("token_header", "must be an HTTP header name, got %q", c.TokenHeader))
		}
		name := http.CanonicalHeaderKey(c.TokenHeader)
		if name == "Authorization" {
			rc.source = tokenSource{kind: fromBearer}
		} else {
			rc.source = tokenSource{kind: fromHeader, name: name}
		}
	case c.TokenCookie != "":
		if !core.ValidHeaderName(c.TokenCookie) {
			errs = append(errs, core.Fieldf("token_cookie", "must be a cookie name (token characters), got %q", c.TokenCookie))
		}
		rc.source = tokenSource{kind: fromCookie, name: c.TokenCookie}
	case c.TokenQuery != "":
		rc.source = tokenSource{kind: fromQuery, name: c.TokenQuery}
	default:
		rc.source = tokenSource{kind: fromBearer}
	}

	if len(c.ClaimsToHeaders) > maxClaimHeader {
		errs = append(errs, core.Fieldf("claims_to_headers", "at most %d entries, got %d", maxClaimHeader, len(c.ClaimsToHeaders)))
	}
	targets := map[string]string{}
	for _, claim := range slices.Sorted(maps.Keys(c.ClaimsToHeaders)) {
		h := c.ClaimsToHeaders[claim]
		at := "claims_to_headers." + claim
		canon := http.CanonicalHeaderKey(h)
		switch {
		case claim == "":
			errs = append(errs, core.Fieldf("claims_to_headers", "claim names must not be empty"))
		case !core.ValidHeaderName(h):
			errs = append(errs, core.Fieldf(at, "must be an HTTP header name, got %q", h))
		case reservedHeaders[canon]:
			errs = append(errs, core.Fieldf(at, "%q is reserved: it carries the request or the token", h))
		case canon == http.CanonicalHeaderKey(core.ConsumerHeader):
			errs = append(errs, core.Fieldf(at, "%q is set by the plugin itself from sub", h))
		case rc.source.kind == fromHeader && canon == rc.source.name:
			errs = append(errs, core.Fieldf(at, "%q is the token header", h))
		case targets[canon] != "":
			errs = append(errs, core.Fieldf(at, "header %q is also the target of claim %q", h, targets[canon]))
		default:
			targets[canon] = claim
			rc.headers = append(rc.headers, claimHeader{claim: claim, header: canon})
		}
	}

	seenReq := map[string]bool{}
	for i, rq := range c.RequiredClaims {
		at := fmt.Sprintf("required_claims[%d]", i)
		switch {
		case rq == "":
			errs = append(errs, core.Fieldf(at, "must not be empty"))
		case seenReq[rq]:
			errs = append(errs, core.Fieldf(at, "duplicate %q", rq))
		default:
			seenReq[rq] = true
			rc.required = append(rc.required, rq)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rc, nil
}

func providerNames(cfg *Config) string {
	if len(cfg.Providers) == 0 {
		return "none configured"
	}
	names := make([]string, len(cfg.Providers))
	for i, p := range cfg.Providers {
		names[i] = p.Name
	}
	return "known: " + strings.Join(names, ", ")
}
