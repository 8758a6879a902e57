package ratelimit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

// Conf is the per-route conf of the ratelimit plugin: the JSON string in
// APISIX's ext-plugin-pre-req (or post-req) conf list.
//
// A conf has one rule (Limit, Window, Key, Algorithm, Cost) or a list of
// Rules; all rules of a request are decided in one Redis round trip, and a
// request rejected by one rule consumes nothing from the others.
type Conf struct {
	// Limit is the number of requests (or cost units) allowed per Window.
	// Required unless Rules is given: 1 to 1000000 with the sliding_log
	// algorithm (one Redis entry per allowed request, about 60 bytes each),
	// 1 to 2^53 with sliding_window and fixed_window. Not allowed together
	// with Rules.
	Limit int64 `json:"limit"`
	// Window is the length of the window, a Go duration such as "1s" or
	// "1m". Required unless Rules is given: a whole number of milliseconds,
	// 1ms to 24h with sliding_log, 1ms to 366 days (8784h) with
	// sliding_window and fixed_window. Not allowed together with Rules.
	Window core.Duration `json:"window"`
	// Key is what is counted: one key part, or a list of parts that are
	// counted together (["consumer", "header:X-Api-Key"]). Parts:
	// "remote_addr", "consumer" (the identity jwtcache verified for this
	// very request, never a header), "header:<Name>", "arg:<name>",
	// "var:<nginx variable>" and "route" (one extra round trip to APISIX
	// per request each, the route being APISIX's $route_id),
	// "const:<name>" (the same value for every request: a global limit).
	// A part with no value is counted by remote_addr instead, and counted
	// in apisix_edge_ratelimit_key_fallbacks_total. If empty,
	// "remote_addr". With Rules it is the default of rules without a key.
	Key KeyParts `json:"key"`
	// Algorithm is "sliding_log" (the default: exact, a Redis sorted set
	// with one entry per allowed request in the window), "sliding_window"
	// (O(1): the current and previous fixed windows' counts, the previous
	// weighted by its overlap with the sliding window; see
	// docs/ratelimit.md for its error bound) or "fixed_window" (O(1):
	// windows aligned to the Unix epoch in UTC, so a 24h window starts at
	// midnight UTC). With Rules it is the default of rules without one.
	Algorithm string `json:"algorithm"`
	// Cost is what one request consumes: an integer (1 to MaxCost), or
	// "header:<Name>" or "var:<nginx variable>" holding a decimal integer.
	// A read value above MaxCost counts as MaxCost; a missing or invalid one
	// (not a decimal integer, or below 1) counts as 1, and is counted in
	// apisix_edge_ratelimit_cost_fallbacks_total. If unset, 1. With Rules
	// it is the default of rules without one.
	Cost CostSpec `json:"cost"`
	// MaxCost bounds Cost. If zero, 1000. 1 to 1000 when a rule uses
	// sliding_log (a request adds one entry per unit), else 1 to 2^53.
	MaxCost int64 `json:"max_cost"`
	// Rules are several limits on the same request, such as 10 per second
	// plus 10000 per day. 1 to 8 rules, no two with the same algorithm,
	// window and key. If empty, the conf's own Limit, Window, Key,
	// Algorithm and Cost are its one rule.
	Rules RuleList `json:"rules"`
	// Mode is "enforce" (the default) or "shadow": a dry run that decides
	// and counts as usual but never rejects, sends no rate-limit header,
	// and counts its would-be rejections as outcome shadow_rejected. The
	// runner-wide redis.shadow switch puts every route in shadow mode.
	Mode string `json:"mode"`
	// Headers are the rate-limit fields on responses: "x" (the default:
	// X-RateLimit-Limit, -Remaining, -Reset), "ietf" (RateLimit-Policy and
	// RateLimit of draft-ietf-httpapi-ratelimit-headers), "both" or
	// "none". X-RateLimit-Status: degraded is sent in every mode but
	// "none"; Retry-After is always sent with a rejection.
	Headers string `json:"headers"`
	// SyncInterval turns on delayed sync for this route (every rule must
	// be sliding_window or fixed_window): the runner counts locally and
	// flushes its increments to Redis every SyncInterval, enforcing
	// against the last known total plus its own count. A Redis round trip
	// per interval and key instead of per request, at the price of
	// over-admission up to runners × interval × rate (docs/ratelimit.md).
	// If zero, off (every decision in Redis). 10ms to 1m.
	SyncInterval core.Duration `json:"sync_interval"`
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
	// limits per runner instance in memory. Every such decision carries
	// X-RateLimit-Status: degraded.
	FailMode string `json:"fail_mode"`
	// ShowHeaders false is the same as Headers "none" (kept from v1). If
	// unset, true.
	ShowHeaders *bool `json:"show_headers"`
	// TenantHeader names the request header carrying the tenant id (such
	// as "X-Tenant-ID"). If set, counters are per tenant, and the tenant's
	// limit and window (of the first rule) may be overridden in Redis, or
	// the tenant made unlimited (see docs/ratelimit.md). If empty, no
	// tenant handling.
	TenantHeader string `json:"tenant_header"`

	// Derived by ParseConf.
	rules    []rule
	parts    []keyPart // the distinct key parts of all rules
	common   []int     // indexes in parts shared by every rule: the hash tag
	ns       string    // counter namespace: "n:"+Name or "c:"+conf hash
	hdrX     bool      // X-RateLimit-*
	hdrIETF  bool      // RateLimit-Policy / RateLimit
	show     bool      // any rate-limit header (X-RateLimit-Status included)
	shadow   bool
	body     []byte
	failMode failMode
	anyLog   bool // a rule uses sliding_log (the script needs a member)
	policy   string
}

