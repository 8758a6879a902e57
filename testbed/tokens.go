package testbed

import (
	"context"
	"errors"
	"sync"
	"time"
)

// tokenCache models APISIX's two conf token caches:
//
//   - the per-worker lrucache (core.lrucache type "plugin": 8 items, TTL
//     get_conf_token_cache_time() = 3600 s, invalid_stale), keyed by
//     route#<id>#<phase> and checked against the conf version;
//   - the "ext-plugin" shared dict keyed by route#<id>#<phase>#<version>,
//     whose entries expire after 0.9 × the TTL.
//
// A flush (recreate_lrucache) replaces the lrucache and flushes the dict.
type tokenCache struct {
	mu    sync.Mutex
	gen   uint64
	lru   []lruEntry // most recently used first
	size  int
	ttl   time.Duration
	shd   map[string]shEntry
	shTTL time.Duration
}

type lruEntry struct {
	key     string
	ver     int
	token   uint32
	expires time.Time
}

type shEntry struct {
	token   uint32
	expires time.Time
}

func newTokenCache(size int, ttl time.Duration) *tokenCache {
	return &tokenCache{
		size:  size,
		ttl:   ttl,
		shd:   map[string]shEntry{},
		shTTL: time.Duration(float64(ttl) * 0.9),
	}
}

// lruGet returns the token and the cache generation to pass to lruSet.
func (tc *tokenCache) lruGet(key string, ver int) (uint32, bool, uint64) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	now := time.Now()
	for i, e := range tc.lru {
		if e.key != key {
			continue
		}
		if e.ver != ver || now.After(e.expires) {
			return 0, false, tc.gen
		}
		copy(tc.lru[1:i+1], tc.lru[:i])
		tc.lru[0] = e
		return e.token, true, tc.gen
	}
	return 0, false, tc.gen
}

// lruSet stores a token unless the cache was flushed since gen (APISIX then
// writes into the discarded lrucache object).
func (tc *tokenCache) lruSet(gen uint64, key string, ver int, token uint32) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if gen != tc.gen || tc.size <= 0 {
		return
	}
	e := lruEntry{key: key, ver: ver, token: token, expires: time.Now().Add(tc.ttl)}
	for i := range tc.lru {
		if tc.lru[i].key == key {
			copy(tc.lru[1:i+1], tc.lru[:i])
			tc.lru[0] = e
			return
		}
	}
	if len(tc.lru) < tc.size {
		tc.lru = append(tc.lru, lruEntry{})
	}
	copy(tc.lru[1:], tc.lru[:len(tc.lru)-1])
	tc.lru[0] = e
}

func (tc *tokenCache) shGet(key string) (uint32, bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	e, ok := tc.shd[key]
	if !ok || time.Now().After(e.expires) {
		return 0, false
	}
	return e.token, true
}

func (tc *tokenCache) shSet(key string, token uint32) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.shd[key] = shEntry{token: token, expires: time.Now().Add(tc.shTTL)}
}

func (tc *tokenCache) flush() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.gen++
	tc.lru = nil
	tc.shd = map[string]shEntry{}
}

func (tc *tokenCache) len() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return len(tc.shd)
}

// errLockTimeout is resty.lock's "timeout".
var errLockTimeout = errors.New("timeout")

// shLock is the resty.lock "prepare_conf" in the ext-plugin shared dict: one
// lock for every key, held while a PrepareConf is on the wire.
type shLock chan struct{}

func (l shLock) lock(ctx context.Context, timeout time.Duration) error {
	select {
	case l <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l <- struct{}{}:
		return nil
	case <-t.C:
		return errLockTimeout
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l shLock) unlock() { <-l }
