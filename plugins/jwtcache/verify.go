package jwtcache

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// cacheEntry is a token whose signature was verified. Claims are checked
// again on every hit, against the route's conf and the current time.
type cacheEntry struct {
	token  string // the very token: a hit needs the same bytes
	provID uint64
	kid    string
	keyFP  [32]byte // the key that verified it (for no-kid tokens: the set)
	alg    string
	exp    time.Time
	claims *verifiedClaims
	// promoted is when a hit last moved the entry to the front of the LRU
	// (Unix ns): see lookup.
	promoted atomic.Int64
}

// lookup finds the entry of a verified token. A hit takes the cache's read
// lock only, and moves the entry to the front of the LRU, under the write
// lock, at most once a second: every other hit spares the exclusive lock
// that all requests of all routes would queue on. A token in use is then
// evicted only after token_cache_size other tokens were verified within
// the second since its last move; it is verified again, nothing worse.
func (m *JWTCache) lookup(key cacheKey, now time.Time) (*cacheEntry, bool) {
	e, ok := m.cache.Peek(key)
	if !ok {
		return nil, false
	}
	if t := now.UnixNano(); t-e.promoted.Load() >= int64(time.Second) {
		e.promoted.Store(t)
		m.cache.Get(key)
	}
	return e, true
}

// cacheKey is the token's hash (hash/maphash, under a seed drawn at
// start) with its provider: the same token verified against another
// provider's keys is another entry. The hash only finds the entry: a hit
// needs the entry's token to be the very same bytes, so two tokens with
// the same hash are a miss, never a forged token's hit.
type cacheKey struct {
	prov uint64
	hash uint64
}

// verifiedClaims are a token's claims with the registered ones parsed once,
// so that the validator, which runs on every cache hit, does not parse
// numbers again. It implements jwt.Claims.
type verifiedClaims struct {
	all            jwt.MapClaims
	exp, nbf, iat  *jwt.NumericDate
	expErr, nbfErr error
	iatErr         error
	iss, sub       string
	issErr, subErr error
	aud            jwt.ClaimStrings
	audErr         error
	scopes         []string // from scope and scp, parsed once
	// rendered memoizes the header values of list and object claims
	// (JSON), so that a cache hit does not marshal them again.
	rendered atomic.Pointer[[]renderedClaim]
}

// renderedClaim is one memoized header value.
type renderedClaim struct {
	path  string
	value string
	ok    bool
}

// maxRendered bounds the memoized values of one token.
const maxRendered = 32

// headerValue is claimHeaderValue for the claim at path of these claims,
// memoized when the value is a list or an object (strings, numbers and
// booleans cost nothing to render).
func (c *verifiedClaims) headerValue(cp claimPath) (string, bool) {
	v, ok := cp.get(c.all)
	if !ok {
		return "", false
	}
	switch v.(type) {
	case []any, map[string]any:
	default:
		return claimHeaderValue(v)
	}
	cur := c.rendered.Load()
	if cur != nil {
		for i := range *cur {
			if r := &(*cur)[i]; r.path == cp.name {
				return r.value, r.ok
			}
		}
	}
	s, ok := claimHeaderValue(v)
	if cur == nil || len(*cur) < maxRendered {
		var next []renderedClaim
		if cur != nil {
			next = append(next, *cur...)
		}
		next = append(next, renderedClaim{path: cp.name, value: s, ok: ok})
		c.rendered.CompareAndSwap(cur, &next) // a lost race renders again next time
	}
	return s, ok
}

func newVerifiedClaims(m jwt.MapClaims) *verifiedClaims {
	c := &verifiedClaims{all: m}
	c.exp, c.expErr = m.GetExpirationTime()
	c.nbf, c.nbfErr = m.GetNotBefore()
	c.iat, c.iatErr = m.GetIssuedAt()
	c.iss, c.issErr = m.GetIssuer()
	c.sub, c.subErr = m.GetSubject()
	c.aud, c.audErr = m.GetAudience()
	if s, ok := m["scope"].(string); ok {
		c.scopes = strings.Fields(s)
	}
	switch scp := m["scp"].(type) {
	case string:
		c.scopes = append(c.scopes, strings.Fields(scp)...)
	case []any:
		for _, e := range scp {
			if s, ok := e.(string); ok {
				c.scopes = append(c.scopes, s)
			}
		}
	}
	return c
}

func (c *verifiedClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.exp, c.expErr }
func (c *verifiedClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.nbf, c.nbfErr }
func (c *verifiedClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.iat, c.iatErr }
func (c *verifiedClaims) GetIssuer() (string, error)                   { return c.iss, c.issErr }
func (c *verifiedClaims) GetSubject() (string, error)                  { return c.sub, c.subErr }
func (c *verifiedClaims) GetAudience() (jwt.ClaimStrings, error)       { return c.aud, c.audErr }