// Rule is one limit of Conf.Rules. Key, Algorithm and Cost default to the
// conf's own.
type Rule struct {
	// Limit is the number of requests (or cost units) per Window; required,
	// bounded as Conf.Limit.
	Limit int64 `json:"limit"`
	// Window is the rule's window; required, bounded as Conf.Window.
	Window core.Duration `json:"window"`
	// Key is as Conf.Key; if empty, the conf's.
	Key KeyParts `json:"key"`
	// Algorithm is as Conf.Algorithm; if empty, the conf's.
	Algorithm string `json:"algorithm"`
	// Cost is as Conf.Cost; if unset, the conf's.
	Cost CostSpec `json:"cost"`

	decodeErr error
}

// RuleList is Conf.Rules: each rule is decoded strictly on its own, so
// that a problem names its rule ("rules[1].window: ...").
type RuleList []Rule

// UnmarshalJSON decodes a list of rule objects.
func (l *RuleList) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		return nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return &core.FieldError{Rule: "must be a list of rule objects {limit, window, key, algorithm, cost}"}
	}
	out := make(RuleList, len(raw))
	for i, r := range raw {
		out[i].decodeErr = core.DecodeStrict(r, &out[i])
	}
	*l = out
	return nil
}

// KeyParts is Conf.Key: a JSON string (one part) or a list of strings.
type KeyParts []string

// UnmarshalJSON reads a string or a list of strings.
func (k *KeyParts) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return &core.FieldError{Rule: "must be a key part string or a list of them"}
		}
		*k = KeyParts{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return &core.FieldError{Rule: "must be a key part string or a list of them"}
	}
	*k = l
	return nil
}

// CostSpec is Conf.Cost: a JSON integer or a "header:<Name>" /
// "var:<name>" string.
type CostSpec struct {
	// Fixed is the fixed cost (0 when unset or read from the request).
	Fixed int64
	// From is "header:<Name>" or "var:<name>", or empty.
	From string
	set  bool
}

