package server

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
)

// confEntry is one plugin of a prepared conf, in run order.
type confEntry struct {
	name string
	p    plugin.Plugin
	conf any
}

// ruleConf is a prepared conf: the plugin chain of one route phase.
type ruleConf struct {
	entries []confEntry
	// reject is set when the conf names a plugin this runner does not
	// serve (or holds more plugins than any route needs): every call on it
	// is answered 500, as an invalid conf of a protecting plugin is. A typo
	// in a plugin name must never turn authentication off.
	reject bool
	used   atomic.Int64 // last use, unix nanoseconds: the TTL runs from it
}

// confCache maps the conf tokens the runner gives APISIX to prepared confs,
// and APISIX's idempotency keys to tokens. Entries live for ttl after their
// last use (1.2 × APISIX_CONF_EXPIRE_TIME, so a conf outlives APISIX's own
// token), and at most max entries are kept: past it the least recently used
// is evicted, so a client preparing endless distinct confs cannot exhaust
// memory.
//
// Tokens are numbered from a random base. APISIX keeps the tokens it was
// given and sends them on any connection, so after a reload, a handoff or a
// respawn a call can carry a token an older runner issued. Numbered from 1
// in every process, such a token could name another route's conf here and
// run the wrong plugins (no jwtcache, no ratelimit). From a random base an
// old token is unknown, the runner answers "conf token not found", and
// APISIX prepares the conf again.
type confCache struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu     sync.RWMutex
	next   uint32
	tokens map[uint32]*ruleConf
	keys   map[string]uint32
	keyOf  map[uint32]string
}

func newConfCache(ttl time.Duration, max int, base uint32) *confCache {
	return &confCache{ttl: ttl, max: max, now: time.Now, next: base,
		tokens: map[uint32]*ruleConf{}, keys: map[string]uint32{}, keyOf: map[uint32]string{}}
}

// tokenBase is a random start for the conf tokens, below 1<<31 so that a
// process never wraps to token 0.
func tokenBase() uint32 {
	return uint32(rand.Int64N(1<<31-1<<20)) + 1
}

// get returns the conf of token, extending its life, or nil.
func (c *confCache) get(token uint32) *ruleConf {
	now := c.now().UnixNano()
	c.mu.RLock()
	rc := c.tokens[token]
	c.mu.RUnlock()
	if rc == nil {
		return nil
	}
	if now-rc.used.Load() > int64(c.ttl) {
		return nil // expired; the sweep removes it
	}
	rc.used.Store(now)
	return rc
}

// byKey returns the token already prepared for APISIX's key, if any.
func (c *confCache) byKey(key string) (uint32, bool) {
	if key == "" {
		return 0, false // APISIX before 2.9 sends no key
	}
	c.mu.RLock()
	tok, ok := c.keys[key]
	c.mu.RUnlock()
	if !ok || c.get(tok) == nil {
		return 0, false
	}
	return tok, true
}

// add stores rc under a new token (and key, if given) and returns the token.
func (c *confCache) add(key string, rc *ruleConf) uint32 {
	now := c.now().UnixNano()
	rc.used.Store(now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tokens) >= c.max {
		c.sweepLocked(now)
	}
	for len(c.tokens) >= c.max {
		c.evictOldestLocked()
	}
	c.next++
	if c.next == 0 {
		c.next = 1
	}
	tok := c.next
	c.tokens[tok] = rc
	if key != "" {
		if old, ok := c.keys[key]; ok {
			delete(c.keyOf, old)
		}
		c.keys[key] = tok
		c.keyOf[tok] = key
	}
	return tok
}

// sweep removes the expired confs.
func (c *confCache) sweep() {
	now := c.now().UnixNano()
	c.mu.Lock()
	c.sweepLocked(now)
	c.mu.Unlock()
}

func (c *confCache) sweepLocked(now int64) {
	for tok, rc := range c.tokens {
		if now-rc.used.Load() > int64(c.ttl) {
			c.removeLocked(tok)
		}
	}
}

func (c *confCache) evictOldestLocked() {
	var oldest uint32
	first := true
	var at int64
	for tok, rc := range c.tokens {
		if u := rc.used.Load(); first || u < at {
			oldest, at, first = tok, u, false
		}
	}
	c.removeLocked(oldest)
}

func (c *confCache) removeLocked(tok uint32) {
	delete(c.tokens, tok)
	if key, ok := c.keyOf[tok]; ok {
		delete(c.keyOf, tok)
		if c.keys[key] == tok {
			delete(c.keys, key)
		}
	}
}

func (c *confCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.tokens)
}
