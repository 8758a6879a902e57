package chaos

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// Token kinds a load request carries (in the X-Chaos-Kind request header,
// which no plugin reads).
const (
	kindValid  = "valid"  // signed by the IdP's current key
	kindNew    = "new"    // signed by the key introduced by a rotation
	kindForged = "forged" // signed by a key the IdP never published
)

// Values of X-RateLimit-Status as classified here.
const (
	rlRedis    = "redis"    // rate-limit headers without the degraded mark
	rlDegraded = "degraded" // X-RateLimit-Status: degraded
	rlNone     = "none"     // no rate-limit headers (jwtcache or the gateway answered first)
)

// sample is one request of the load.
type sample struct {
	at      time.Time // when it was sent
	latency time.Duration
	status  int
	rl      string
	kind    string
	logged  bool // the post-resp call reached the runner: a row was due
	gateway bool // a runner failure answered by the gateway (503)
}

// recorder keeps every sample of a run.
type recorder struct {
	mu      sync.Mutex
	samples []sample
	// gwErrs counts the gateway's failure messages (at most 10 distinct).
	gwErrs map[string]int
}

func (r *recorder) add(lr testbed.LoadResult) {
	s := sample{at: lr.Start, latency: lr.Latency, rl: rlNone}
	if lr.Request != nil {
		s.kind = lr.Request.Headers.Get("X-Chaos-Kind")
	}
	if res := lr.Result; res != nil {
		s.status = res.Status
		if res.Headers != nil {
			switch {
			case res.Headers.Get("X-RateLimit-Status") == "degraded":
				s.rl = rlDegraded
			case res.Headers.Get("X-RateLimit-Limit") != "":
				s.rl = rlRedis
			}
		}
		s.gateway = res.Err != nil
		if slices.Contains(res.Phases, testbed.PhasePostResp) && (res.Err == nil || res.ErrPhase != testbed.PhasePostResp) {
			s.logged = true
		}
	}
	msg := ""
	if res := lr.Result; res != nil && res.Err != nil {
		msg = string(res.ErrPhase) + ": " + res.Err.Error()
	}
	if lr.Err != nil {
		s.gateway = true
		msg = lr.Err.Error()
	}
	r.mu.Lock()
	r.samples = append(r.samples, s)
	if msg != "" {
		if r.gwErrs == nil {
			r.gwErrs = map[string]int{}
		}
		if _, ok := r.gwErrs[msg]; ok || len(r.gwErrs) < 10 {
			r.gwErrs[msg]++
		}
	}
	r.mu.Unlock()
}

// between returns the samples sent in [from, to) (zero to: no end).
func (r *recorder) between(from, to time.Time) []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sample
	for _, s := range r.samples {
		if s.at.Before(from) || (!to.IsZero() && !s.at.Before(to)) {
			continue
		}
		out = append(out, s)
	}
	return out
}

// Stats summarizes the samples of one phase.
type Stats struct {
	Requests int64            `json:"requests"`
	Status   map[int]int64    `json:"status"`
	RL       map[string]int64 `json:"ratelimit_status"`
	P50      time.Duration    `json:"p50_ns"`
	P99      time.Duration    `json:"p99_ns"`
	Max      time.Duration    `json:"max_ns"`
	// Valid and new (rotated-key) tokens accepted (answered 200/429, i.e.
	// they passed jwtcache) and rejected (401/403); forged tokens accepted
	// (must stay 0) and rejected.
	TokensOK, TokensRejected int64
	ForgedOK, ForgedRejected int64
	// Logged counts requests whose post-resp call reached the runner.
	Logged int64
	// GatewayFailures are 503s (or errors) of the gateway: runner unreachable.
	GatewayFailures int64
}

func summarize(ss []sample) Stats {
	st := Stats{Status: map[int]int64{}, RL: map[string]int64{}}
	lat := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		st.Requests++
		st.Status[s.status]++
		st.RL[s.rl]++
		lat = append(lat, s.latency)
		if s.logged {
			st.Logged++
		}
		if s.gateway {
			st.GatewayFailures++
		}
		passed := s.status == 200 || s.status == 429
		refused := s.status == 401 || s.status == 403
		switch s.kind {
		case kindForged:
			if passed {
				st.ForgedOK++
			} else if refused {
				st.ForgedRejected++
			}
		case kindValid, kindNew:
			if passed {
				st.TokensOK++
			} else if refused {
				st.TokensRejected++
			}
		}
	}
	slices.Sort(lat)
	st.P50, st.P99 = quantile(lat, 0.50), quantile(lat, 0.99)
	if len(lat) > 0 {
		st.Max = lat[len(lat)-1]
	}
	return st
}

// quantile of sorted values (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// recoveredAt returns the start of the first interval (of width step, from
// from on) after which every interval with samples satisfies good, or false
// when the last interval with samples does not. Intervals without samples
// are skipped.
func recoveredAt(ss []sample, from time.Time, step time.Duration, good func([]sample) bool) (time.Time, bool) {
	var buckets [][]sample
	for _, s := range ss {
		if s.at.Before(from) {
			continue
		}
		i := int(s.at.Sub(from) / step)
		for len(buckets) <= i {
			buckets = append(buckets, nil)
		}
		buckets[i] = append(buckets[i], s)
	}
	first := -1
	for i, b := range buckets {
		if len(b) == 0 {
			continue
		}
		if good(b) {
			if first < 0 {
				first = i
			}
		} else {
			first = -1
		}
	}
	if first < 0 {
		return time.Time{}, false
	}
	return from.Add(time.Duration(first) * step), true
}

// seriesString prints one line per interval of step from from to to:
// requests, degraded decisions, gateway failures, p50, p99 and max (for
// diagnosis: edgechaos -series).
func seriesString(ss []sample, from, to time.Time, step time.Duration) string {
	var b []byte
	for t := from; t.Before(to); t = t.Add(step) {
		var in []sample
		for _, s := range ss {
			if !s.at.Before(t) && s.at.Before(t.Add(step)) {
				in = append(in, s)
			}
		}
		st := summarize(in)
		b = fmt.Appendf(b, "+%-7s n=%-4d degraded=%-4d gw=%-3d p50=%-8s p99=%-8s max=%s\n", t.Sub(from).Round(time.Millisecond),
			st.Requests, st.RL[rlDegraded], st.GatewayFailures, fmtDur(st.P50), fmtDur(st.P99), fmtDur(st.Max))
	}
	return string(b)
}