// UnmarshalJSON reads an integer or a source string.
func (c *CostSpec) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &c.From); err != nil {
			return &core.FieldError{Rule: `must be an integer or "header:<Name>" / "var:<name>"`}
		}
		c.set = true
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return &core.FieldError{Rule: fmt.Sprintf(`must be an integer or "header:<Name>" / "var:<name>", got %s`, truncate(string(b)))}
	}
	c.Fixed, c.set = n, true
	return nil
}

// KeysOnConsumer reports whether a rule of the conf counts by the verified
// consumer (go-runner validate warns when no jwtcache precedes it).
func (c *Conf) KeysOnConsumer() bool {
	for _, p := range c.parts {
		if p.kind == keyConsumer {
			return true
		}
	}
	return false
}

// algo is a rule's algorithm.
type algo byte

// The algorithms, as sent to the script; each is also the tag of the rule
// in its Redis key.
const (
	algSlidingLog    algo = 'l'
	algSlidingWindow algo = 's'
	algFixedWindow   algo = 'f'
)

var algoNames = map[string]algo{"sliding_log": algSlidingLog, "sliding_window": algSlidingWindow, "fixed_window": algFixedWindow}

// rule is one limit, derived from the conf.
type rule struct {
	limit    int64
	window   time.Duration
	alg      algo
	parts    []int // indexes in Conf.parts, in the rule's order
	rest     []int // the parts not in Conf.common
	cost     costSrc
	suffix   string // after the hash tag in the Redis key
	limitStr string
	winSecs  int64 // window in whole seconds, at least 1 (RateLimit-Policy)
	// The script's arguments of the rule, boxed once (boxing an int64 per
	// request is an allocation).
	argAlg, argLimit, argWindow, argCost any
}

type costSrc struct {
	fixed int64  // > 0: fixed
	kind  byte   // 'h' header, 'v' var
	name  string // header or variable name
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
	keyConst    keyKind = 'k'
	keyRoute    keyKind = 'r'
)

// keyPart is one part of a key.
type keyPart struct {
	kind keyKind
	name string // header, arg, variable or constant name
}

type failMode int

const (
	failOpen failMode = iota
	failClosed
	failLocal
)

