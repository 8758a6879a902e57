package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Tenant overrides live in one Redis hash, <key_prefix>overrides. A field
// is a tenant id, or <name>/<tenant id> for the routes whose conf has that
// name; the second wins. A value is "<limit>" or "<limit>/<window>", e.g.
//
//	HSET edge:rl:overrides acme 5000/1m
//	HSET edge:rl:overrides checkout/acme 50
//
// The runner caches each answer (an override, or that there is none) for
// redis.override_cache_ttl, and keeps using the last known answer while
// Redis is unavailable.
const overridesKey = "overrides"

type override struct {
	limit     int64
	window    time.Duration
	unlimited bool
}

type overrideEntry struct {
	found   bool
	o       override
	expires time.Time
}

type overrides struct {
	r   *RateLimit
	ttl time.Duration
	c   *lru.Cache[string, overrideEntry]
}

func newOverrides(r *RateLimit, size int, ttl time.Duration) *overrides {
	c, _ := lru.New[string, overrideEntry](size)
	return &overrides{r: r, ttl: ttl, c: c}
}

func (o *overrides) len() int { return o.c.Len() }

// get returns the override of tenant for routes named name (name may be
// empty), if there is one. A fresh cached answer costs no Redis trip; an
// expired or missing one is read from Redis within the call timeout, and
// when Redis cannot answer the last known answer (or none) is used.
func (o *overrides) get(name, tenant string) (override, bool) {
	k := name + "/" + tenant
	now := o.r.now()
	e, cached := o.c.Get(k)
	if cached && now.Before(e.expires) {
		o.r.met.lookups[lookupCacheHit].Inc()
		return e.o, e.found
	}
	fields := []string{tenant}
	if name != "" {
		fields = append(fields, name+"/"+tenant)
	}
	key := o.r.cfg.KeyPrefix + overridesKey
	res, err := o.r.callCtx(func(ctx context.Context) (any, error) {
		return o.r.client.HMGet(ctx, key, fields...).Result()
	})
	if err != nil {
		if cached {
			o.r.met.lookups[lookupStale].Inc()
			return e.o, e.found
		}
		o.r.met.lookups[lookupNone].Inc()
		return override{}, false
	}
	o.r.met.lookups[lookupRedis].Inc()
	ne := overrideEntry{expires: now.Add(o.ttl)}
	vals, _ := res.([]any)
	for i := len(vals) - 1; i >= 0; i-- { // the named field first
		s, ok := vals[i].(string)
		if !ok {
			continue
		}
		ov, perr := parseOverride(s)
		if perr != nil {
			o.r.deps.Throttle.Warn("ratelimit:override", "ratelimit: invalid tenant override ignored", perr)
			continue
		}
		ne.found, ne.o = true, ov
		break
	}
	o.c.Add(k, ne)
	return ne.o, ne.found
}

// parseOverride reads "unlimited", "<limit>" or "<limit>/<window>".
// Without a window the rule's window applies (a zero window in the
// result). Limits and windows beyond sliding_log's bounds are checked
// against the rule's algorithm on use.
func parseOverride(s string) (override, error) {
	s = strings.TrimSpace(s)
	if s == "unlimited" {
		return override{unlimited: true}, nil
	}
	ls, ws, hasWindow := strings.Cut(s, "/")
	n, err := strconv.ParseInt(ls, 10, 64)
	if err != nil || n <= 0 || n > maxLimitO1 {
		return override{}, fmt.Errorf("parse tenant override %q: limit must be \"unlimited\" or an integer between 1 and 2^53", truncate(s))
	}
	o := override{limit: n}
	if hasWindow {
		w, err := time.ParseDuration(ws)
		if err != nil || w < time.Millisecond || w > maxWindowO1 || w%time.Millisecond != 0 {
			return override{}, fmt.Errorf("parse tenant override %q: window must be a duration between 1ms and 8784h in whole milliseconds", truncate(s))
		}
		o.window = w
	}
	return o, nil
}
