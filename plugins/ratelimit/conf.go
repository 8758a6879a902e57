package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

// Conf is the per-route conf of the ratelimit plugin: the JSON string in
// APISIX's ext-plugin-pre-req (or post-req) conf list.
type Conf struct {
	// Limit is the number of requests allowed per Window. Required, 1 to
	// 1000000 (the sliding log keeps one Redis entry per allowed request in
	// the window: about 60 bytes each).
	Limit int `json:"limit"`
	// Window is the length of the sliding window, a Go duration such as
	// "1s" or "1m". Required, a whole number of milliseconds from 1ms to
	// 24h.
	Window core.Duration `json:"window"`
	// Key is what is counted: "remote_addr" (the default), "header:<Name>",
	// "arg:<name>", "var:<nginx variable>" (one extra round trip to APISIX
	// per request) or "consumer" (the JWT subject set by jwtcache earlier in
	// the chain). A request with no value for the key is counted by
	// remote_addr instead, and counted in
	// apisix_edge_ratelimit_key_fallbacks_total.
	Key string `json:"key"`
	// Name is a namespace shared by every route conf with the same name, so
	// that several routes can share a counter. If empty, the counter
	// belongs to this conf (routes with byte-identical confs share it).
	// 1 to 64 characters of A-Z a-z 0-9 _ . -.
	Name string `json:"name"`
	// RejectedCode is the status of a rejection. If zero, 429. 400 to 599.
	RejectedCode int `json:"rejected_code"`
	// RejectedMsg is the message in the rejection's JSON body
	// {"error_msg": ...}. If empty, "too many requests". At most 1024 bytes.
	RejectedMsg string `json:"rejected_msg"`
	// FailMode is what happens when Redis cannot decide: "open" (the
	// default) allows, "closed" rejects with 503, "local" enforces the same
	// limit per runner instance in memory. Every such decision carries
	// X-RateLimit-Status: degraded.
	FailMode string `json:"fail_mode"`
	// ShowHeaders adds X-RateLimit-Limit, -Remaining, -Reset and -Status to
	// responses. If unset, true. Retry-After is always sent with a
	// rejection.
	ShowHeaders *bool `json:"show_headers"`
	// TenantHeader names the request header carrying the tenant id (such
	// as "X-Tenant-ID"). If set, counters are per tenant, and the tenant's
	// limit and window may be overridden in Redis (see docs/ratelimit.md).
	// If empty, no tenant handling.
	TenantHeader string `json:"tenant_header"`

	// Derived by ParseConf.
	keyKind  keyKind
	keyName  string // header, arg or variable name
	ns       string // counter namespace: "n:"+Name or "c:"+conf hash
	show     bool
	body     []byte
	window   time.Duration
	limitStr string // Limit as text, for X-RateLimit-Limit
	failMode failMode
}

type keyKind byte

// The key kinds; each is also the one-letter tag in the Redis key, so that
// a header value can never collide with an address.
const (
	keyAddr     keyKind = 'a'
	keyHeader   keyKind = 'h'
	keyArg      keyKind = 'q'
	keyVar      keyKind = 'v'
	keyConsumer keyKind = 'c'
)

type failMode int

const (
	failOpen failMode = iota
	failClosed
	failLocal
)

