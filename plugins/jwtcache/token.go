package jwtcache

import (
	"hash/maphash"
	"net/url"
	"strings"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apisix-edge/edge-runner/core"
)

// reason is the fixed label set of apisix_edge_jwt_verifications_total.
type reason string

const (
	reasonOK              reason = "ok"
	reasonMissingToken    reason = "missing_token"
	reasonMalformed       reason = "malformed"
	reasonTooLarge        reason = "too_large"
	reasonBadAlg          reason = "bad_alg"
	reasonUnknownKID      reason = "unknown_kid"
	reasonBadSignature    reason = "bad_signature"
	reasonExpired         reason = "expired"
	reasonNotYetValid     reason = "not_yet_valid"
	reasonIssuedInFuture  reason = "issued_in_future"
	reasonBadIssuer       reason = "bad_issuer"
	reasonBadAudience     reason = "bad_audience"
	reasonMissingClaim    reason = "missing_claim"
	reasonKeysUnavailable reason = "keys_unavailable"
	reasonUnsupportedCrit reason = "unsupported_crit"
	// Added with issue 15.
	reasonInsufficientScope reason = "insufficient_scope"
	reasonBadClaimValue     reason = "bad_claim_value"
	reasonLifetime          reason = "lifetime_too_long"
	reasonAnonymous         reason = "anonymous"
	reasonPreflight         reason = "cors_preflight"
)

var allReasons = []reason{reasonOK, reasonMissingToken, reasonMalformed, reasonTooLarge, reasonBadAlg, reasonUnknownKID,
	reasonBadSignature, reasonExpired, reasonNotYetValid, reasonIssuedInFuture, reasonBadIssuer, reasonBadAudience,
	reasonMissingClaim, reasonKeysUnavailable, reasonUnsupportedCrit, reasonInsufficientScope, reasonBadClaimValue,
	reasonLifetime, reasonAnonymous, reasonPreflight}

// argser is the request's query arguments, read only when a source is a
// query argument (pkgHTTP.Request implements it; passing the request
// instead of a method value allocates nothing).
type argser interface{ Args() url.Values }

// headerReader reads request headers. The runner's server header
// implements it on the call's frame without building the map of every
// header; readerOf falls back to View for any other pkgHTTP.Header.
type headerReader interface {
	Get(key string) string
	Values(key string) []string
}

func readerOf(h pkgHTTP.Header) headerReader {
	if hr, ok := h.(headerReader); ok {
		return hr
	}
	return h.View()
}

// tokenText is a token found in a request: the bytes of the header that
// holds it when the server lends them (core.HeaderPeeker, valid during the
// call), else a string. Only a cache miss or a payload header needs the
// string, so a cache hit on a header token copies nothing.
type tokenText struct {
	b   []byte
	s   string
	str bool // s holds the token
}

func tokenString(s string) tokenText { return tokenText{s: s, str: true} }

// String returns the token, copied out of the header once.
func (t *tokenText) String() string {
	if !t.str {
		t.s, t.str = string(t.b), true
	}
	return t.s
}

// tokenSeed keys the hash of the verified-token cache: drawn at start, so
// that no client can aim tokens at one cache slot (a collision is a miss
// anyway: cacheKey).
var tokenSeed = maphash.MakeSeed()

// hash is the token's hash in the verified-token cache's key.
func (t *tokenText) hash() uint64 {
	if t.str {
		return maphash.String(tokenSeed, t.s)
	}
	return maphash.Bytes(tokenSeed, t.b)
}

// is reports whether the token is s, byte for byte.
func (t *tokenText) is(s string) bool {
	if t.str {
		return t.s == s
	}
	return string(t.b) == s
}

// extractToken looks for the token in the route's sources, in order: the
// first one present wins, even if it is invalid. It returns the token and
// the source it came from; the empty reason means a token was found.
func extractToken(srcs []tokenSource, hdr headerReader, args argser, maxSize int) (tokenText, tokenSource, reason) {
	for _, src := range srcs {
		tok, why := extractFrom(src, hdr, args, maxSize)
		if why != reasonMissingToken {
			return tok, src, why
		}
	}
	return tokenText{}, tokenSource{}, reasonMissingToken
}

