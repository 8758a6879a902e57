package chaos

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// scenario is one row of the matrix.
type scenario struct {
	id     int
	name   string
	expect string
	// restartsRunner marks scenarios whose runner process changes (kill,
	// reload): per-process counters then cover only the last process.
	restartsRunner bool
	// prepare adjusts the runner config and starts extra servers (before
	// the runner starts); cleanups go to run.cleanups.
	prepare func(ctx context.Context, r *run) error
	// fault injects the fault under load, waits and ends it (setting
	// r.faultEnd when the fault's end is not the function's return).
	fault func(ctx context.Context, r *run) error
	// judge adds the scenario's checks.
	judge func(r *run)
}

var scenarios = []*scenario{
	{
		id: 1, name: "Redis killed, then restarted",
		expect: "ratelimit fails open (200/429 only, marked degraded), p99 near healthy, Redis-backed again within 3 s of the restart",
		fault: func(ctx context.Context, r *run) error {
			return r.outage(ctx, r.env.redis.Kill, r.env.redis.Restart, false)
		},
		judge: func(r *run) { r.redisChecks(true) },
	},
	{
		id: 2, name: "Redis frozen (SIGSTOP)",
		expect: "same as a kill: no request waits on the frozen Redis beyond the breaker's first trips",
		fault: func(ctx context.Context, r *run) error {
			return r.outage(ctx, r.env.redis.Freeze, r.env.redis.Thaw, true)
		},
		judge: func(r *run) { r.redisChecks(true) },
	},
	{
		id: 3, name: "Redis at 100 ms (latency proxy)",
		expect: "calls time out at redis.timeout, the breaker opens: p99 stays under 50 ms (full run) and near healthy",
		prepare: func(_ context.Context, r *run) error {
			p, err := backing.NewProxy(r.env.redis.Addr())
			if err != nil {
				return err
			}
			r.cleanups = append(r.cleanups, func() { _ = p.Close() })
			r.conf.redisYAML = fmt.Sprintf("redis:\n  addrs: [%q]\n", p.Addr())
			r.proxy = p
			return nil
		},
		fault: func(ctx context.Context, r *run) error {
			inject := func() error { return r.proxy.SetLatency(100 * time.Millisecond) }
			return r.outage(ctx, inject, r.proxy.ClearLatency, false)
		},
		judge: func(r *run) {
			r.redisChecks(true)
			if !r.res.Short {
				p99 := r.res.Fault.P99
				r.check("p99 over the whole fault < 50 ms (the L1 target)", p99 < 50*time.Millisecond, "%s", fmtDur(p99))
			}
		},
	},
	{
		id: 4, name: "Redis at maxmemory (allkeys-lru)",
		expect: "a full Redis evicts and keeps deciding: 200/429 only, no degraded decisions, p99 near healthy",
		prepare: func(ctx context.Context, r *run) error {
			rd, err := backing.StartRedis(backing.RedisOptions{})
			if err != nil {
				return err
			}
			r.cleanups = append(r.cleanups, func() { _ = rd.Close() })
			r.lruRedis = rd
			r.conf.redisYAML = fmt.Sprintf("redis:\n  addrs: [%q]\n", rd.Addr())
			r.conf.rlKey = "header:X-Client-Id"
			return padRedis(ctx, rd)
		},
		fault: func(ctx context.Context, r *run) error { return r.fillRedis(ctx) },
		judge: func(r *run) {
			r.statusChecks()
			deg, tot := degradedOf(r.window(r.faultStart, r.faultEnd))
			r.check(fmt.Sprintf("decisions stay Redis-backed at maxmemory (≤ %.0f%% degraded)", r.t.staysBacked*100),
				tot > 0 && float64(deg) <= r.t.staysBacked*float64(tot), "%d of %d degraded", deg, tot)
			r.check("Redis was at maxmemory: it evicted keys during the fault", r.evicted > 0,
				"%d keys evicted, used_memory peak %s of maxmemory %s (the limiter's keys expire with their window, so they add little)", r.evicted, r.memPeak, r.memMax)
			r.latencyCheck("p99 during the fault", r.res.Fault.P99)
		},
	},
	{
		id: 5, name: "Sentinel failover (master killed)",
		expect: "degraded while no master answers, Redis-backed on the new master within 3 s of the failover",
		prepare: func(ctx context.Context, r *run) error {
			g, err := r.env.takeSentinel(ctx)
			if err != nil {
				return err
			}
			r.cleanups = append(r.cleanups, func() { _ = g.Close() })
			r.sentinel = g
			addrs := make([]string, 0, 3)
			for _, a := range g.SentinelAddrs() {
				addrs = append(addrs, strconv.Quote(a))
			}
			r.conf.redisYAML = fmt.Sprintf("redis:\n  mode: sentinel\n  master_name: %s\n  addrs: [%s]\n", g.MasterName(), strings.Join(addrs, ", "))
			return nil
		},
		fault: func(ctx context.Context, r *run) error {
			old, err := r.sentinel.KillMaster(ctx)
			if err != nil {
				return err
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			nm, err := r.sentinel.WaitNewMaster(wctx, old)
			if err != nil {
				var diag strings.Builder
				for _, sn := range r.sentinel.Sentinels() {
					fmt.Fprintf(&diag, "\nsentinel %s running=%v%s", sn.Addr(), sn.Running(), tail(sn.LogTail(), 800))
				}
				return fmt.Errorf("%w%s", err, diag.String())
			}
			r.faultEnd = r.mark("new master " + nm)
			r.note("master %s killed; sentinels elected %s after %s", old, nm, fmtDur(r.faultEnd.Sub(r.faultStart)))
			return nil
		},
		judge: func(r *run) { r.redisChecks(false) },
	},
	{
		id: 6, name: "ClickHouse killed, then restarted (spool off)",
		expect: "no request impact; rows lost in the outage are counted as dropped; inserts resume by themselves",
		fault: func(ctx context.Context, r *run) error {
			return r.outage(ctx, r.env.ch.Kill, r.env.ch.Restart, false)
		},
		judge: func(r *run) {
			r.loggerChecks()
			l := r.res.Log
			missing := r.res.Total.Logged - r.res.DistinctRows
			r.check("missing rows = dropped + pending", missing == l.dropped()+l.pending(),
				"logged %d − distinct rows %d = %d; dropped %d, pending %d", r.res.Total.Logged, r.res.DistinctRows, missing, l.dropped(), l.pending())
		},
	},
	{
		id: 7, name: "ClickHouse frozen (SIGSTOP, spool on)",
		expect:  "no request impact; rows wait in memory and the spool, nothing is lost, inserts resume after the thaw",
		prepare: func(_ context.Context, r *run) error { r.conf.spool = true; return nil },
		fault: func(ctx context.Context, r *run) error {
			return r.outage(ctx, r.env.ch.Freeze, r.env.ch.Thaw, true)
		},
		judge: func(r *run) {
			r.loggerChecks()
			r.nothingLost()
		},
	},
	{
		id: 8, name: "JWKS down < max_stale, then > max_stale",
		expect:  "cached keys verify until max_stale, then 401 (fail closed, provider down in /status); accepted again once the IdP is back",
		prepare: func(_ context.Context, r *run) error { r.conf.maxStale = r.t.maxStale; return nil },
		fault:   func(ctx context.Context, r *run) error { return r.jwksOutages(ctx) },
		judge:   func(r *run) { r.jwksChecks() },
	},
	{
		id: 9, name: "JWKS key rotation under load",
		expect: "a token of a new kid is accepted at once (refresh on unknown kid), tokens of the retired key are refused after the next refresh",
		fault:  func(ctx context.Context, r *run) error { return r.rotate(ctx) },
		judge:  func(r *run) { r.rotationChecks() },
	},
	{
		id: 10, name: "Redis and ClickHouse down together (spool on)",
		expect:  "fail open and keep logging to the spool; both recover by themselves, no row lost",
		prepare: func(_ context.Context, r *run) error { r.conf.spool = true; return nil },
		fault: func(ctx context.Context, r *run) error {
			inject := func() error {
				if err := r.env.redis.Kill(); err != nil {
					return err
				}
				return r.env.ch.Kill()
			}
			repair := func() error {
				if err := r.env.redis.Restart(); err != nil {
					return err
				}
				r.redisBack = r.mark("redis back")
				return r.env.ch.Restart()
			}
			return r.outage(ctx, inject, repair, false)
		},
		judge: func(r *run) {
			r.redisChecks(true)
			r.loggerRecovery()
			r.nothingLost()
		},
	},
	{
		id: 11, name: "JWKS and Redis down together",
		expect: "tokens keep verifying from cache (outage < max_stale) while the limiter fails open; both recover",
		fault: func(ctx context.Context, r *run) error {
			inject := func() error {
				if err := r.env.idp.Down(); err != nil {
					return err
				}
				return r.env.redis.Kill()
			}
			repair := func() error {
				if err := r.env.redis.Restart(); err != nil {
					return err
				}
				r.redisBack = r.mark("redis back")
				return r.env.idp.Up()
			}
			return r.outage(ctx, inject, repair, false)
		},
		judge: func(r *run) {
			r.redisChecks(true)
			rej := r.res.Total.TokensRejected
			r.check("no valid token refused during the IdP outage", rej == 0, "%d refused", rej)
		},
	},
	{
		id: 12, name: "Runner killed under load (respawn after 3 s)",
		expect:         "only the respawn gap costs (503s for about 3 s); the new runner verifies with its JWKS snapshot while the IdP is down and replays the spool",
		restartsRunner: true,
		prepare:        func(_ context.Context, r *run) error { r.conf.spool = true; return nil },
		fault:          func(ctx context.Context, r *run) error { return r.killRunner(ctx) },
		judge:          func(r *run) { r.killChecks() },
	},
	{
		id: 13, name: "apisix reload under load",
		expect:         "a reload costs nothing: no 503, no refused token, no row lost",
		restartsRunner: true,
		fault: func(ctx context.Context, r *run) error {
			// nginx's reload: new workers (empty keep-alive pools) take the
			// new requests at once, while the old ones finish what is in
			// flight; the new privileged agent spawns the new runner at the
			// same time. Until the new runner has renamed its socket onto
			// the path, new connections still reach the old runner.
			r.newWorkers(ctx)
			if err := r.runner.Reload(ctx); err != nil {
				return err
			}
			r.mark("reload returned (old runner gone)")
			// the window includes the new runner's first second
			return sleep(ctx, time.Second)
		},
		judge: func(r *run) {
			all := r.window(r.loadStart, time.Time{})
			gw := countWhere(all, func(s sample) bool { return s.gateway })
			r.check("no 503 (runner unreachable) during the reload", gw == 0, "%d", gw)
			r.statusChecks()
			rej := r.res.Total.TokensRejected
			r.check("no valid token refused", rej == 0, "%d refused", rej)
			deg, tot := degradedOf(r.window(r.faultStart, r.faultEnd))
			r.check(fmt.Sprintf("rate limiting stays Redis-backed through the reload (≤ %.0f%% degraded)", r.t.staysBacked*100),
				float64(deg) <= r.t.staysBacked*float64(tot), "%d of %d degraded", deg, tot)
			r.latencyCheck("p99 during the reload", r.res.Fault.P99)
			r.check("no row lost: distinct request ids in ClickHouse = logged requests", r.res.DistinctRows == r.res.Total.Logged,
				"rows %d, logged %d", r.res.DistinctRows, r.res.Total.Logged)
		},
	},
}

// countWhere counts the samples for which f holds.
func countWhere(ss []sample, f func(sample) bool) int64 {
	var n int64
	for _, s := range ss {
		if f(s) {
			n++
		}
	}
	return n
}

// outage is the shape of most faults: inject, hold it for the fault's
// length, then note when the repair began (r.repairAt) and repair. With
// repairOnCancel, a run cancelled during the hold still repairs (best
// effort), so that a frozen server is not left stopped.
func (r *run) outage(ctx context.Context, inject, repair func() error, repairOnCancel bool) error {
	if err := inject(); err != nil {
		return err
	}
	if err := sleep(ctx, r.t.fault); err != nil {
		if repairOnCancel {
			_ = repair()
		}
		return err
	}
	r.repairAt = time.Now()
	return repair()
}

// degradedOf counts, in ss, the decisions marked degraded and all the
// decisions (samples the limiter decided).
func degradedOf(ss []sample) (deg, tot int64) {
	deg = countWhere(ss, func(s sample) bool { return s.rl == rlDegraded })
	tot = countWhere(ss, func(s sample) bool { return s.rl != rlNone })
	return deg, tot
}

// statusChecks: every valid request got 200 or 429 (the route never fails
// because of a backing service).
func (r *run) statusChecks() {
	all := r.window(r.loadStart, time.Time{})
	bad := countWhere(all, func(s sample) bool { return s.kind != kindForged && s.status != 200 && s.status != 429 })
	r.check("every valid request answered 200 or 429", bad == 0, "%d other; all statuses %s", bad, fmtStatus(r.res.Total.Status))
}

// latencyCheck bounds a fault p99 by the healthy phase's p99.
func (r *run) latencyCheck(label string, got time.Duration) {
	h := r.res.Healthy.P99
	limit := time.Duration(float64(h) * r.t.latFactor)
	ratio := 0.0
	if h > 0 {
		ratio = float64(got) / float64(h)
	}
	r.check(fmt.Sprintf("%s ≤ %.0f× healthy p99", label, r.t.latFactor), h > 0 && got <= limit,
		"%s vs %s (%.2f×)", fmtDur(got), fmtDur(h), ratio)
}

// redisChecks are the rules of a Redis fault.
func (r *run) redisChecks(allMarked bool) {
	r.statusChecks()
	if allMarked {
		settled := r.settled()
		unmarked := countWhere(settled, func(s sample) bool { return s.rl == rlRedis })
		tot := countWhere(settled, func(s sample) bool { return s.rl != rlNone })
		r.check("after the fault's first second every decision is marked degraded", tot > 0 && unmarked == 0,
			"%d of %d unmarked", unmarked, tot)
	}
	r.settledLatencyCheck()
	r.redisRecovery()
}

// settledLatencyCheck bounds the settled fault's latency quantile (p99, or
// p95 in -short) by the healthy phase's.
func (r *run) settledLatencyCheck() {
	q := r.t.settledQ
	var lat, hl []time.Duration
	for _, s := range r.settled() {
		lat = append(lat, s.latency)
	}
	for _, s := range r.window(r.healthyStart, r.faultStart) {
		hl = append(hl, s.latency)
	}
	slices.Sort(lat)
	slices.Sort(hl)
	got, h := quantile(lat, q), quantile(hl, q)
	limit := time.Duration(float64(h) * r.t.latFactor)
	name := fmt.Sprintf("p%.0f", q*100)
	r.check(fmt.Sprintf("%s during the fault, after its first second, ≤ %.0f× healthy %s", name, r.t.latFactor, name),
		h > 0 && len(lat) > 0 && got <= limit, "%s vs %s (%.2f×)", fmtDur(got), fmtDur(h), float64(got)/float64(max(h, 1)))
}

// settled returns the samples of the fault after its first second (the
// breaker's time to notice) that were answered before the repair began.
func (r *run) settled() []sample {
	var out []sample
	for _, s := range r.window(r.faultStart.Add(time.Second), r.repairAt) {
		if s.at.Add(s.latency).Before(r.repairAt) {
			out = append(out, s)
		}
	}
	return out
}

// redisRecovery measures when decisions are Redis-backed again.
func (r *run) redisRecovery() {
	var first time.Time
	for _, s := range r.window(r.redisBack, r.loadEnd) {
		if s.rl == rlRedis && (first.IsZero() || s.at.Before(first)) {
			first = s.at
		}
	}
	rec := Recovery{What: "ratelimit", OK: !first.IsZero(), D: first.Sub(r.redisBack),
		Def: "Redis answering again (restart/thaw returned, latency removed, new master elected) to the first request answered by a Redis-backed decision"}
	r.res.Recovery = append(r.res.Recovery, rec)
	bound := time.Duration(3 * float64(time.Second) * r.t.slack)
	r.check(fmt.Sprintf("Redis-backed decisions resume within %s", fmtDur(bound)), rec.OK && rec.D <= bound, "%s", rec)
	if rec.OK {
		deg, tot := degradedOf(r.window(first, r.loadEnd))
		r.check(fmt.Sprintf("once resumed, they stay Redis-backed (≤ %.0f%% degraded)", r.t.staysBacked*100),
			float64(deg) <= r.t.staysBacked*float64(tot), "%d of %d degraded", deg, tot)
	}
}

// loggerChecks are the rules of a ClickHouse fault.
func (r *run) loggerChecks() {
	r.statusChecks()
	r.latencyCheck("p99 during the fault (before the repair)", summarize(r.window(r.faultStart, r.repairAt)).P99)
	r.loggerRecovery()
}

// loggerRecovery measures when rows are inserted again.
func (r *run) loggerRecovery() {
	base := r.poll.lastBefore(r.chBack)
	var from int64
	if base != nil {
		from = base.Plugins.Logger.Inserted
	}
	at, ok := r.poll.firstAfter(r.chBack, func(d *statusDoc) bool { return d.Plugins.Logger.Inserted > from })
	rec := Recovery{What: "log", OK: ok, D: at.Sub(r.chBack),
		Def: "end of the fault (ClickHouse answering again) to the first /status reading (every 100 ms) with more rows inserted than at the end of the fault"}
	r.res.Recovery = append(r.res.Recovery, rec)
	bound := time.Duration(3 * float64(time.Second) * r.t.slack)
	r.check(fmt.Sprintf("inserts resume within %s", fmtDur(bound)), ok && rec.D <= bound, "%s", rec)
}

// nothingLost: with the spool on, every logged request is a row.
func (r *run) nothingLost() {
	l := r.res.Log
	r.check("nothing lost: distinct request ids in ClickHouse = logged requests, 0 dropped, spool drained",
		r.res.DistinctRows == r.res.Total.Logged && l.dropped() == 0 && l.pending() == 0,
		"distinct rows %d (table %d), logged %d, dropped %d, pending %d, spooled %d, replayed %d",
		r.res.DistinctRows, r.res.TableRows, r.res.Total.Logged, l.dropped(), l.pending(), l.Spooled, l.Replayed)
}
