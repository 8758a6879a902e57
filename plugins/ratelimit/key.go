package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
)

// maxPlainKey is the longest key value stored as is; longer or odd values
// are replaced by a hash, so that a client can never inflate Redis memory
// (or the runner's caches) with huge keys.
const maxPlainKey = 64

// safeKey reports whether v can be used in a Redis key as is: short, and
// only characters that cannot break the key layout (no braces, which would
// change the Cluster hash tag, no separators, no control bytes).
func safeKey(v string) bool {
	if len(v) == 0 || len(v) > maxPlainKey {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case b == '.' || b == '-' || b == '_' || b == ':' || b == '@' || b == '+' || b == '=':
		default:
			return false
		}
	}
	return true
}

// boundKey returns v if it is safe, else "#" and a 128-bit hash of it.
func boundKey(v string) string {
	if safeKey(v) {
		return v
	}
	sum := sha256.Sum256([]byte(v))
	return "#" + hex.EncodeToString(sum[:16])
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// jsonErrorBody is the body of a rejection: {"error_msg": msg}.
// unavailableBody is the body of fail_mode "closed"'s 503.
var unavailableBody = jsonErrorBody("rate limiter unavailable")

func jsonErrorBody(msg string) []byte {
	b, _ := json.Marshal(struct {
		ErrorMsg string `json:"error_msg"`
	}{msg})
	return b
}
