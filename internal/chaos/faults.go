package chaos

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/redis/go-redis/v9"
)

// redisInfo returns one field of INFO section.
func redisInfo(ctx context.Context, c *redis.Client, section, field string) (int64, error) {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return 0, fmt.Errorf("redis info %s: %w", section, err)
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("redis info %s: no %s", section, field)
}

// padRedis fills a fresh Redis with 2 MiB of cold keys (no maxmemory yet),
// so that scenario 4's fault can put it at maxmemory in one step.
func padRedis(ctx context.Context, rd *backing.Redis) error {
	c := rd.Client()
	defer c.Close()
	pad := strings.Repeat("x", 4096)
	for i := 0; i < 512; i += 64 {
		p := c.Pipeline()
		for j := i; j < i+64; j++ {
			p.Set(ctx, "chaos:pad:"+strconv.Itoa(j), pad, 0)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("pad redis: %w", err)
		}
	}
	return nil
}

// fillRedis is scenario 4's fault: maxmemory set 256 KiB below what the
// padded Redis uses, allkeys-lru (Redis evicts at once), then a distinct
// rate-limit key on every request for the fault's length.
func (r *run) fillRedis(ctx context.Context) error {
	c := r.lruRedis.Client()
	defer c.Close()
	ev0, err := redisInfo(ctx, c, "stats", "evicted_keys")
	if err != nil {
		return err
	}
	used, err := redisInfo(ctx, c, "memory", "used_memory")
	if err != nil {
		return err
	}
	limit := used - 256<<10
	if err := c.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		return fmt.Errorf("config set: %w", err)
	}
	if err := c.ConfigSet(ctx, "maxmemory", strconv.FormatInt(limit, 10)).Err(); err != nil {
		return fmt.Errorf("config set: %w", err)
	}
	r.memMax = fmtBytes(limit)
	r.mix.Store(mixDistinct)
	ev1, err := redisInfo(ctx, c, "stats", "evicted_keys")
	if err != nil {
		return err
	}
	r.mark(fmt.Sprintf("redis at maxmemory %s (%d keys evicted at once): distinct keys", r.memMax, ev1-ev0))
	var peak int64
	end := time.Now().Add(r.t.fault)
	for time.Now().Before(end) {
		if u, err := redisInfo(ctx, c, "memory", "used_memory"); err == nil && u > peak {
			peak = u
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	r.mix.Store(mixNormal)
	r.faultEnd = r.mark("distinct keys end")
	ev2, err := redisInfo(ctx, c, "stats", "evicted_keys")
	if err != nil {
		return err
	}
	r.evicted = ev2 - ev0
	r.memPeak = fmtBytes(peak)
	r.note("maxmemory %s; %d keys evicted when it was set, %d more under the load's distinct keys; used_memory peak %s",
		r.memMax, ev1-ev0, ev2-ev1, r.memPeak)
	return c.ConfigSet(ctx, "maxmemory", "0").Err()
}

func fmtBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// jwksOutages is scenario 8's fault: an IdP outage shorter than max_stale,
// a pause to refresh, then one longer than max_stale.
func (r *run) jwksOutages(ctx context.Context) error {
	// Keys are at most refresh_interval (1 s) old when an outage begins,
	// and the first retry after the IdP returns comes within 1 s: an outage
	// of max_stale/4 ends with keys at most max_stale/4 + 2 s old.
	ms := r.conf.maxStale
	if err := r.env.idp.Down(); err != nil {
		return err
	}
	if err := sleep(ctx, ms/4); err != nil {
		return err
	}
	if err := r.env.idp.Up(); err != nil {
		return err
	}
	r.mark("A: IdP back")
	if err := sleep(ctx, 1500*time.Millisecond); err != nil { // keys fresh again
		return err
	}
	r.mark("B: IdP down")
	if err := r.env.idp.Down(); err != nil {
		return err
	}
	if err := sleep(ctx, ms+max(1500*time.Millisecond, ms*3/8)); err != nil {
		return err
	}
	return r.env.idp.Up()
}

func passed(s sample) bool { return s.status == 200 || s.status == 429 }

// refused: jwtcache turned the token away: 401/403, or 503 when it has no
// usable keys (past max_stale); a gateway 503 (runner unreachable) is not.
func refused(s sample) bool {
	return s.status == 401 || s.status == 403 || (s.status == 503 && !s.gateway)
}

func isValid(s sample) bool { return s.kind == kindValid || s.kind == kindNew }

func (r *run) jwksChecks() {
	ms := r.conf.maxStale
	all := r.window(r.loadStart, time.Time{})
	other := countWhere(all, func(s sample) bool { return isValid(s) && !passed(s) && !refused(s) })
	r.check("valid tokens answered 200/429, or refused by jwtcache (401/503) when failing closed", other == 0, "%d other; statuses %s", other, fmtStatus(r.res.Total.Status))
	bStart := r.marks["B: IdP down"]
	a := r.window(r.faultStart, bStart)
	n := countWhere(a, func(s sample) bool { return isValid(s) && refused(s) })
	r.check("outage shorter than max_stale: no valid token refused", n == 0, "%d refused of %d", n, countWhere(a, isValid))
	early := r.window(bStart, bStart.Add(ms-1200*time.Millisecond))
	n = countWhere(early, func(s sample) bool { return isValid(s) && refused(s) })
	r.check("long outage, keys younger than max_stale (first max_stale − refresh_interval): no valid token refused", n == 0,
		"%d refused of %d", n, countWhere(early, isValid))
	late := r.window(bStart.Add(ms+300*time.Millisecond), r.faultEnd)
	ok := countWhere(late, func(s sample) bool { return isValid(s) && passed(s) })
	tot := countWhere(late, isValid)
	r.check("past max_stale: fails closed, every valid token refused", ok == 0 && tot > 0, "%d of %d accepted; refusals by status %s",
		ok, tot, fmtStatus(summarize(late).Status))
	down, seen := r.poll.firstAfter(bStart, func(d *statusDoc) bool { return d.backendState("jwks:idp") == "down" })
	r.check("past max_stale: /status shows jwks:idp down", seen && down.Before(r.faultEnd.Add(time.Second)),
		"seen %v, %s after the outage began", seen, fmtDur(down.Sub(bStart)))
	at, rok := recoveredAt(r.window(r.faultEnd, r.loadEnd), r.faultEnd, 100*time.Millisecond, func(b []sample) bool {
		return countWhere(b, func(s sample) bool { return isValid(s) && refused(s) }) == 0
	})
	rec := Recovery{What: "jwt", OK: rok, D: at.Sub(r.faultEnd),
		Def: "IdP back to the first 100 ms interval from which on no valid token is refused"}
	r.res.Recovery = append(r.res.Recovery, rec)
	bound := time.Duration(3 * float64(time.Second) * r.t.slack)
	r.check(fmt.Sprintf("tokens accepted again within %s (2 × refresh_interval + 1 s)", fmtDur(bound)), rok && rec.D <= bound, "%s", rec)
}

// rotate is scenario 9's fault: the IdP publishes a new key and signs half
// the tokens with it at once, then retires the old key.
func (r *run) rotate(ctx context.Context) error {
	srv := r.env.idp
	r.cleanups = append(r.cleanups, func() { _ = srv.Publish(r.env.k1) })
	if err := srv.Publish(r.env.k1, r.env.k2); err != nil {
		return err
	}
	r.mix.Store(mixRotating)
	r.mark("rotate: k2 published, half the tokens signed by k2")
	if err := sleep(ctx, r.t.fault/2); err != nil {
		return err
	}
	if err := srv.Publish(r.env.k2); err != nil {
		return err
	}
	r.mark("retire: k1 removed from the JWKS")
	if err := sleep(ctx, max(r.t.fault/2, 3*time.Second)); err != nil {
		return err
	}
	r.mix.Store(mixNewOnly)
	return nil
}

func (r *run) rotationChecks() {
	rot, ret := r.marks["rotate: k2 published, half the tokens signed by k2"], r.marks["retire: k1 removed from the JWKS"]
	isNew := func(s sample) bool { return s.kind == kindNew }
	isOld := func(s sample) bool { return s.kind == kindValid }
	var first time.Time
	for _, s := range r.window(rot, time.Time{}) {
		if isNew(s) && passed(s) && (first.IsZero() || s.at.Before(first)) {
			first = s.at
		}
	}
	rec := Recovery{What: "new kid", OK: !first.IsZero(), D: first.Sub(rot),
		Def: "rotation (new key published, new tokens in use) to the first accepted token of the new kid"}
	r.res.Recovery = append(r.res.Recovery, rec)
	bound := time.Duration(float64(time.Second) * r.t.slack)
	r.check(fmt.Sprintf("first new-kid token accepted within %s", fmtDur(bound)), rec.OK && rec.D <= bound, "%s", rec)
	w := r.window(rot.Add(time.Second), time.Time{})
	n := countWhere(w, func(s sample) bool { return isNew(s) && !passed(s) })
	r.check("new-kid tokens always accepted after the rotation's first second", n == 0, "%d not accepted of %d", n, countWhere(w, isNew))
	w = r.window(rot, ret)
	n = countWhere(w, func(s sample) bool { return isOld(s) && !passed(s) })
	r.check("old-kid tokens accepted while the old key is published", n == 0, "%d not accepted of %d", n, countWhere(w, isOld))
	w = r.window(ret.Add(2*time.Second), time.Time{})
	n = countWhere(w, func(s sample) bool { return isOld(s) && !refused(s) })
	tot := countWhere(w, isOld)
	r.check("old-kid tokens refused from refresh_interval + 1 s after the key's retirement (cache invalidated)", n == 0 && tot > 0,
		"%d not refused of %d", n, tot)
}

// killRunner is scenario 12's fault: the IdP and ClickHouse go down, the
// runner spools, then is SIGKILLed; the test bed respawns it 3 s later as
// APISIX does; it must verify with its snapshot and replay the spool when
// ClickHouse returns.
func (r *run) killRunner(ctx context.Context) error {
	if err := r.env.idp.Down(); err != nil {
		return err
	}
	if err := r.env.ch.Kill(); err != nil {
		return err
	}
	r.mark("IdP down, ClickHouse killed")
	if err := sleep(ctx, time.Second); err != nil { // batches fail and go to the spool
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	pre, err := fetchStatus(sctx, r.admin)
	cancel()
	if err != nil {
		return fmt.Errorf("status before the kill: %w", err)
	}
	r.preKill = pre
	r.killAt = r.mark("runner SIGKILL")
	if err := r.runner.Kill(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 25*time.Second) // the respawn (after 3 s), then readiness
	err = r.runner.WaitRespawn(wctx, 1)
	cancel()
	if err != nil {
		return err
	}
	r.respawned = r.mark("runner respawned")
	if err := sleep(ctx, max(1500*time.Millisecond, r.t.fault/3)); err != nil {
		return err
	}
	r.repairAt = time.Now()
	if err := r.env.ch.Restart(); err != nil {
		return err
	}
	if err := r.env.idp.Up(); err != nil {
		return err
	}
	r.idpUp = time.Now()
	return nil
}

func (r *run) killChecks() {
	all := r.window(r.loadStart, time.Time{})
	gapEnd := r.respawned.Add(500 * time.Millisecond)
	// by completion: a request in flight at the kill fails with it
	outside := countWhere(all, func(s sample) bool {
		done := s.at.Add(s.latency)
		return s.gateway && (done.Before(r.killAt) || !s.at.Before(gapEnd))
	})
	r.check("503s only between the kill and the respawn", outside == 0, "%d outside", outside)
	other := countWhere(all, func(s sample) bool { return isValid(s) && !s.gateway && !passed(s) })
	r.check("outside the gap every valid request answered 200 or 429", other == 0, "%d other; statuses %s", other, fmtStatus(r.res.Total.Status))
	at, ok := recoveredAt(r.window(r.killAt, r.loadEnd), r.killAt, 100*time.Millisecond, func(b []sample) bool {
		return countWhere(b, func(s sample) bool { return s.gateway }) == 0
	})
	rec := Recovery{What: "runner", OK: ok, D: at.Sub(r.killAt),
		Def: "SIGKILL to the first 100 ms interval from which on no request gets 503 (APISIX respawns 3 s after an exit)"}
	r.res.Recovery = append(r.res.Recovery, rec)
	bound := 3*time.Second + time.Duration(1.5*float64(time.Second)*r.t.slack)
	r.check(fmt.Sprintf("the gap is the respawn delay: back within %s of the kill", fmtDur(bound)), ok && rec.D <= bound, "%s", rec)
	snap := r.window(r.respawned, r.idpUp)
	acc := countWhere(snap, func(s sample) bool { return isValid(s) && passed(s) })
	ref := countWhere(snap, func(s sample) bool { return isValid(s) && refused(s) })
	_, loaded := r.poll.firstAfter(r.respawned, func(d *statusDoc) bool {
		b, ok := d.Backends["jwks:idp"]
		return ok && b.Detail["snapshot_loaded"] != nil
	})
	r.check("respawned during the IdP outage: verifies with the JWKS snapshot", loaded && acc > 0 && ref == 0,
		"snapshot_loaded %v; %d accepted, %d refused", loaded, acc, ref)
	l := r.res.Log
	r.check("the spool written before the kill is replayed (inherited > 0, spool empty at the end)",
		l.SpoolInherited > 0 && l.SpoolRows == 0 && l.Replayed >= l.SpoolInherited,
		"inherited %d, replayed %d, spool rows %d", l.SpoolInherited, l.Replayed, l.SpoolRows)
	var loggedBefore int64
	for _, s := range r.window(r.loadStart, r.killAt) {
		if s.logged {
			loggedBefore++
		}
	}
	lost := r.res.Total.Logged - r.res.DistinctRows
	var bound2 int64
	if p := r.preKill; p != nil {
		pl := p.Plugins.Logger
		bound2 = loggedBefore - pl.Inserted - pl.Spooled - pl.dropped()
		r.note("before the kill the old runner had inserted %d, spooled %d, dropped %d, %d in memory",
			pl.Inserted, pl.Spooled, pl.dropped(), pl.QueueRows)
	}
	r.check("rows lost only from the killed runner's memory (never from the spool)", lost >= 0 && lost <= bound2,
		"lost %d (logged %d, distinct rows %d); at most %d were neither inserted nor spooled at the kill", lost, r.res.Total.Logged, r.res.DistinctRows, bound2)
	r.loggerRecovery()
}