// Bounds of the conf.
const (
	maxLimit       = 1_000_000 // sliding_log
	maxWindow      = 24 * time.Hour
	maxLimitO1     = 1 << 53 // sliding_window, fixed_window: exact in a Lua number
	maxWindowO1    = 366 * 24 * time.Hour
	maxCostLog     = 1000
	defaultMaxCost = 1000
	maxRules       = 8
	maxKeyParts    = 4
	maxRejectMsg   = 1024
	defaultReject  = 429
	minSync        = 10 * time.Millisecond
	maxSync        = time.Minute
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
	if len(c.Key) == 0 {
		c.Key = KeyParts{"remote_addr"}
	}
	if c.Algorithm == "" {
		c.Algorithm = "sliding_log"
	}
	if !c.Cost.set {
		c.Cost = CostSpec{Fixed: 1}
	}
	if c.MaxCost == 0 {
		c.MaxCost = defaultMaxCost
	}
	if c.Mode == "" {
		c.Mode = "enforce"
	}
	if c.Headers == "" {
		c.Headers = "x"
		if c.ShowHeaders != nil && !*c.ShowHeaders {
			c.Headers = "none"
		}
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
}

func (c *Conf) validate() error {
	var errs []error
	if len(c.Rules) > 0 {
		if c.Limit != 0 {
			errs = append(errs, core.Fieldf("limit", "must not be set with rules (each rule has its own), got %d", c.Limit))
		}
		if c.Window != 0 {
			errs = append(errs, core.Fieldf("window", "must not be set with rules (each rule has its own), got %s", c.Window))
		}
		if len(c.Rules) > maxRules {
			errs = append(errs, core.Fieldf("rules", "must hold 1 to %d rules, got %d", maxRules, len(c.Rules)))
		}
	}
	if c.Rules != nil && len(c.Rules) == 0 {
		errs = append(errs, core.Fieldf("rules", "must hold 1 to %d rules, got an empty list", maxRules))
	}
	list := []Rule(c.Rules)
	single := c.Rules == nil
	if single {
		list = []Rule{{Limit: c.Limit, Window: c.Window}}
	}
	if len(list) > maxRules {
		list = list[:maxRules]
	}
	c.rules = make([]rule, 0, len(list))
	seen := map[string]int{}
	for i, r := range list {
		at := fmt.Sprintf("rules[%d].", i)
		if single {
			at = ""
		}
		if r.decodeErr != nil {
			for _, p := range fieldErrors(r.decodeErr) {
				errs = append(errs, core.Fieldf(strings.TrimSuffix(at+p.Field, "."), "%s", p.Rule))
			}
			continue
		}
		ru, rerrs := c.parseRule(at, r)
		errs = append(errs, rerrs...)
		if rerrs != nil {
			continue
		}
		id := ru.idString(c.parts)
		if j, dup := seen[id]; dup {
			errs = append(errs, core.Fieldf(at[:len(at)-1], "has the same algorithm, window and key as rules[%d]", j))
			continue
		}
		seen[id] = i
		c.rules = append(c.rules, ru)
	}
	if c.MaxCost < 1 || c.MaxCost > maxLimitO1 {
		errs = append(errs, core.Fieldf("max_cost", "must be between 1 and 2^53, got %d", c.MaxCost))
	} else if c.MaxCost > maxCostLog && slices.ContainsFunc(c.rules, func(r rule) bool { return r.alg == algSlidingLog }) {
		errs = append(errs, core.Fieldf("max_cost", "must be at most %d with sliding_log (one entry per unit), got %d", maxCostLog, c.MaxCost))
	}
	switch c.Mode {
	case "enforce":
	case "shadow":
		c.shadow = true
	default:
		errs = append(errs, core.Fieldf("mode", "must be enforce or shadow, got %q", truncate(c.Mode)))
	}
	switch c.Headers {
	case "x":
		c.hdrX = true
	case "ietf":
		c.hdrIETF = true
	case "both":
		c.hdrX, c.hdrIETF = true, true
	case "none":
	default:
		errs = append(errs, core.Fieldf("headers", "must be one of x, ietf, both, none, got %q", truncate(c.Headers)))
	}
	c.show = c.Headers != "none"
	if c.ShowHeaders != nil && !*c.ShowHeaders && c.Headers != "none" {
		errs = append(errs, core.Fieldf("show_headers", "false contradicts headers %q (use headers: none)", truncate(c.Headers)))
	}
	if s := c.SyncInterval.D(); s != 0 {
		if s < minSync || s > maxSync {
			errs = append(errs, core.Fieldf("sync_interval", "must be between 10ms and 1m, got %s", s))
		}
		for i, r := range c.rules {
			if r.alg == algSlidingLog {
				errs = append(errs, core.Fieldf("sync_interval", "needs sliding_window or fixed_window in every rule, rule %d is sliding_log", i))
				break
			}
		}
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

// fieldErrors flattens a DecodeStrict error into its field errors.
func fieldErrors(err error) []*core.FieldError {
	var out []*core.FieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		var fe *core.FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, &core.FieldError{Rule: e.Error()})
	}
	walk(err)
	return out
}

// parseRule validates one rule (at is "rules[i]." or "" for the conf's own
// rule) and registers its key parts.
func (c *Conf) parseRule(at string, r Rule) (rule, []error) {
	var errs []error
	alg := r.Algorithm
	if alg == "" {
		alg = c.Algorithm
	}
	a, ok := algoNames[alg]
	if !ok {
		errs = append(errs, core.Fieldf(at+"algorithm", "must be one of sliding_log, sliding_window, fixed_window, got %q", truncate(alg)))
		a = algSlidingWindow // the widest bounds, for the checks below
	}
	maxL, maxW, wname := int64(maxLimitO1), maxWindowO1, "366 days (8784h)"
	if a == algSlidingLog {
		maxL, maxW, wname = maxLimit, maxWindow, "24h"
	}
	if r.Limit <= 0 || r.Limit > maxL {
		errs = append(errs, core.Fieldf(at+"limit", "is required and must be between 1 and %d, got %d", maxL, r.Limit))
	}
	w := r.Window.D()
	switch {
	case w == 0:
		errs = append(errs, core.Fieldf(at+"window", `is required: a duration such as "1s" or "1m"`))
	case w < time.Millisecond || w > maxW:
		errs = append(errs, core.Fieldf(at+"window", "must be between 1ms and %s with %s, got %s", wname, alg, w))
	case w%time.Millisecond != 0:
		errs = append(errs, core.Fieldf(at+"window", "must be a whole number of milliseconds, got %s", w))
	}
	key := r.Key
	if len(key) == 0 {
		key = c.Key
	}
	ru := rule{limit: r.Limit, window: w, alg: a}
	if len(key) > maxKeyParts {
		errs = append(errs, core.Fieldf(at+"key", "must have 1 to %d parts, got %d", maxKeyParts, len(key)))
	} else {
		var seen []keyPart
		for _, k := range key {
			p, err := parseKeyPart(at+"key", k)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if slices.Contains(seen, p) {
				errs = append(errs, core.Fieldf(at+"key", "has the part %q twice", truncate(k)))
				continue
			}
			seen = append(seen, p)
			ru.parts = append(ru.parts, c.partIndex(p))
		}
	}
	cost := r.Cost
	if !cost.set {
		cost = c.Cost
	}
	switch {
	case cost.From != "":
		kind, name, _ := strings.Cut(cost.From, ":")
		switch {
		case kind == "header" && core.ValidHeaderName(name):
			ru.cost = costSrc{kind: 'h', name: name}
		case kind == "var" && varNameRe.MatchString(name):
			ru.cost = costSrc{kind: 'v', name: name}
		default:
			errs = append(errs, core.Fieldf(at+"cost", `must be an integer, "header:<Name>" or "var:<nginx variable>", got %q`, truncate(cost.From)))
		}
	case cost.Fixed < 1 || cost.Fixed > c.maxCost():
		errs = append(errs, core.Fieldf(at+"cost", "must be between 1 and max_cost (%d), got %d", c.maxCost(), cost.Fixed))
	default:
		ru.cost = costSrc{fixed: cost.Fixed}
	}
	if a == algSlidingLog && ru.cost.fixed > maxCostLog {
		errs = append(errs, core.Fieldf(at+"cost", "must be at most %d with sliding_log, got %d", maxCostLog, ru.cost.fixed))
	}
	if errs != nil {
		return rule{}, errs
	}
	return ru, nil
}

func (c *Conf) maxCost() int64 {
	if c.MaxCost < 1 || c.MaxCost > maxLimitO1 {
		return defaultMaxCost
	}
	return c.MaxCost
}

// partIndex returns the index of p in c.parts, adding it.
func (c *Conf) partIndex(p keyPart) int {
	if i := slices.Index(c.parts, p); i >= 0 {
		return i
	}
	c.parts = append(c.parts, p)
	return len(c.parts) - 1
}

// idString identifies a rule's counter: algorithm, window and key.
func (r rule) idString(parts []keyPart) string {
	var b strings.Builder
	b.WriteByte(byte(r.alg))
	b.WriteString(strconv.FormatInt(r.window.Milliseconds(), 10))
	for _, i := range r.parts {
		b.WriteByte('|')
		b.WriteByte(byte(parts[i].kind))
		b.WriteString(parts[i].name)
	}
	return b.String()
}

// parseKeyPart reads one key part.
func parseKeyPart(field, k string) (keyPart, error) {
	switch {
	case k == "remote_addr":
		return keyPart{kind: keyAddr}, nil
	case k == "consumer":
		return keyPart{kind: keyConsumer}, nil
	case k == "route":
		return keyPart{kind: keyRoute, name: "route_id"}, nil
	case strings.HasPrefix(k, "header:"):
		p := keyPart{kind: keyHeader, name: k[len("header:"):]}
		if !core.ValidHeaderName(p.name) {
			return p, core.Fieldf(field, "header:<Name> needs an HTTP header name (1 to 128 token characters), got %q", truncate(k))
		}
		return p, nil
	case strings.HasPrefix(k, "arg:"):
		p := keyPart{kind: keyArg, name: k[len("arg:"):]}
		if p.name == "" || len(p.name) > 128 || strings.ContainsFunc(p.name, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
			return p, core.Fieldf(field, "arg:<name> needs a query argument name (1 to 128 printable characters), got %q", truncate(k))
		}
		return p, nil
	case strings.HasPrefix(k, "var:"):
		p := keyPart{kind: keyVar, name: k[len("var:"):]}
		if !varNameRe.MatchString(p.name) {
			return p, core.Fieldf(field, "var:<name> needs an nginx variable name (1 to 64 of A-Z a-z 0-9 _), got %q", truncate(k))
		}
		return p, nil
	case strings.HasPrefix(k, "const:"):
		p := keyPart{kind: keyConst, name: k[len("const:"):]}
		if !nameRe.MatchString(p.name) {
			return p, core.Fieldf(field, "const:<name> needs 1 to 64 characters of A-Z a-z 0-9 _ . -, got %q", truncate(k))
		}
		return p, nil
	}
	return keyPart{}, core.Fieldf(field, "must be remote_addr, consumer, route, header:<Name>, arg:<name>, var:<name> or const:<name>, got %q", truncate(k))
}

// derive fills the fields computed once per conf.
func (c *Conf) derive(in []byte) {
	if c.Name != "" {
		c.ns = "n:" + c.Name
	} else {
		sum := sha256.Sum256(in)
		c.ns = "c:" + hex.EncodeToString(sum[:8])
	}
	// The hash tag holds the parts every rule shares, so that all keys of
	// one request live in one Cluster slot.
	c.common = nil
	for _, i := range c.rules[0].parts {
		if !slices.ContainsFunc(c.rules[1:], func(r rule) bool { return !slices.Contains(r.parts, i) }) {
			c.common = append(c.common, i)
		}
	}
	legacy := len(c.rules) == 1 && c.rules[0].alg == algSlidingLog
	pol := make([]string, 0, len(c.rules))
	for i := range c.rules {
		r := &c.rules[i]
		for _, p := range r.parts {
			if !slices.Contains(c.common, p) {
				r.rest = append(r.rest, p)
			}
		}
		if r.alg == algSlidingLog {
			c.anyLog = true
		}
		// One sliding-log rule keeps v1's key (its counters survive the
		// upgrade); other rules are told apart by algorithm and window.
		if !legacy {
			r.suffix = ":" + string(r.alg) + strconv.FormatInt(r.window.Milliseconds(), 10)
		}
		r.limitStr = itoa(r.limit)
		r.argAlg, r.argLimit, r.argWindow = algArg[r.alg], any(r.limit), any(r.window.Milliseconds())
		if r.cost.fixed > 0 {
			r.argCost = any(r.cost.fixed)
		}
		r.winSecs = max(ceilSecs(r.window), 1)
		pol = append(pol, policyItem(i, r.limit, r.winSecs))
	}
	c.policy = strings.Join(pol, ", ")
	c.body = jsonErrorBody(c.RejectedMsg)
}

// policyItem is one item of RateLimit-Policy: "r<i>";q=<limit>;w=<secs>.
func policyItem(i int, limit, winSecs int64) string {
	return `"r` + strconv.Itoa(i) + `";q=` + itoa(limit) + ";w=" + itoa(winSecs)
}

func ceilSecs(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// truncate bounds a value echoed in an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
