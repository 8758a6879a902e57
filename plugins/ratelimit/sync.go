package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
)

// Delayed sync (a route's sync_interval): the runner decides from memory
// and sends its increments to Redis once per interval, as APISIX's
// sync_interval and Kong's sync_rate do. Each key's entry holds the total
// Redis reported at the last flush (every runner's increments up to then),
// what this runner admitted since (pending) and what it is sending right
// now (inflight); a request fits when
//
//	known + inflight + pending + cost <= limit
//
// (sliding_window adds the previous window's total, weighted). A key new
// to the runner is read from Redis once, synchronously, so a restart does
// not forget what other runners counted. Window indexes come from the
// runner's clock (Redis' TIME would cost the round trip this mode saves);
// hosts must keep NTP-level time.
//
// Over-admission: between two flushes each runner judges against totals
// up to one interval old, so N runners admit at most N × interval × rate
// (the rate each runner receives) beyond the limit per window. When a
// flush fails (or the breaker is open) the route's decisions fall back to
// the runner-local limiter, marked degraded, and the increments wait for
// the next successful flush.

// syncSrc adds one runner's increment to a window's counter (the keys of
// decideSrc) and returns that counter and, for sliding_window, the
// previous window's.
//
// KEYS[1] the window's counter, KEYS[2] the previous one (s only); ARGV[1]
// algorithm ("s" or "f"), ARGV[2] the increment, ARGV[3] the TTL in ms for
// a new counter.
const syncSrc = `
local c
local delta = tonumber(ARGV[2])
if delta > 0 then
  c = redis.call('INCRBY', KEYS[1], delta)
  if c == delta then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
else
  c = tonumber(redis.call('GET', KEYS[1]) or 0)
end
local p = 0
if ARGV[1] == 's' then p = tonumber(redis.call('GET', KEYS[2]) or 0) end
return {c, p}
`

var syncScript = redis.NewScript(syncSrc)

// syncEntry is one key's state in delayed sync.
type syncEntry struct {
	mu        sync.Mutex
	key       string
	alg       algo
	window    time.Duration
	idx       int64 // window index of known, pending and inflight
	known     int64 // Redis' total for idx at the last flush
	knownPrev int64 // Redis' total for idx-1
	pending   int64 // admitted here for idx since the last flush
	inflight  int64 // being flushed
	oldIdx    int64 // a window left with increments not yet flushed
	oldDelta  int64
	synced    bool // Redis' totals were read at least once
	failed    bool // the last flush failed: the local limiter decides
	dirty     bool // used since the last flush
}

// syncer flushes the entries of the routes with one sync_interval.
type syncer struct {
	r        *RateLimit
	interval time.Duration
	entries  *lru.Cache[string, *syncEntry]
	mu       sync.Mutex
	dirty    []*syncEntry
	stop     chan struct{}
	done     chan struct{}
}

// syncerFor returns the syncer of interval, starting it on first use.
// Requests read a copy-on-write map without a lock.
func (r *RateLimit) syncerFor(interval time.Duration) *syncer {
	if m := r.syncView.Load(); m != nil {
		if s, ok := (*m)[interval]; ok {
			return s
		}
	}
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if s, ok := r.syncers[interval]; ok {
		return s
	}
	c, _ := lru.New[string, *syncEntry](r.cfg.LocalMaxKeys)
	s := &syncer{r: r, interval: interval, entries: c, stop: make(chan struct{}), done: make(chan struct{})}
	view := make(map[time.Duration]*syncer, len(r.syncers)+1)
	for k, v := range r.syncers {
		view[k] = v
	}
	view[interval] = s
	r.syncers = view
	r.syncView.Store(&view)
	go s.run()
	return s
}

func (s *syncer) run() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.flush()
		case <-s.stop:
			s.flush() // the last increments, within redis.timeout
			return
		}
	}
}

// closeSyncers flushes and stops every syncer.
func (r *RateLimit) closeSyncers() {
	r.syncMu.Lock()
	ss := r.syncers
	r.syncers = nil
	r.syncView.Store(nil)
	r.syncMu.Unlock()
	for _, s := range ss {
		close(s.stop)
		<-s.done
	}
}

// FlushSync flushes every delayed-sync increment now, for tests that move
// time instead of waiting for the interval.
func (r *RateLimit) flushSync() {
	r.syncMu.Lock()
	ss := make([]*syncer, 0, len(r.syncers))
	for _, s := range r.syncers {
		ss = append(ss, s)
	}
	r.syncMu.Unlock()
	for _, s := range ss {
		s.flush()
	}
}