// Bounds of the conf.
const (
	maxLimit      = 1_000_000
	maxWindow     = 24 * time.Hour
	maxRejectMsg  = 1024
	defaultReject = 429
)

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,64}$`)
	varNameRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
)

// ParseConf decodes and validates one conf. Every problem names its field
// and rule; all problems are returned together.
func ParseConf(in []byte) (*Conf, error) {
	c := &Conf{}
	if err := core.DecodeStrict(in, c); err != nil {
		return nil, err
	}
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	c.derive(in)
	return c, nil
}

func (c *Conf) applyDefaults() {
	if c.Key == "" {
		c.Key = "remote_addr"
	}
	if c.RejectedCode == 0 {
		c.RejectedCode = defaultReject
	}
	if c.RejectedMsg == "" {
		c.RejectedMsg = "too many requests"
	}
	if c.FailMode == "" {
		c.FailMode = "open"
	}
	c.show = c.ShowHeaders == nil || *c.ShowHeaders
}

func (c *Conf) validate() error {
	var errs []error
	if c.Limit <= 0 || c.Limit > maxLimit {
		errs = append(errs, core.Fieldf("limit", "is required and must be between 1 and %d, got %d", maxLimit, c.Limit))
	}
	w := c.Window.D()
	switch {
	case w == 0:
		errs = append(errs, core.Fieldf("window", `is required: a duration such as "1s" or "1m"`))
	case w < time.Millisecond || w > maxWindow:
		errs = append(errs, core.Fieldf("window", "must be between 1ms and 24h, got %s", w))
	case w%time.Millisecond != 0:
		errs = append(errs, core.Fieldf("window", "must be a whole number of milliseconds, got %s", w))
	}
	if err := c.parseKey(); err != nil {
		errs = append(errs, err)
	}
	if c.Name != "" && !nameRe.MatchString(c.Name) {
		errs = append(errs, core.Fieldf("name", "must be 1 to 64 characters of A-Z a-z 0-9 _ . -, got %q", truncate(c.Name)))
	}
	if c.RejectedCode < 400 || c.RejectedCode > 599 {
		errs = append(errs, core.Fieldf("rejected_code", "must be between 400 and 599, got %d", c.RejectedCode))
	}
	if len(c.RejectedMsg) > maxRejectMsg {
		errs = append(errs, core.Fieldf("rejected_msg", "must be at most %d bytes, got %d", maxRejectMsg, len(c.RejectedMsg)))
	}
	switch c.FailMode {
	case "open":
		c.failMode = failOpen
	case "closed":
		c.failMode = failClosed
	case "local":
		c.failMode = failLocal
	default:
		errs = append(errs, core.Fieldf("fail_mode", "must be one of open, closed, local, got %q", truncate(c.FailMode)))
	}
	if c.TenantHeader != "" && !core.ValidHeaderName(c.TenantHeader) {
		errs = append(errs, core.Fieldf("tenant_header", "must be an HTTP header name (1 to 128 token characters), got %q", truncate(c.TenantHeader)))
	}
	return errors.Join(errs...)
}

// parseKey reads Key into keyKind and keyName.
func (c *Conf) parseKey() error {
	k := c.Key
	switch {
	case k == "remote_addr":
		c.keyKind = keyAddr
		return nil
	case k == "consumer":
		c.keyKind = keyConsumer
		return nil
	case strings.HasPrefix(k, "header:"):
		c.keyKind, c.keyName = keyHeader, k[len("header:"):]
		if !core.ValidHeaderName(c.keyName) {
			return core.Fieldf("key", "header:<Name> needs an HTTP header name (1 to 128 token characters), got %q", truncate(k))
		}
		return nil
	case strings.HasPrefix(k, "arg:"):
		c.keyKind, c.keyName = keyArg, k[len("arg:"):]
		if c.keyName == "" || len(c.keyName) > 128 || strings.ContainsFunc(c.keyName, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
			return core.Fieldf("key", "arg:<name> needs a query argument name (1 to 128 printable characters), got %q", truncate(k))
		}
		return nil
	case strings.HasPrefix(k, "var:"):
		c.keyKind, c.keyName = keyVar, k[len("var:"):]
		if !varNameRe.MatchString(c.keyName) {
			return core.Fieldf("key", "var:<name> needs an nginx variable name (1 to 64 of A-Z a-z 0-9 _), got %q", truncate(k))
		}
		return nil
	}
	return core.Fieldf("key", "must be remote_addr, consumer, header:<Name>, arg:<name> or var:<name>, got %q", truncate(k))
}

// derive fills the fields computed once per conf.
func (c *Conf) derive(in []byte) {
	if c.Name != "" {
		c.ns = "n:" + c.Name
	} else {
		sum := sha256.Sum256(in)
		c.ns = "c:" + hex.EncodeToString(sum[:8])
	}
	c.window = c.Window.D()
	c.limitStr = itoa(int64(c.Limit))
	c.body = jsonErrorBody(c.RejectedMsg)
}

// truncate bounds a value echoed in an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// limitText is limit as text: the conf's own limit is formatted once, a
// tenant override's on use.
func (c *Conf) limitText(limit int) string {
	if limit == c.Limit && c.limitStr != "" {
		return c.limitStr
	}
	return itoa(int64(limit))
}
