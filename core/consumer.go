package core

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
)

// ConsumerHeader is the upstream request header that carries the verified
// JWT subject ("sub") from the jwtcache plugin to the upstream and to
// APISIX's log phase ($http_x_edge_consumer). jwtcache always deletes a
// client-sent value first. Plugins of the runner never read it back to
// learn who the consumer is: they use VerifiedConsumer, which a client
// cannot forge.
const ConsumerHeader = "X-Edge-Consumer"

// LogConsumerHeader is the client response header the runner adds to a
// Stop answer (a 429, a 500) when an earlier plugin of the same call had
// verified a consumer: APISIX applies no Rewrite then, so the log phase
// would not see ConsumerHeader. Its value is sealed (SealConsumer): the
// client learns nothing from it, and only this runner process can open it
// when APISIX's http-logger sends the entry to the ingest listener
// ($sent_http_x_edge_log_consumer).
const LogConsumerHeader = "X-Edge-Log-Consumer"

// CallValues is implemented by the requests the runner's server hands to
// plugins: values one plugin passes to the plugins after it within the same
// call. They never leave the runner. A request of another runner (the
// reference framework's runner.Run) does not implement it, and the helpers
// below then report nothing.
type CallValues interface {
	SetCallValue(key, value any)
	CallValue(key any) any
}

type verifiedConsumerKey struct{}

// consumerCarrier is implemented by the runner's own requests: the
// consumer in a field of the call, so that recording it on every
// authenticated request does not box the string (an allocation) as a
// CallValues value would.
type consumerCarrier interface {
	SetConsumerID(id string)
	ConsumerID() string
}

// SetVerifiedConsumer records, on request r, the consumer identity a
// plugin has verified. It reports false when r cannot carry it.
func SetVerifiedConsumer(r any, id string) bool {
	if cc, ok := r.(consumerCarrier); ok {
		cc.SetConsumerID(id)
		return true
	}
	cv, ok := r.(CallValues)
	if !ok {
		return false
	}
	cv.SetCallValue(verifiedConsumerKey{}, id)
	return true
}

// VerifiedConsumer returns the consumer identity an earlier plugin verified
// for this same call (SetVerifiedConsumer), and false when there is none.
func VerifiedConsumer(r any) (string, bool) {
	if cc, ok := r.(consumerCarrier); ok {
		id := cc.ConsumerID()
		return id, id != ""
	}
	cv, ok := r.(CallValues)
	if !ok {
		return "", false
	}
	id, ok := cv.CallValue(verifiedConsumerKey{}).(string)
	return id, ok && id != ""
}

// consumerAEAD seals consumer identities with a key drawn at start: a
// sealed value is opened by this process only, within the seconds between
// the answer and the log entry's arrival.
var consumerAEAD = func() cipher.AEAD {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic("core: crypto/rand: " + err.Error())
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic("core: " + err.Error())
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("core: " + err.Error())
	}
	return aead
}()

// MaxSealedConsumer bounds the consumer identities SealConsumer seals, in
// bytes; longer ones are not sealed.
const MaxSealedConsumer = 256

// SealConsumer returns id encrypted and authenticated (AES-256-GCM, random
// nonce), base64url: opaque to the client, and different on every call so
// it cannot be linked across requests. It returns "" when id is empty or
// over MaxSealedConsumer bytes.
func SealConsumer(id string) string {
	if id == "" || len(id) > MaxSealedConsumer {
		return ""
	}
	ns := consumerAEAD.NonceSize()
	buf := make([]byte, ns, ns+len(id)+consumerAEAD.Overhead())
	if _, err := rand.Read(buf); err != nil {
		return ""
	}
	buf = consumerAEAD.Seal(buf, buf[:ns], []byte(id), nil)
	return base64.RawURLEncoding.EncodeToString(buf)
}

// OpenConsumer returns the identity sealed by SealConsumer in this process,
// and false for anything else (a forged, altered or foreign value).
func OpenConsumer(sealed string) (string, bool) {
	ns := consumerAEAD.NonceSize()
	if len(sealed) > base64.RawURLEncoding.EncodedLen(ns+MaxSealedConsumer+consumerAEAD.Overhead()) {
		return "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil || len(raw) < ns+consumerAEAD.Overhead() {
		return "", false
	}
	id, err := consumerAEAD.Open(nil, raw[:ns], raw[ns:], nil)
	if err != nil || len(id) == 0 {
		return "", false
	}
	return string(id), true
}
