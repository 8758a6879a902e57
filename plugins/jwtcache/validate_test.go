package jwtcache

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// referenceReason is what golang-jwt's Validator decides for the same
// rules, mapped to a reason the way the plugin did before it checked the
// claims itself.
func referenceReason(err error) reason {
	if err == nil {
		return ""
	}
	for _, c := range []struct {
		err error
		r   reason
	}{
		{jwt.ErrInvalidType, reasonMalformed},
		{jwt.ErrTokenExpired, reasonExpired},
		{jwt.ErrTokenNotValidYet, reasonNotYetValid},
		{jwt.ErrTokenUsedBeforeIssued, reasonIssuedInFuture},
		{jwt.ErrTokenInvalidIssuer, reasonBadIssuer},
		{jwt.ErrTokenInvalidAudience, reasonBadAudience},
		{jwt.ErrTokenRequiredClaimMissing, reasonMissingClaim},
	} {
		if errors.Is(err, c.err) {
			return c.r
		}
	}
	return reasonMalformed
}

// FuzzValidateMatchesGolangJWT: the plugin's own claim checks decide as
// golang-jwt's Validator does, for any claims.
func FuzzValidateMatchesGolangJWT(f *testing.F) {
	for _, s := range []string{
		`{"exp":1800003600,"iss":"https://idp","aud":"api"}`,
		`{"exp":1800000000,"nbf":1800000040,"iat":1799999000,"iss":"x","aud":["a","api"]}`,
		`{"exp":"soon","iss":1,"aud":[1]}`,
		`{"iat":1800000031,"aud":""}`,
		`{"exp":1.8e9,"iss":"","aud":[]}`,
		`{}`,
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		claims := jwt.MapClaims{}
		if err := dec.Decode(&claims); err != nil {
			return
		}
		clk := newClock()
		rc := &routeConf{leeway: time.Duration(mode%4) * 15 * time.Second}
		rp := &routeProv{}
		opts := []jwt.ParserOption{jwt.WithLeeway(rc.leeway), jwt.WithIssuedAt(), jwt.WithExpirationRequired(), jwt.WithTimeFunc(clk.Now)}
		if mode&4 != 0 {
			rp.issuer = "https://idp"
			opts = append(opts, jwt.WithIssuer(rp.issuer))
		}
		if mode&8 != 0 {
			rc.audience = []string{"api", "other"}
			opts = append(opts, jwt.WithAudience(rc.audience...))
		}
		m := &JWTCache{now: clk.Now}
		got := m.validate(rc, rp, newVerifiedClaims(claims), m.now())
		want := referenceReason(jwt.NewValidator(opts...).Validate(newVerifiedClaims(claims)))
		if got != want {
			t.Fatalf("claims %s, mode %d: got %q, want %q (golang-jwt)", data, mode, got, want)
		}
	})
}
