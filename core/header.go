package core

import "strings"

// ValidHeaderName reports whether s can name an HTTP header in a conf: an
// RFC 9110 token (field-name) of 1 to 128 bytes.
func ValidHeaderName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// HeaderPeeker is implemented by the request headers the runner's server
// hands to plugins: it reads a header without copying it, for a plugin that
// only looks at a value (a token it hashes) and would otherwise copy it on
// every request.
type HeaderPeeker interface {
	// PeekHeader returns the first value of key, as Get does, and whether
	// the header is present. The slice is valid until the plugin returns,
	// and must not be modified.
	PeekHeader(key string) ([]byte, bool)
}

// EqualFoldASCII reports whether a equals b but for ASCII case, without
// allocating: header names and auth schemes as sent against the ones
// looked for. For ASCII b it decides as strings.EqualFold does except
// that no non-ASCII rune folds to an ASCII letter here (the Kelvin sign
// is not a "k").
func EqualFoldASCII[T ~string | ~[]byte](a T, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