var (
	errKeysUnavailable = errors.New("no usable keys")
	errUnknownKID      = errors.New("unknown kid")
	errBadAlg          = errors.New("alg does not fit the key")
	errBadKID          = errors.New("kid is not a string")
	errBadCrit         = errors.New("malformed crit or b64 header")
	errUnsupportedCrit = errors.New("critical header extension not understood")
)

// jwsRegistered are the header names of RFC 7515 and RFC 7518 (JWA): crit
// must not list them (RFC 7515 section 4.1.11).
var jwsRegistered = map[string]bool{
	"alg": true, "jku": true, "jwk": true, "kid": true, "x5u": true, "x5c": true, "x5t": true, "x5t#S256": true,
	"typ": true, "cty": true, "crit": true, "enc": true, "zip": true, "epk": true, "apu": true, "apv": true,
	"iv": true, "tag": true, "p2s": true, "p2c": true,
}

// checkCrit applies RFC 7515 section 4.1.11 and RFC 7797 to a JWS header.
// crit must be a non-empty list of distinct names, none registered, each
// present in the header; the verifier understands no extension, so a
// well-formed crit is still rejected (errUnsupportedCrit). b64 (RFC 7797)
// other than true changes what was signed: rejected too.
func checkCrit(h map[string]any) error {
	if b, has := h["b64"]; has {
		v, ok := b.(bool)
		if !ok {
			return errBadCrit
		}
		if !v {
			return errUnsupportedCrit
		}
	}
	c, has := h["crit"]
	if !has {
		return nil
	}
	list, ok := c.([]any)
	if !ok || len(list) == 0 {
		return errBadCrit
	}
	for i, e := range list {
		name, ok := e.(string)
		if !ok || name == "" || jwsRegistered[name] || slices.Contains(list[:i], e) {
			return errBadCrit
		}
		if _, present := h[name]; !present {
			return errBadCrit
		}
	}
	return errUnsupportedCrit
}

// verdict is the outcome of one verification.
type verdict struct {
	reason reason
	status int // 0 when accepted
	claims jwt.MapClaims
	vc     *verifiedClaims // the same claims, with their memoized header values
}

var _ jwt.Claims = (*verifiedClaims)(nil)

func reject(r reason) verdict {
	switch r {
	case reasonKeysUnavailable:
		return verdict{reason: r, status: http.StatusServiceUnavailable}
	}
	return verdict{reason: r, status: http.StatusUnauthorized}
}

// verify checks token for the route: from the cache when this token's
// signature was verified before with a key still in the JWKS, else by a
// full parse. Claims are validated on both paths by the same checks.
// With several providers, a cached token is found under the provider that
// verified it; otherwise its (unverified) iss selects the provider, whose
// validator then requires that very iss.
func (m *JWTCache) verify(rc *routeConf, token string) verdict {
	t := tokenString(token)
	return m.verifyToken(rc, &t)
}

// verifyToken is verify of a token as found in a request: on a cache hit
// it is hashed, never copied.
func (m *JWTCache) verifyToken(rc *routeConf, tok *tokenText) verdict {
	now := m.now()
	hash := tok.hash()
	if len(rc.provs) == 1 {
		return m.verifyWith(rc, &rc.provs[0], tok, hash, now)
	}
	for i := range rc.provs {
		rp := &rc.provs[i]
		ks := rp.prov.current(now)
		if ks == nil {
			continue
		}
		if e, ok := m.lookup(cacheKey{prov: rp.prov.id, hash: hash}, now); ok && tok.is(e.token) && m.entryValid(e, ks, now) {
			m.hits.Inc()
			return m.checkClaims(rc, rp, e.alg, e.claims, now)
		}
	}
	token := tok.String()
	if !jwsShape(token) {
		return reject(reasonMalformed)
	}
	iss, ok := unverifiedIssuer(token)
	if !ok {
		return reject(reasonMalformed)
	}
	for i := range rc.provs {
		if rc.provs[i].issuer == iss {
			return m.verifyWith(rc, &rc.provs[i], tok, hash, now)
		}
	}
	return reject(reasonBadIssuer)
}

