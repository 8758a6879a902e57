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