// entry returns key's entry, and whether it is new.
func (s *syncer) entry(key string, alg algo, window time.Duration) (*syncEntry, bool) {
	if e, ok := s.entries.Get(key); ok {
		return e, false
	}
	e := &syncEntry{key: key, alg: alg, window: window}
	if prev, found, _ := s.entries.PeekOrAdd(key, e); found {
		return prev, false
	}
	return e, true
}

// markDirty queues e for the next flush (e.mu held).
func (s *syncer) markDirty(e *syncEntry) {
	if e.dirty {
		return
	}
	e.dirty = true
	s.mu.Lock()
	s.dirty = append(s.dirty, e)
	s.mu.Unlock()
}

// roll moves e to window index idx (e.mu held).
func (e *syncEntry) roll(idx int64) {
	if idx == e.idx {
		return
	}
	if e.pending+e.inflight > 0 && idx == e.idx+1 {
		// Not flushed yet: sent with the old index at the next flush.
		e.oldIdx, e.oldDelta = e.idx, e.oldDelta+e.pending
	}
	if idx == e.idx+1 {
		e.knownPrev = e.known + e.inflight + e.pending
	} else {
		e.knownPrev = 0
	}
	e.idx, e.known, e.pending = idx, 0, 0
}

// estimate is the entry's count at elapsed el into the window (e.mu held).
func (e *syncEntry) estimate(el time.Duration) float64 {
	n := float64(e.known + e.inflight + e.pending)
	if e.alg == algSlidingWindow {
		n += float64(e.knownPrev) * float64(e.window-el) / float64(e.window)
	}
	return n
}

// syncDecide decides a request of a delayed-sync route from memory.
func (r *RateLimit) syncDecide(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, d *decision, now time.Time, shadow bool) {
	s := r.syncerFor(c.SyncInterval.D())
	var ents [maxRules]*syncEntry
	var fresh []*syncEntry
	for i := 0; i < d.n; i++ {
		e, isNew := s.entry(d.keys[i], c.rules[i].alg, d.window[i])
		ents[i] = e
		if isNew {
			fresh = append(fresh, e)
		}
	}
	if fresh != nil {
		// First sight of a key: learn what the other runners counted.
		_ = s.send(fresh, now)
	}
	ms := now.UnixMilli()
	failed := false
	ok := true
	for i := 0; i < d.n; i++ {
		e := ents[i]
		e.mu.Lock()
		if e.window != d.window[i] { // a tenant override changed the window
			*e = syncEntry{key: e.key, alg: e.alg, window: d.window[i], dirty: e.dirty}
		}
		wms := d.window[i].Milliseconds()
		e.roll(ms / wms)
		el := time.Duration(ms%wms) * time.Millisecond
		est := e.estimate(el)
		failed = failed || e.failed || !e.synced
		fits := float64(d.cost[i]) <= float64(d.limit[i])-est
		rem := int64(float64(d.limit[i]) - est)
		if fits {
			rem -= d.cost[i]
		}
		reset := d.window[i] - el
		if fits && e.alg == algSlidingWindow {
			reset += d.window[i]
		}
		d.v[i] = ruleVerdict{fits: fits, remaining: max(rem, 0), reset: reset}
		ok = ok && fits
		e.mu.Unlock()
	}
	if failed {
		// The last flush failed: the runner-local limit decides, and what
		// it admits is sent to Redis once a flush succeeds.
		local := r.localDecide(d, now)
		if local {
			r.syncAdd(s, ents[:d.n], d)
		}
		r.finishLocal(c, w, req, d, local, shadow)
		return
	}
	if !ok {
		for i := 0; i < d.n; i++ {
			ents[i].mu.Lock()
			s.markDirty(ents[i]) // learn the others' counts at the next flush
			ents[i].mu.Unlock()
		}
		worst := -1
		for i := 0; i < d.n; i++ {
			if !d.v[i].fits && (worst < 0 || d.v[i].reset > d.v[worst].reset) {
				worst = i
			}
		}
		if shadow {
			r.count(outShadowRejected)
			return
		}
		r.count(outRejected)
		r.reject(c, w, d, worst, false)
		return
	}
	r.syncAdd(s, ents[:d.n], d)
	r.count(outAllowed)
	r.nearLimit(d)
	if !shadow {
		r.allow(c, req, d, false)
	}
}

// syncAdd counts an admitted request in every rule's entry.
func (r *RateLimit) syncAdd(s *syncer, ents []*syncEntry, d *decision) {
	for i, e := range ents {
		e.mu.Lock()
		e.pending += d.cost[i]
		s.markDirty(e)
		e.mu.Unlock()
	}
}

