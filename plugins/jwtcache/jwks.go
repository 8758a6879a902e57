package jwtcache

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
)

// maxKeys bounds the keys of one JWKS. Keycloak publishes two to four.
const maxKeys = 256

// keyInfo is one usable signing key of a JWKS.
type keyInfo struct {
	kid string
	alg string // the JWK's alg, "" if it has none
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	fp  [32]byte
}

// keySet is an immutable view of a provider's keys: requests read it
// without locks, and a refresh replaces it whole.
type keySet struct {
	keys      map[string]*keyInfo // by kid
	all       []*keyInfo
	kf        keyfunc.Keyfunc // reads a jwkset storage holding exactly these keys
	fetchedAt time.Time
	fp        [32]byte // of the whole set, for tokens without kid
	raw       []byte   // the JWKS document, for the snapshot
	skipped   int      // keys left out as unusable for signatures
}

// parseJWKS validates a JWKS document. Keys that cannot verify signatures
// here (encryption keys, symmetric keys, unsupported curves, RSA below 2048
// bits) are skipped and counted; a document that is not JSON, has no usable
// key, holds a malformed key or repeats a kid is rejected whole, so the
// caller keeps its previous keys.
func parseJWKS(body []byte, fetchedAt time.Time) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("parse jwks: not a JSON object with a keys list: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New("parse jwks: no keys list")
	}
	if len(doc.Keys) > maxKeys {
		return nil, fmt.Errorf("parse jwks: %d keys, more than %d", len(doc.Keys), maxKeys)
	}
	ks := &keySet{keys: map[string]*keyInfo{}, fetchedAt: fetchedAt}
	var jwks []jwkset.JWK
	for i, raw := range doc.Keys {
		var m jwkset.JWKMarshal
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("parse jwks: key %d: not a JWK object: %w", i, err)
		}
		if !signingCandidate(m) {
			ks.skipped++
			continue
		}
		// Public material only: a JWKS that leaks private parts is still
		// read as public keys.
		jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			if errors.Is(err, jwkset.ErrUnsupportedKey) {
				ks.skipped++
				continue
			}
			return nil, fmt.Errorf("parse jwks: key %d (kid %q): %w", i, m.KID, err)
		}
		ki := &keyInfo{kid: m.KID, alg: string(m.ALG), key: jwk.Key(), fp: keyFingerprint(jwk.Marshal())}
		if !usableKey(ki.key) || (ki.alg != "" && !algFitsKey(ki.alg, ki.key)) {
			ks.skipped++
			continue
		}
		if _, dup := ks.keys[ki.kid]; dup {
			return nil, fmt.Errorf("parse jwks: key %d: duplicate kid %q", i, ki.kid)
		}
		ks.keys[ki.kid] = ki
		ks.all = append(ks.all, ki)
		jwks = append(jwks, jwk)
	}
	if len(ks.all) == 0 {
		return nil, fmt.Errorf("parse jwks: no usable signing key (%d skipped)", ks.skipped)
	}
	store := jwkset.NewMemoryStorage()
	if err := store.KeyReplaceAll(context.Background(), jwks); err != nil {
		return nil, fmt.Errorf("parse jwks: store keys: %w", err)
	}
	kf, err := keyfunc.New(keyfunc.Options{Storage: store})
	if err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	ks.kf = kf
	ks.fp = setFingerprint(ks.all)
	ks.raw = bytes.Clone(body)
	return ks, nil
}

// signingCandidate filters keys by their metadata before any parsing.
func signingCandidate(m jwkset.JWKMarshal) bool {
	if m.USE != "" && m.USE != jwkset.UseSig {
		return false // "enc" keys (Keycloak publishes one) never sign tokens
	}
	if m.KTY == jwkset.KtyOct {
		return false // a symmetric key in a public document verifies nothing
	}
	if m.KTY != jwkset.KtyRSA && m.KTY != jwkset.KtyEC && m.KTY != jwkset.KtyOKP {
		return false
	}
	if m.ALG != "" && !slices.Contains(asymmetric, string(m.ALG)) {
		return false
	}
	if len(m.KEYOPS) > 0 {
		for _, op := range m.KEYOPS {
			if op == jwkset.KeyOpsVerify {
				return true
			}
		}
		return false
	}
	return true
}

func usableKey(key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return k.N.BitLen() >= 2048
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return true
	case *ecdh.PublicKey: // X25519: key agreement only
		return false
	}
	return false
}

// algFitsKey reports whether a token signed with alg can be verified by key:
// the family and, for ECDSA, the curve must match. HMAC never fits an
// asymmetric key (algorithm confusion).
func algFitsKey(alg string, key any) bool {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		_, ok := key.(*rsa.PublicKey)
		return ok
	case "ES256", "ES384", "ES512":
		k, ok := key.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		}
		return k.Curve == elliptic.P521()
	case "EdDSA":
		_, ok := key.(ed25519.PublicKey)
		return ok
	}
	return false
}

func keyFingerprint(m jwkset.JWKMarshal) [32]byte {
	h := sha256.New()
	for _, s := range []string{string(m.KTY), string(m.CRV), m.N, m.E, m.X, m.Y, m.KID, string(m.ALG)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func setFingerprint(keys []*keyInfo) [32]byte {
	fps := make([][32]byte, len(keys))
	for i, k := range keys {
		fps[i] = k.fp
	}
	sort.Slice(fps, func(i, j int) bool { return bytes.Compare(fps[i][:], fps[j][:]) < 0 })
	h := sha256.New()
	for _, f := range fps {
		h.Write(f[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// kids returns the key ids, sorted, for /status.
func (ks *keySet) kids() []string {
	out := make([]string, 0, len(ks.all))
	for _, k := range ks.all {
		out = append(out, k.kid)
	}
	sort.Strings(out)
	return out
}
