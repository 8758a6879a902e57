package jwtcache

import (
	"net/url"
	"strings"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
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

// extractToken looks for the token in the route's sources, in order: the
// first one present wins, even if it is invalid. It returns the token and
// the source it came from; the empty reason means a token was found.
func extractToken(srcs []tokenSource, hdr headerReader, args argser, maxSize int) (string, tokenSource, reason) {
	for _, src := range srcs {
		tok, why := extractFrom(src, hdr, args, maxSize)
		if why != reasonMissingToken {
			return tok, src, why
		}
	}
	return "", tokenSource{}, reasonMissingToken
}

// extractFrom finds the token in one source, and checks its size before
// anything reads it. The empty reason means a token was found.
func extractFrom(src tokenSource, hdr headerReader, args argser, maxSize int) (string, reason) {
	var raw string
	switch src.kind {
	case fromBearer:
		v := hdr.Get("Authorization")
		scheme, rest, ok := strings.Cut(strings.TrimLeft(v, " "), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			// No credentials, or another scheme (Basic): no bearer token.
			return "", reasonMissingToken
		}
		raw = rest
	case fromHeader:
		raw = hdr.Get(src.name)
		if len(raw) > 7 && strings.EqualFold(raw[:7], "Bearer ") {
			raw = raw[7:]
		}
	case fromCookie:
		raw = cookieValue(hdr.Values("Cookie"), src.name)
	case fromQuery:
		raw = args.Args().Get(src.name)
	}
	if len(raw) > maxSize+16 {
		return "", reasonTooLarge
	}
	tok := strings.Trim(raw, " \t")
	if tok == "" {
		return "", reasonMissingToken
	}
	if len(tok) > maxSize {
		return "", reasonTooLarge
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
