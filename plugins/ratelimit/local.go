package ratelimit

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// overLimit remembers keys that Redis reported over their limit, until the
// moment their window frees a slot. Until then a request on such a key is
// rejected without a Redis round trip: the sliding log adds nothing for a
// rejected request, so nothing can free a slot earlier (short of an
// eviction, which only ever undercounts). Envoy's rate-limit service does
// the same. Times are the runner's monotonic clock; Redis only tells how
// long to wait, so clocks never have to agree.
type overLimit struct {
	c *lru.Cache[string, time.Time]
}

func newOverLimit(size int) *overLimit {
	c, _ := lru.New[string, time.Time](size) // size >= 1: validated
	return &overLimit{c: c}
}

// until returns when key frees a slot, if it is known to be over its limit
// at now.
func (o *overLimit) until(key string, now time.Time) (time.Time, bool) {
	t, ok := o.c.Get(key)
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(t) {
		o.c.Remove(key)
		return time.Time{}, false
	}
	return t, true
}

func (o *overLimit) set(key string, until time.Time) { o.c.Add(key, until) }

func (o *overLimit) len() int { return o.c.Len() }

// localLimiter enforces a limit per runner instance while Redis cannot
// (fail_mode "local"). It uses the sliding-window counter approximation
// (the previous fixed window's count weighted by how much of it still
// overlaps the sliding window, plus the current count): O(1) memory per
// key, where an exact log would cost one entry per request.
type localLimiter struct {
	c *lru.Cache[string, *localWindow]
}

type localWindow struct {
	mu     sync.Mutex
	start  time.Time // start of the current fixed window
	cur    int64
	prev   int64
	window time.Duration
}

func newLocalLimiter(size int) *localLimiter {
	c, _ := lru.New[string, *localWindow](size)
	return &localLimiter{c: c}
}

// decide judges a request of cost units on key at now, and counts it if
// commit and it fits. It returns whether it fits, the remaining units and
// the time until the current fixed window ends.
func (l *localLimiter) decide(key string, limit int64, window time.Duration, cost int64, now time.Time, commit bool) (allowed bool, remaining int64, reset time.Duration) {
	w, ok := l.c.Get(key)
	if !ok {
		nw := &localWindow{start: now, window: window}
		if prev, found, _ := l.c.PeekOrAdd(key, nw); found {
			w = prev
		} else {
			w = nw
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.window != window { // a tenant override changed the window: start over
		*w = localWindow{start: now, window: window}
	}
	if el := now.Sub(w.start); el >= window {
		n := el / window
		if n == 1 {
			w.prev = w.cur
		} else {
			w.prev = 0
		}
		w.cur = 0
		w.start = w.start.Add(n * window)
	}
	el := now.Sub(w.start)
	weight := 1 - float64(el)/float64(window)
	est := float64(w.prev)*weight + float64(w.cur)
	reset = window - el
	if est+float64(cost) > float64(limit) {
		return false, 0, reset
	}
	if commit {
		w.cur += cost
	}
	remaining = limit - int64(est) - cost
	if remaining < 0 {
		remaining = 0
	}
	return true, remaining, reset
}

func (l *localLimiter) len() int { return l.c.Len() }