// verifyWith verifies token with one provider.
func (m *JWTCache) verifyWith(rc *routeConf, rp *routeProv, found *tokenText, hash uint64, now time.Time) verdict {
	p := rp.prov
	ks := p.current(now)
	key := cacheKey{prov: p.id, hash: hash}
	if ks != nil {
		// an entry of another token under the same hash is a miss (and is
		// replaced if this one verifies)
		if e, ok := m.lookup(key, now); ok && found.is(e.token) {
			if m.entryValid(e, ks, now) {
				m.hits.Inc()
				return m.checkClaims(rc, rp, e.alg, e.claims, now)
			}
			m.cache.Remove(key)
		}
	}
	// Not a token verified before: check its shape (three base64url
	// segments) before anything decodes it.
	token := found.String()
	if !jwsShape(token) {
		return reject(reasonMalformed)
	}
	if ks == nil && p.set.Load() == nil {
		p.waitFirst(m.cfg.FirstFetchWait.D())
		now = m.now()
		ks = p.current(now)
	}
	if ks == nil {
		return reject(reasonKeysUnavailable)
	}
	m.misses.Inc()

	var used struct {
		kid string
		fp  [32]byte
	}
	claims := jwt.MapClaims{}
	tok, err := rc.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		k, kid, fp, err := m.keyFor(rc, p, t)
		used.kid, used.fp = kid, fp
		return k, err
	})
	if err != nil {
		return reject(parseReason(rc, tok, err))
	}
	alg := tok.Method.Alg()
	vc := newVerifiedClaims(claims)
	if vc.expErr == nil && vc.exp != nil && vc.exp.After(now) {
		m.cache.Add(key, &cacheEntry{token: strings.Clone(token), provID: p.id, kid: used.kid, keyFP: used.fp, alg: alg, exp: vc.exp.Time, claims: vc})
	}
	return m.checkClaims(rc, rp, alg, vc, now)
}

// unverifiedIssuer reads iss from the payload before verification, only to
// select a provider: that provider's validator checks it again once the
// signature verified. Duplicate keys resolve as in the verifier (the last
// wins), so selection and check see the same iss.
func unverifiedIssuer(token string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(payloadSegment(token))
	if err != nil {
		return "", false
	}
	var p struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return "", false
	}
	return p.Iss, true
}

// entryValid: a cached signature counts only before the token's exp and
// while the key that verified it is still in the JWKS, unchanged.
func (m *JWTCache) entryValid(e *cacheEntry, ks *keySet, now time.Time) bool {
	if !now.Before(e.exp) {
		return false
	}
	if e.kid == "" {
		return e.keyFP == ks.fp
	}
	ki := ks.keys[e.kid]
	return ki != nil && ki.fp == e.keyFP
}

// checkClaims runs the route's claim rules on verified claims. Each rule
// costs nothing when the route does not use it.
func (m *JWTCache) checkClaims(rc *routeConf, rp *routeProv, alg string, claims *verifiedClaims, now time.Time) verdict {
	if !rc.algs[alg] {
		return reject(reasonBadAlg) // verified for a route that allows more algorithms
	}
	if r := m.validate(rc, rp, claims, now); r != "" {
		return reject(r)
	}
	if rc.maxLifetime > 0 {
		if claims.iat == nil || claims.exp == nil {
			return reject(reasonMissingClaim)
		}
		if claims.exp.Sub(claims.iat.Time) > rc.maxLifetime {
			return reject(reasonLifetime)
		}
	}
	for _, c := range rc.required {
		if v, ok := c.get(claims.all); !ok || v == nil {
			return verdict{reason: reasonMissingClaim, status: http.StatusForbidden}
		}
	}
	for _, s := range rc.scopes {
		if !slices.Contains(claims.scopes, s) {
			return verdict{reason: reasonInsufficientScope, status: http.StatusForbidden}
		}
	}
	for _, cv := range rc.values {
		v, _ := cv.claim.get(claims.all)
		if !claimMatches(v, cv.values) {
			return verdict{reason: reasonBadClaimValue, status: http.StatusForbidden}
		}
	}
	return verdict{reason: reasonOK, claims: claims.all, vc: claims}
}

// claimMatches: a string, number or boolean equal to one of values (as
// JSON text), or a list with such an element. It does not allocate.
func claimMatches(v any, values []string) bool {
	switch x := v.(type) {
	case string:
		return slices.Contains(values, x)
	case json.Number:
		return slices.Contains(values, string(x))
	case bool:
		return slices.Contains(values, strconv.FormatBool(x))
	case []any:
		for _, e := range x {
			if _, nested := e.([]any); !nested && claimMatches(e, values) {
				return true
			}
		}
	}
	return false
}

// consumerValue renders the consumer claim: a non-empty string or a
// number, within the limits of claimHeaderValue.
func consumerValue(v any) (string, bool) {
	switch v.(type) {
	case string, json.Number:
		return claimHeaderValue(v)
	}
	return "", false
}

