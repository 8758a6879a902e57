package ratelimit

import (
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
)

// outcome is one label value of apisix_edge_ratelimit_decisions_total, an
// index so that counting a decision is two array increments.
type outcome uint8

// The outcomes, in the order of outcomeNames.
const (
	outAllowed outcome = iota
	outRejected
	outRejectedCached
	outDegradedOpen
	outDegradedClosed
	outLocalAllowed
	outLocalRejected
	outShadowRejected
	outUnlimited
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"allowed", "rejected", "rejected_cached", "degraded_open", "degraded_closed", "local_allowed", "local_rejected", "shadow_rejected", "unlimited"}

func (o outcome) String() string { return outcomeNames[o] }

// The reasons of apisix_edge_ratelimit_batcher_dropped_total.
const (
	dropQueueFull    = "queue_full"    // the batcher's queue was full: failed at once
	dropQueueTimeout = "queue_timeout" // still queued at the caller's deadline: never sent
)

// The results of apisix_edge_ratelimit_tenant_override_lookups_total.
const (
	lookupCacheHit = "cache_hit" // a fresh cached answer (an override or none)
	lookupRedis    = "redis"     // read from Redis for this request
	lookupStale    = "stale"     // an expired cached answer, Redis unavailable or being asked
	lookupNone     = "none"      // nothing cached and Redis unavailable: the conf applies
)

type metrics struct {
	decisions    [numOutcomes]prometheus.Counter
	redisOK      prometheus.Observer
	redisErr     prometheus.Observer
	breaker      prometheus.Gauge
	transitions  *prometheus.CounterVec
	fallbacks    prometheus.Counter
	nearLimit    prometheus.Counter
	costFallback prometheus.Counter
	lookups      map[string]prometheus.Counter
	batchSize    prometheus.Observer
	batcherDrops map[string]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_decisions_total",
		Help: "Rate-limit decisions by outcome: allowed, rejected (by Redis), rejected_cached (local over-limit cache, no Redis trip), degraded_open, degraded_closed, local_allowed, local_rejected, shadow_rejected (a rejection mode shadow let through), unlimited (a tenant override says unlimited: no rule decided).",
	}, []string{"outcome"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: core.Namespace, Name: "ratelimit_redis_seconds",
		Help:    "Latency of the rate limiter's Redis calls as the request sees it (waiting in the batcher included), by result (ok, error).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .02, .05, .1, .25},
	}, []string{"result"})
	breaker := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: core.Namespace, Name: "ratelimit_breaker_state",
		Help: "State of the circuit breaker around Redis: 0 closed, 1 half-open, 2 open.",
	})
	transitions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_breaker_transitions_total",
		Help: "Circuit breaker transitions, by the state entered (closed, half_open, open).",
	}, []string{"to"})
	fallbacks := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_key_fallbacks_total",
		Help: "Requests with a rate-limit key part that had no value (no verified consumer, a missing header, arg or variable), counted by remote_addr instead.",
	})
	nearLimit := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_near_limit_total",
		Help: "Allowed decisions that left a rule at or above redis.near_limit_ratio of its limit.",
	})
	costFallbacks := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_cost_fallbacks_total",
		Help: "Requests whose cost header or variable was missing or not a positive integer, charged 1.",
	})
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_tenant_override_lookups_total",
		Help: "Tenant override lookups by result: cache_hit, redis, stale (last known value used), none (no value known; the conf applies).",
	}, []string{"result"})
	batch := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: core.Namespace, Name: "ratelimit_redis_batch_size",
		Help:    "Decisions sent to Redis per round trip by the batcher (1: a lone decision, more: a pipeline).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "ratelimit_batcher_dropped_total",
		Help: "Decisions the batcher could not send to Redis, by reason: queue_full (failed at once), queue_timeout (still queued at the deadline). Each is also a degraded decision.",
	}, []string{"reason"})
	reg.MustRegister(decisions, latency, breaker, transitions, fallbacks, nearLimit, costFallbacks, lookups, batch, drops)
	m := &metrics{
		redisOK: latency.WithLabelValues("ok"), redisErr: latency.WithLabelValues("error"),
		breaker: breaker, transitions: transitions, fallbacks: fallbacks,
		nearLimit: nearLimit, costFallback: costFallbacks,
		lookups:   map[string]prometheus.Counter{},
		batchSize: batch, batcherDrops: map[string]prometheus.Counter{},
	}
	for _, d := range []string{dropQueueFull, dropQueueTimeout} {
		m.batcherDrops[d] = drops.WithLabelValues(d)
	}
	// Every label value exists from the start, so that alert expressions
	// (rate(...)) see zeros instead of absent series.
	for o, name := range outcomeNames {
		m.decisions[o] = decisions.WithLabelValues(name)
	}
	for _, s := range []string{"closed", "half_open", "open"} {
		transitions.WithLabelValues(s)
	}
	for _, r := range []string{lookupCacheHit, lookupRedis, lookupStale, lookupNone} {
		m.lookups[r] = lookups.WithLabelValues(r)
	}
	return m
}