// extractFrom finds the token in one source, and checks its size before
// anything reads it. The empty reason means a token was found.
func extractFrom(src tokenSource, hdr headerReader, args argser, maxSize int) (tokenText, reason) {
	var raw string
	switch src.kind {
	case fromBearer, fromHeader:
		name, bearer := src.name, src.kind == fromBearer
		if bearer {
			name = "Authorization"
		}
		if p, ok := hdr.(core.HeaderPeeker); ok {
			v, _ := p.PeekHeader(name)
			tok, why := headerToken(v, bearer, maxSize)
			return tokenText{b: tok}, why
		}
		tok, why := headerToken(hdr.Get(name), bearer, maxSize)
		return tokenString(tok), why
	case fromCookie:
		raw = cookieValue(hdr.Values("Cookie"), src.name)
	case fromQuery:
		raw = args.Args().Get(src.name)
	}
	tok, why := checkToken(raw, maxSize)
	return tokenString(tok), why
}

// headerToken is the token in a header's value: what follows the Bearer
// scheme of Authorization (bearer; no credentials, or another scheme such
// as Basic, is no token), or the value of any other header, where a
// "Bearer " prefix is tolerated.
func headerToken[T ~string | ~[]byte](v T, bearer bool, maxSize int) (T, reason) {
	if bearer {
		for len(v) > 0 && v[0] == ' ' {
			v = v[1:]
		}
		i := 0
		for i < len(v) && v[i] != ' ' {
			i++
		}
		if i == len(v) || !core.EqualFoldASCII(v[:i], "Bearer") {
			return v[:0], reasonMissingToken
		}
		v = v[i+1:]
	} else if len(v) > 7 && core.EqualFoldASCII(v[:7], "Bearer ") {
		v = v[7:]
	}
	return checkToken(v, maxSize)
}

// checkToken trims the raw token and checks its size: before the trim
// against a bound, so that no unbounded input is read, then exactly.
func checkToken[T ~string | ~[]byte](raw T, maxSize int) (T, reason) {
	if len(raw) > maxSize+16 {
		return raw[:0], reasonTooLarge
	}
	tok := raw
	for len(tok) > 0 && (tok[0] == ' ' || tok[0] == '\t') {
		tok = tok[1:]
	}
	for len(tok) > 0 && (tok[len(tok)-1] == ' ' || tok[len(tok)-1] == '\t') {
		tok = tok[:len(tok)-1]
	}
	if len(tok) == 0 {
		return tok, reasonMissingToken
	}
	if len(tok) > maxSize {
		return tok[:0], reasonTooLarge
	}
	// The shape (jwsShape) is checked by verify on a cache miss only: a
	// hit is a token that verified before, byte for byte.
	return tok, ""
}

// jwsShape reports whether s is header.payload.signature in base64url
// without padding. The signature may be empty, so that an alg "none" token
// is rejected as such (bad_alg) rather than as malformed.
func jwsShape(s string) bool {
	dots := 0
	seg := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if b64url[c] {
			seg++
			continue
		}
		if c != '.' || (seg == 0 && dots < 2) {
			return false // not base64url, or an empty header or payload
		}
		dots++
		seg = 0
	}
	return dots == 2
}

// b64url marks the base64url alphabet (RFC 4648 section 5), no padding.
var b64url = func() (t [256]bool) {
	for _, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" {
		t[c] = true
	}
	return t
}()

// cookieValue returns the first cookie named name in the Cookie header
// lines. It parses leniently (other cookies may be malformed) and never
// looks at more than a bounded amount of input.
func cookieValue(lines []string, name string) string {
	budget := 64 << 10
	for _, line := range lines {
		if len(line) > budget {
			line = line[:budget]
		}
		budget -= len(line)
		for part := range strings.SplitSeq(line, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
		if budget <= 0 {
			break
		}
	}
	return ""
}

// hideToken removes the token from where it was found (hide_credentials):
// the header, the one cookie (the others stay), or the query argument.
func hideToken(src tokenSource, hdr pkgHTTP.Header, args argser) {
	switch src.kind {
	case fromBearer:
		hdr.Del("Authorization")
	case fromHeader:
		hdr.Del(src.name)
	case fromCookie:
		if rest := withoutCookie(readerOf(hdr).Values("Cookie"), src.name); rest == "" {
			hdr.Del("Cookie")
		} else {
			hdr.Set("Cookie", rest)
		}
	case fromQuery:
		args.Args().Del(src.name)
	}
}

// withoutCookie returns the Cookie header lines as one line without the
// cookies named name.
func withoutCookie(lines []string, name string) string {
	var b strings.Builder
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if k, _, _ := strings.Cut(part, "="); k == name {
				continue
			}
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(part)
		}
	}
	return b.String()
}

// payloadSegment is the token's payload, base64url as signed.
func payloadSegment(tok string) string {
	i := strings.IndexByte(tok, '.')
	j := strings.LastIndexByte(tok, '.')
	return tok[i+1 : j]
}