// keyFor is the jwt.Keyfunc: it finds the key by kid (refreshing once, for
// a bounded time, when the kid is unknown), checks that the token's alg
// fits the key, then takes the key through keyfunc, which checks the JWK's
// own alg again.
func (m *JWTCache) keyFor(rc *routeConf, p *provider, t *jwt.Token) (any, string, [32]byte, error) {
	if err := checkCrit(t.Header); err != nil {
		return nil, "", [32]byte{}, err
	}
	alg := t.Method.Alg()
	ks := p.current(m.now())
	if ks == nil {
		return nil, "", [32]byte{}, errKeysUnavailable
	}
	kidv, has := t.Header[jwkset.HeaderKID]
	if !has {
		var set jwt.VerificationKeySet
		for _, k := range ks.all {
			if (k.alg == "" || k.alg == alg) && algFitsKey(alg, k.key) {
				set.Keys = append(set.Keys, k.key)
			}
		}
		if len(set.Keys) == 0 {
			return nil, "", [32]byte{}, errBadAlg
		}
		return set, "", ks.fp, nil
	}
	kid, ok := kidv.(string)
	if !ok {
		return nil, "", [32]byte{}, errBadKID
	}
	ki := ks.keys[kid]
	if ki == nil {
		if p.refreshForKID(m.cfg.UnknownKIDWait.D()) {
			if ks = p.current(m.now()); ks != nil {
				ki = ks.keys[kid]
			}
		}
		if ki == nil {
			return nil, "", [32]byte{}, errUnknownKID
		}
	}
	if (ki.alg != "" && ki.alg != alg) || !algFitsKey(alg, ki.key) {
		return nil, "", [32]byte{}, errBadAlg
	}
	key, err := ks.kf.Keyfunc(t)
	if err != nil {
		if errors.Is(err, jwkset.ErrKeyNotFound) {
			return nil, "", [32]byte{}, errUnknownKID
		}
		return nil, "", [32]byte{}, errBadAlg
	}
	return key, kid, ki.fp, nil
}

// parseReason maps a parse or signature error to its metric reason.
func parseReason(rc *routeConf, tok *jwt.Token, err error) reason {
	switch {
	case errors.Is(err, errKeysUnavailable):
		return reasonKeysUnavailable
	case errors.Is(err, errUnknownKID):
		return reasonUnknownKID
	case errors.Is(err, errBadAlg):
		return reasonBadAlg
	case errors.Is(err, errBadKID), errors.Is(err, errBadCrit):
		return reasonMalformed
	case errors.Is(err, errUnsupportedCrit):
		return reasonUnsupportedCrit
	case errors.Is(err, jwt.ErrTokenMalformed):
		return reasonMalformed
	}
	// The parser rejects an alg outside the route's list (none, HS256, an
	// unknown name) before it looks for a key.
	if tok != nil {
		if a, _ := tok.Header["alg"].(string); !rc.algs[a] {
			return reasonBadAlg
		}
	}
	if errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		return reasonBadSignature
	}
	return reasonMalformed
}

// validate checks the registered claims as golang-jwt's Validator does
// (exp required, nbf, iat, iss, aud, each with the leeway), without its
// per-call allocation: it runs on every cache hit. When several fail, the
// reason is the most telling: a claim of the wrong type, then exp, nbf,
// iat, iss, aud, and last a missing exp, iss or aud.
func (m *JWTCache) validate(rc *routeConf, rp *routeProv, c *verifiedClaims, now time.Time) reason {
	leeway := rc.leeway
	if c.expErr != nil || c.nbfErr != nil || c.iatErr != nil || (rp.issuer != "" && c.issErr != nil) || (len(rc.audience) > 0 && c.audErr != nil) {
		return reasonMalformed
	}
	missing := false
	if c.exp == nil {
		missing = true
	} else if !now.Before(c.exp.Add(leeway)) {
		return reasonExpired
	}
	if c.nbf != nil && now.Before(c.nbf.Add(-leeway)) {
		return reasonNotYetValid
	}
	if c.iat != nil && now.Before(c.iat.Add(-leeway)) {
		return reasonIssuedInFuture
	}
	if rp.issuer != "" {
		if c.iss == "" {
			missing = true
		} else if c.iss != rp.issuer {
			return reasonBadIssuer
		}
	}
	if len(rc.audience) > 0 {
		switch {
		case len(c.aud) == 0 || len(c.aud) == 1 && c.aud[0] == "":
			missing = true
		case !slices.ContainsFunc(c.aud, func(a string) bool { return slices.Contains(rc.audience, a) }):
			return reasonBadAudience
		}
	}
	if missing {
		return reasonMissingClaim
	}
	return ""
}

// claimHeaderValue renders a claim for an upstream header. Values with
// control characters or over 4 KiB are not forwarded.
func claimHeaderValue(v any) (string, bool) {
	var s string
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		s = x
	case json.Number:
		s = x.String()
	case bool:
		s = strconv.FormatBool(x)
	case float64:
		s = strconv.FormatFloat(x, 'f', -1, 64)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return "", false
		}
		s = string(b)
	}
	if s == "" || len(s) > 4096 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return "", false
		}
	}
	return s, true
}
