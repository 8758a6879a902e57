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
// Every field is optional except the provider (one of provider, providers
// and jwks_url).
type Conf struct {
	// Provider names a provider of the runner config's jwks.providers.
	// Exactly one of provider, providers and jwks_url is required.
	Provider string `json:"provider"`
	// Providers names several providers of jwks.providers (at most 16),
	// each with an issuer in the runner config: the token's iss selects
	// the one that verifies it, and an iss that matches none is rejected
	// (401). The multi-tenant layout: a Keycloak realm per tenant.
	Providers []string `json:"providers"`
	// JWKSURL defines a provider inline: fetched on first use, refreshed
	// and bounded like a configured one (every default, no snapshot).
	JWKSURL string `json:"jwks_url"`
	// Issuer, if set, must equal the token's iss. Absent: the provider's
	// issuer if it has one, else not checked; "" is an error (a check that
	// is silently off). Not with providers (each has its own).
	Issuer *string `json:"issuer"`
	// Audience, if set (a string or a list), must share a value with the
	// token's aud. Absent: not checked; [] and "" are errors.
	Audience StringList `json:"audience"`
	// Algorithms are the accepted alg values. If absent, every asymmetric
	// algorithm: RS256/384/512, PS256/384/512, ES256/384/512, EdDSA. HS*
	// and none are never accepted: the keys come from a public JWKS. []
	// is an error.
	Algorithms []string `json:"algorithms"`
	// Leeway is the clock skew allowed on exp, nbf and iat. If absent, 30s.
	// At most 5m.
	Leeway *core.Duration `json:"leeway"`
	// MaxLifetime, if set, bounds exp - iat: a token without iat, or valid
	// for longer, is rejected (401). If absent, no bound. 1s to 720h.
	MaxLifetime *core.Duration `json:"max_lifetime"`
	// TokenSources are where the token is looked for, in order; the first
	// one present wins (a present but invalid token is rejected, the next
	// sources are not tried). Each is "header:<name>", "cookie:<name>" or
	// "query:<name>"; "header:Authorization" means the Bearer scheme. At
	// most 8. If absent: token_header, token_cookie or token_query, else
	// ["header:Authorization"].
	TokenSources []string `json:"token_sources"`
	// TokenHeader, TokenCookie and TokenQuery are the older one-source
	// form (at most one, not with token_sources). A header other than
	// Authorization carries the bare token (a "Bearer " prefix is
	// tolerated).
	TokenHeader string `json:"token_header"`
	TokenCookie string `json:"token_cookie"`
	TokenQuery  string `json:"token_query"`
	// HideCredentials, if true, removes the token from where it was found
	// (the header, the one cookie, the query argument) before the request
	// goes upstream. If absent, false: the upstream gets the token, as
	// before this field existed, for upstreams that pass it on.
	HideCredentials bool `json:"hide_credentials"`
	// ClaimsToHeaders maps a claim to an upstream request header, such as
	// {"sub": "X-User-ID"}. A claim is a top-level name or a dotted path
	// into nested objects ("realm_access.roles"); a top-level claim whose
	// name holds the dots wins. A client-sent header of that name is
	// always removed first. Strings are passed as is, numbers and booleans
	// as their JSON text, lists and objects as compact JSON. At most 32.
	ClaimsToHeaders map[string]string `json:"claims_to_headers"`
	// ForwardPayloadHeader, if set, names an upstream header that gets the
	// verified payload, base64url as in the token. A client-sent header of
	// that name is always removed. If absent, none.
	ForwardPayloadHeader string `json:"forward_payload_header"`
	// RequiredClaims are claims (paths allowed) that must be present and
	// not null; a verified token without one gets 403.
	RequiredClaims []string `json:"required_claims"`
	// RequiredScopes must all be granted, in a space-separated "scope"
	// claim or an "scp" list (or string); a token without one gets 403
	// with error="insufficient_scope". At most 32.
	RequiredScopes []string `json:"required_scopes"`
	// RequiredClaimValues maps a claim (paths allowed) to the values it may
	// take, such as {"tenant_id": ["acme", "globex"]}: exact match on one
	// of them (a list claim matches if one element does; numbers and
	// booleans compare as their JSON text). Otherwise 403. At most 32
	// claims, 64 values each.
	RequiredClaimValues map[string]StringList `json:"required_claim_values"`
	// ConsumerClaim is the claim (paths allowed) that names the consumer:
	// X-Edge-Consumer and the verified consumer of later plugins. If
	// absent, "sub"; "azp" or "client_id" suit service accounts. A token
	// without it has no consumer.
	ConsumerClaim *string `json:"consumer_claim"`
	// Anonymous, if true, lets a request without any token proceed with no
	// consumer and no claim headers (client-sent ones still removed); a
	// token that is present but invalid is still rejected. If absent,
	// false: a token is required.
	Anonymous bool `json:"anonymous"`
	// BypassCORSPreflight, if true, lets an OPTIONS request with Origin and
	// Access-Control-Request-Method proceed without a token (browsers send
	// no credentials on a preflight), with no consumer and no claim
	// headers. If absent, false.
	BypassCORSPreflight bool `json:"bypass_cors_preflight"`
	// Realm, if set, is sent as realm="..." in WWW-Authenticate. 1 to 128
	// printable ASCII characters, no quote or backslash. If absent, none.
	Realm *string `json:"realm"`
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
	defaultLeeway    = 30 * time.Second
	maxLeeway        = 5 * time.Minute
	maxClaimHeader   = 32
	maxTokenSources  = 8
	maxRouteProvider = 16
	maxScopes        = 32
	maxClaimValues   = 64
	maxLifetimeBound = 720 * time.Hour
	maxPathDepth     = 8
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

// claimPath is a claim name, and its dotted segments when it has dots.
type claimPath struct {
	name  string
	parts []string // nil without dots
}

func newClaimPath(name string) claimPath {
	c := claimPath{name: name}
	if strings.Contains(name, ".") {
		c.parts = strings.Split(name, ".")
	}
	return c
}

// get finds the claim: the top-level name first, then the dotted path.
// It does not allocate.
func (c claimPath) get(all map[string]any) (any, bool) {
	if v, ok := all[c.name]; ok {
		return v, true
	}
	if c.parts == nil {
		return nil, false
	}
	var cur any = all
	for _, p := range c.parts {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// checkClaimPath returns the problem with a claim name, or "".
func checkClaimPath(name string) string {
	if name == "" {
		return "must not be empty"
	}
	if strings.Contains(name, ".") {
		parts := strings.Split(name, ".")
		if len(parts) > maxPathDepth {
			return fmt.Sprintf("a path of at most %d segments, got %d", maxPathDepth, len(parts))
		}
		if slices.Contains(parts, "") {
			return fmt.Sprintf("a dotted path must not have empty segments, got %q", name)
		}
	}
	return ""
}

// claimHeader is one claims_to_headers entry.
type claimHeader struct {
	claim  claimPath
	header string // canonical
}

// claimValues is one required_claim_values entry.
type claimValues struct {
	claim  claimPath
	values []string
}

// routeProv is one provider a route verifies with, and the issuer its
// tokens must carry ("" = not checked).
type routeProv struct {
	name   string
	issuer string
	prov   *provider
}

// routeConf is a validated conf, ready for the request path.
type routeConf struct {
	jwksURL     string
	algs        map[string]bool
	algList     []string
	leeway      time.Duration
	audience    []string
	maxLifetime time.Duration
	sources     []tokenSource
	hide        bool
	headers     []claimHeader
	strip       []string // canonical headers removed before any is set
	payloadHdr  string
	required    []claimPath
	scopes      []string
	values      []claimValues
	consumer    claimPath
	anonymous   bool
	preflight   bool
	// WWW-Authenticate values, with the realm.
	authMissing, authInvalid, authForbidden, authScope string

	// provs has one entry per provider; the module binds prov.
	provs  []routeProv
	parser *jwt.Parser
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
	add := func(field, format string, args ...any) {
		errs = append(errs, core.Fieldf(field, format, args...))
	}
	rc := &routeConf{leeway: defaultLeeway}

	routeIssuer := ""
	if c.Issuer != nil {
		if *c.Issuer == "" {
			add("issuer", "must not be empty: leave it out to not check iss")
		}
		routeIssuer = *c.Issuer
	}
	if c.Audience != nil && len(c.Audience) == 0 {
		add("audience", "must not be empty: leave it out to not check aud")
	}

	set := 0
	for _, b := range []bool{c.Provider != "", c.Providers != nil, c.JWKSURL != ""} {
		if b {
			set++
		}
	}
	switch {
	case set > 1:
		add("provider", "set exactly one of provider, providers and jwks_url")
	case c.Provider != "":
		pc := cfg.Provider(c.Provider)
		if pc == nil {
			add("provider", "%q is not in the runner config's jwks.providers (%s)", c.Provider, providerNames(cfg))
			break
		}
		iss := pc.Issuer
		if routeIssuer != "" {
			if iss != "" && iss != routeIssuer {
				add("issuer", "%q differs from provider %q's issuer %q", routeIssuer, c.Provider, iss)
			}
			iss = routeIssuer
		}
		rc.provs = []routeProv{{name: c.Provider, issuer: iss}}
	case c.Providers != nil:
		if len(c.Providers) == 0 || len(c.Providers) > maxRouteProvider {
			add("providers", "must list 1 to %d providers, got %d", maxRouteProvider, len(c.Providers))
		}
		if c.Issuer != nil {
			add("issuer", "must be left out with providers: each provider's issuer selects and checks")
		}
		issuers := map[string]string{}
		for i, name := range c.Providers {
			at := fmt.Sprintf("providers[%d]", i)
			pc := cfg.Provider(name)
			switch {
			case pc == nil:
				add(at, "%q is not in the runner config's jwks.providers (%s)", name, providerNames(cfg))
			case pc.Issuer == "":
				add(at, "provider %q has no issuer in the runner config: the token's iss selects among providers", name)
			case issuers[pc.Issuer] != "":
				add(at, "provider %q has the same issuer as %q", name, issuers[pc.Issuer])
			default:
				issuers[pc.Issuer] = name
				rc.provs = append(rc.provs, routeProv{name: name, issuer: pc.Issuer})
			}
		}
	case c.JWKSURL != "":
		if err := CheckJWKSURL(c.JWKSURL); err != nil {
			add("jwks_url", "%s", err.Error())
		} else if cfg.MaxInlineProviders < 0 {
			add("jwks_url", "is disabled by the runner config (jwks.max_inline_providers: -1): name a provider")
		}
		rc.jwksURL = c.JWKSURL
		rc.provs = []routeProv{{issuer: routeIssuer}}
	default:
		add("provider", "is required (or providers, or jwks_url)")
	}

	for i, a := range c.Audience {
		if a == "" {
			add(fmt.Sprintf("audience[%d]", i), "must not be empty")
		}
	}
	rc.audience = c.Audience

	switch {
	case c.Algorithms == nil:
		rc.algList = asymmetric
	case len(c.Algorithms) == 0:
		add("algorithms", "must not be empty: leave it out to accept every asymmetric algorithm")
	default:
		seen := map[string]bool{}
		for i, a := range c.Algorithms {
			at := fmt.Sprintf("algorithms[%d]", i)
			switch {
			case a == "none" || strings.EqualFold(a, "none"):
				add(at, `"none" is never accepted`)
			case strings.HasPrefix(strings.ToUpper(a), "HS"):
				add(at, "%q is symmetric: a JWKS holds public keys, so HMAC would let anyone sign (algorithm confusion)", a)
			case !slices.Contains(asymmetric, a):
				add(at, "must be one of %s, got %q", strings.Join(asymmetric, ", "), a)
			case seen[a]:
				add(at, "duplicate %q", a)
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
			add("leeway", "must be between 0s and 5m, got %s", c.Leeway)
		} else {
			rc.leeway = l
		}
	}
	if c.MaxLifetime != nil {
		if l := c.MaxLifetime.D(); l < time.Second || l > maxLifetimeBound {
			add("max_lifetime", "must be between 1s and 720h, got %s", c.MaxLifetime)
		} else {
			rc.maxLifetime = l
		}
	}

	errs = append(errs, parseSources(&c, rc)...)
	rc.hide = c.HideCredentials

	if len(c.ClaimsToHeaders) > maxClaimHeader {
		add("claims_to_headers", "at most %d entries, got %d", maxClaimHeader, len(c.ClaimsToHeaders))
	}
	targets := map[string]string{}
	// checkTarget returns the problem with an upstream header the plugin
	// sets, or "".
	checkTarget := func(h, owner string) string {
		canon := http.CanonicalHeaderKey(h)
		switch {
		case !core.ValidHeaderName(h):
			return fmt.Sprintf("must be an HTTP header name, got %q", h)
		case reservedHeaders[canon]:
			return fmt.Sprintf("%q is reserved: it carries the request or the token", h)
		case canon == http.CanonicalHeaderKey(core.ConsumerHeader):
			return fmt.Sprintf("%q is set by the plugin itself from consumer_claim", h)
		case slices.ContainsFunc(rc.sources, func(s tokenSource) bool { return s.kind == fromHeader && s.name == canon }):
			return fmt.Sprintf("%q is a token header", h)
		case targets[canon] != "":
			return fmt.Sprintf("header %q is also the target of %s", h, targets[canon])
		}
		targets[canon] = owner
		return ""
	}
	for _, claim := range slices.Sorted(maps.Keys(c.ClaimsToHeaders)) {
		h := c.ClaimsToHeaders[claim]
		at := "claims_to_headers." + claim
		if claim == "" {
			add("claims_to_headers", "claim names must not be empty")
			continue
		}
		if p := checkClaimPath(claim); p != "" {
			add(at, "claim %s", p)
			continue
		}
		if p := checkTarget(h, fmt.Sprintf("claim %q", claim)); p != "" {
			add(at, "%s", p)
			continue
		}
		rc.headers = append(rc.headers, claimHeader{claim: newClaimPath(claim), header: http.CanonicalHeaderKey(h)})
	}
	if c.ForwardPayloadHeader != "" {
		if p := checkTarget(c.ForwardPayloadHeader, "forward_payload_header"); p != "" {
			add("forward_payload_header", "%s", p)
		} else {
			rc.payloadHdr = http.CanonicalHeaderKey(c.ForwardPayloadHeader)
		}
	}
	for _, ch := range rc.headers {
		rc.strip = append(rc.strip, ch.header)
	}
	if rc.payloadHdr != "" {
		rc.strip = append(rc.strip, rc.payloadHdr)
	}
	rc.strip = append(rc.strip, http.CanonicalHeaderKey(core.ConsumerHeader))

	seenReq := map[string]bool{}
	for i, rq := range c.RequiredClaims {
		at := fmt.Sprintf("required_claims[%d]", i)
		switch p := checkClaimPath(rq); {
		case p != "":
			add(at, "%s", p)
		case seenReq[rq]:
			add(at, "duplicate %q", rq)
		default:
			seenReq[rq] = true
			rc.required = append(rc.required, newClaimPath(rq))
		}
	}

	if c.RequiredScopes != nil && len(c.RequiredScopes) == 0 {
		add("required_scopes", "must not be empty: leave it out to not check scopes")
	}
	if len(c.RequiredScopes) > maxScopes {
		add("required_scopes", "at most %d scopes, got %d", maxScopes, len(c.RequiredScopes))
	}
	for i, s := range c.RequiredScopes {
		at := fmt.Sprintf("required_scopes[%d]", i)
		switch {
		case !validScope(s):
			add(at, "must be a scope token (RFC 6749 3.3: printable ASCII, no space, quote or backslash), got %q", s)
		case slices.Contains(rc.scopes, s):
			add(at, "duplicate %q", s)
		default:
			rc.scopes = append(rc.scopes, s)
		}
	}

	if c.RequiredClaimValues != nil && len(c.RequiredClaimValues) == 0 {
		add("required_claim_values", "must not be empty: leave it out to not check claim values")
	}
	if len(c.RequiredClaimValues) > maxClaimHeader {
		add("required_claim_values", "at most %d claims, got %d", maxClaimHeader, len(c.RequiredClaimValues))
	}
	for _, claim := range slices.Sorted(maps.Keys(c.RequiredClaimValues)) {
		vals := c.RequiredClaimValues[claim]
		at := "required_claim_values." + claim
		switch p := checkClaimPath(claim); {
		case claim == "":
			add("required_claim_values", "claim names must not be empty")
		case p != "":
			add(at, "claim %s", p)
		case len(vals) == 0:
			add(at, "must list at least one value")
		case len(vals) > maxClaimValues:
			add(at, "at most %d values, got %d", maxClaimValues, len(vals))
		default:
			ok := true
			for i, v := range vals {
				if v == "" || slices.Contains(vals[:i], v) {
					add(fmt.Sprintf("%s[%d]", at, i), "must be a non-empty value, listed once, got %q", v)
					ok = false
				}
			}
			if ok {
				rc.values = append(rc.values, claimValues{claim: newClaimPath(claim), values: slices.Clone(vals)})
			}
		}
	}

	rc.consumer = newClaimPath("sub")
	if c.ConsumerClaim != nil {
		if p := checkClaimPath(*c.ConsumerClaim); p != "" {
			add("consumer_claim", "%s", p)
		} else {
			rc.consumer = newClaimPath(*c.ConsumerClaim)
		}
	}
	rc.anonymous = c.Anonymous
	rc.preflight = c.BypassCORSPreflight

	prefix := "Bearer"
	if c.Realm != nil {
		if !validRealm(*c.Realm) {
			add("realm", "must be 1 to 128 printable ASCII characters without '\"' or '\\', got %q", *c.Realm)
		} else {
			prefix = `Bearer realm="` + *c.Realm + `",`
		}
	}
	rc.authMissing = strings.TrimSuffix(prefix, ",")
	rc.authInvalid = prefix + ` error="invalid_token"`
	rc.authForbidden = prefix + ` error="insufficient_scope"`
	rc.authScope = rc.authForbidden
	if len(rc.scopes) > 0 {
		rc.authScope += `, scope="` + strings.Join(rc.scopes, " ") + `"`
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rc, nil
}

// parseSources reads token_sources or the older one-source fields.
func parseSources(c *Conf, rc *routeConf) []error {
	var errs []error
	legacy := 0
	for _, s := range []string{c.TokenHeader, c.TokenCookie, c.TokenQuery} {
		if s != "" {
			legacy++
		}
	}
	switch {
	case c.TokenSources != nil && legacy > 0:
		return []error{core.Fieldf("token_sources", "set either token_sources or token_header/token_cookie/token_query, not both")}
	case legacy > 1:
		return []error{core.Fieldf("token_header", "set at most one of token_header, token_cookie and token_query")}
	case c.TokenHeader != "":
		src, p := headerSource(c.TokenHeader)
		if p != "" {
			return []error{core.Fieldf("token_header", "%s", p)}
		}
		rc.sources = []tokenSource{src}
	case c.TokenCookie != "":
		if !core.ValidHeaderName(c.TokenCookie) {
			return []error{core.Fieldf("token_cookie", "must be a cookie name (token characters), got %q", c.TokenCookie)}
		}
		rc.sources = []tokenSource{{kind: fromCookie, name: c.TokenCookie}}
	case c.TokenQuery != "":
		rc.sources = []tokenSource{{kind: fromQuery, name: c.TokenQuery}}
	case c.TokenSources == nil:
		rc.sources = []tokenSource{{kind: fromBearer}}
	case len(c.TokenSources) == 0 || len(c.TokenSources) > maxTokenSources:
		return []error{core.Fieldf("token_sources", "must list 1 to %d sources, got %d", maxTokenSources, len(c.TokenSources))}
	default:
		for i, raw := range c.TokenSources {
			at := fmt.Sprintf("token_sources[%d]", i)
			kind, name, ok := strings.Cut(raw, ":")
			var src tokenSource
			p := ""
			switch {
			case !ok || name == "":
				p = fmt.Sprintf(`must be "header:<name>", "cookie:<name>" or "query:<name>", got %q`, raw)
			case kind == "header":
				src, p = headerSource(name)
			case kind == "cookie":
				src = tokenSource{kind: fromCookie, name: name}
				if !core.ValidHeaderName(name) {
					p = fmt.Sprintf("must be a cookie name (token characters), got %q", name)
				}
			case kind == "query":
				src = tokenSource{kind: fromQuery, name: name}
				if len(name) > 256 {
					p = "query argument name longer than 256 bytes"
				}
			default:
				p = fmt.Sprintf(`must start with "header:", "cookie:" or "query:", got %q`, raw)
			}
			switch {
			case p != "":
				errs = append(errs, core.Fieldf(at, "%s", p))
			case slices.Contains(rc.sources, src):
				errs = append(errs, core.Fieldf(at, "duplicate %q", raw))
			default:
				rc.sources = append(rc.sources, src)
			}
		}
	}
	return errs
}

// headerSource is the source of a token header: Authorization means the
// Bearer scheme.
func headerSource(name string) (tokenSource, string) {
	if !core.ValidHeaderName(name) {
		return tokenSource{}, fmt.Sprintf("must be an HTTP header name, got %q", name)
	}
	canon := http.CanonicalHeaderKey(name)
	if canon == "Authorization" {
		return tokenSource{kind: fromBearer}, ""
	}
	if canon == "Cookie" || canon == "Host" {
		return tokenSource{}, fmt.Sprintf("%q cannot hold a token: use cookie:<name>", name)
	}
	return tokenSource{kind: fromHeader, name: canon}, ""
}

// validScope: RFC 6749 section 3.3 scope-token, without '"' and '\' so
// that it fits WWW-Authenticate's quoted scope.
func validScope(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// validRealm: a quoted-string value without quoting trouble.
func validRealm(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
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