// finishLocal answers a decision of the local limiter (degraded).
func (r *RateLimit) finishLocal(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, d *decision, allowed, shadow bool) {
	if allowed {
		r.count(outLocalAllowed)
		if !shadow {
			r.allow(c, req, d, true)
		}
		return
	}
	if shadow {
		r.count(outShadowRejected)
		return
	}
	worst := 0
	for i := 0; i < d.n; i++ {
		if !d.v[i].fits && (d.v[worst].fits || d.v[i].reset > d.v[worst].reset) {
			worst = i
		}
	}
	r.count(outLocalRejected)
	r.reject(c, w, d, worst, true)
}

// flush sends the increments of every entry used since the last flush.
func (s *syncer) flush() {
	s.mu.Lock()
	batch := s.dirty
	s.dirty = nil
	s.mu.Unlock()
	for i := 0; i < len(batch); i += s.r.cfg.PipelineMaxBatch {
		_ = s.send(batch[i:min(i+s.r.cfg.PipelineMaxBatch, len(batch))], s.r.now())
	}
}

// send makes one round trip (a pipeline of one script call per entry and
// window) with the entries' increments, and stores the totals Redis
// returns. On failure the increments stay pending and the entries are
// marked failed.
func (s *syncer) send(ents []*syncEntry, now time.Time) error {
	type part struct {
		e        *syncEntry
		idx      int64
		delta    int64
		old      bool
		inflight int64
	}
	ms := now.UnixMilli()
	parts := make([]part, 0, len(ents)+1)
	for _, e := range ents {
		e.mu.Lock()
		e.dirty = false
		wms := e.window.Milliseconds()
		e.roll(ms / wms)
		if e.oldDelta > 0 {
			parts = append(parts, part{e: e, idx: e.oldIdx, delta: e.oldDelta, old: true})
			e.oldDelta = 0
		}
		e.inflight += e.pending
		parts = append(parts, part{e: e, idx: e.idx, delta: e.pending, inflight: e.pending})
		e.pending = 0
		e.mu.Unlock()
	}
	keys := make([][]string, len(parts))
	args := make([][]any, len(parts))
	for i, p := range parts {
		wms := p.e.window.Milliseconds()
		ttl := (p.idx+1)*wms - ms
		keys[i] = []string{windowKey(p.e.key, p.idx)}
		if p.e.alg == algSlidingWindow {
			keys[i] = append(keys[i], windowKey(p.e.key, p.idx-1))
			ttl += wms
		}
		args[i] = []any{algArg[p.e.alg], p.delta, max(ttl, 1)}
	}
	res, err := s.r.callCtx(func(ctx context.Context) (any, error) {
		pipe := s.r.client.Pipeline()
		cmds := make([]*redis.Cmd, len(parts))
		for i := range parts {
			cmds[i] = syncScript.EvalSha(ctx, pipe, keys[i], args[i]...)
		}
		if _, err := pipe.Exec(ctx); err != nil && !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return nil, err
		}
		if redis.HasErrorPrefix(cmds[0].Err(), "NOSCRIPT") {
			// Script cache flushed: once more with EVAL, which loads it.
			pipe = s.r.client.Pipeline()
			for i := range parts {
				cmds[i] = syncScript.Eval(ctx, pipe, keys[i], args[i]...)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, err
			}
		}
		return cmds, nil
	})
	if err != nil {
		for _, p := range parts {
			p.e.mu.Lock()
			if p.old {
				p.e.oldDelta += p.delta
			} else {
				p.e.inflight -= p.inflight
				if p.idx == p.e.idx {
					p.e.pending += p.inflight
				} else if p.idx == p.e.idx-1 {
					p.e.oldIdx, p.e.oldDelta = p.idx, p.e.oldDelta+p.inflight
				}
			}
			p.e.failed = true
			s.markDirty(p.e)
			p.e.mu.Unlock()
		}
		return fmt.Errorf("ratelimit sync: %w", err)
	}
	cmds := res.([]*redis.Cmd)
	var firstErr error
	for i, p := range parts {
		vals, cerr := cmds[i].Int64Slice()
		if cerr == nil && len(vals) != 2 {
			cerr = errors.New("want 2 integers, got " + strconv.Itoa(len(vals)))
		}
		p.e.mu.Lock()
		switch {
		case cerr != nil:
			if firstErr == nil {
				firstErr = cerr
			}
			if !p.old {
				p.e.inflight -= p.inflight
				p.e.pending += p.inflight
				p.e.failed = true
				s.markDirty(p.e)
			}
		case p.old:
		default:
			p.e.inflight -= p.inflight
			if p.idx == p.e.idx { // the window did not move meanwhile
				p.e.known, p.e.knownPrev = vals[0], vals[1]
			}
			p.e.synced, p.e.failed = true, false
		}
		p.e.mu.Unlock()
	}
	if firstErr != nil {
		return fmt.Errorf("ratelimit sync: %w", firstErr)
	}
	return nil
}
