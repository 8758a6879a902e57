package chaos

import (
	"context"
	"fmt"
	"time"
)

// Check is one verdict rule and what the run gave.
type Check struct {
	Rule string `json:"rule"`
	OK   bool   `json:"ok"`
	Got  string `json:"got"`
}

// Recovery is one measured time to recover after a fault ended.
type Recovery struct {
	What string `json:"what"`
	// Def says precisely what was measured.
	Def string        `json:"definition"`
	D   time.Duration `json:"ns"`
	// OK is false when the state was never reached before the run ended.
	OK bool `json:"ok"`
}

func (r Recovery) String() string {
	if !r.OK {
		return r.What + " never"
	}
	return fmt.Sprintf("%s %s", r.What, fmtDur(r.D))
}

// Result is the outcome of one scenario.
type Result struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	Expect string `json:"expect"`
	Short  bool   `json:"short"`

	// Healthy, Fault and After are the load by phase (requests assigned
	// by the time they were sent); Total is the whole run.
	Healthy, Fault, After, Total Stats
	// SettledP99 is the p99 of the fault phase without its first second
	// (the time a breaker needs to notice a fault) and without requests
	// still in flight when the repair began.
	SettledP99 time.Duration `json:"settled_p99_ns"`
	// FaultLength is how long the fault lasted (until the faulty service
	// answered again).
	FaultLength time.Duration `json:"fault_ns"`
	Recovery    []Recovery    `json:"recovery"`

	// Log is the logger's /status counters at the end (of the last runner
	// process), TableRows the rows in the scenario's ClickHouse table.
	Log       loggerSnap `json:"log"`
	TableRows int64      `json:"table_rows"`
	// DistinctRows counts the distinct request ids in the table: rows
	// written twice by a retried insert count once (delivery is at least
	// once).
	DistinctRows int64 `json:"distinct_rows"`

	Checks  []Check  `json:"checks"`
	Notes   []string `json:"notes"`
	Err     error    `json:"-"`
	Elapsed time.Duration
	// Series is the load per 100 ms from the fault's start to the end
	// (kept for Verbose output).
	Series string `json:"-"`
	// RunnerOutput is the runner's output tail when the scenario failed
	// to run.
	RunnerOutput string `json:"-"`
}

// Pass reports whether the scenario ran and every check held.
func (r *Result) Pass() bool {
	if r.Err != nil || len(r.Checks) == 0 {
		return false
	}
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func (r *run) check(rule string, ok bool, format string, args ...any) {
	r.res.Checks = append(r.res.Checks, Check{Rule: rule, OK: ok, Got: fmt.Sprintf(format, args...)})
}

func (r *run) note(format string, args ...any) {
	r.res.Notes = append(r.res.Notes, fmt.Sprintf(format, args...))
}

// window returns the samples sent in [from, to).
func (r *run) window(from, to time.Time) []sample { return r.rec.between(from, to) }

// judge summarizes the phases, reads the final counters and applies the
// common and the scenario's rules.
func (r *run) judge(ctx context.Context) error {
	res := r.res
	res.Healthy = summarize(r.window(r.healthyStart, r.faultStart))
	res.Fault = summarize(r.window(r.faultStart, r.faultEnd))
	res.After = summarize(r.window(r.faultEnd, r.loadEnd))
	res.Total = summarize(r.window(r.loadStart, time.Time{}))
	res.SettledP99 = summarize(r.settled()).P99
	res.FaultLength = r.faultEnd.Sub(r.faultStart)
	res.Series = seriesString(r.window(r.faultStart.Add(-500*time.Millisecond), time.Time{}), r.faultStart.Add(-500*time.Millisecond), r.loadEnd, 100*time.Millisecond)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	final, err := fetchStatus(sctx, r.admin)
	if err != nil {
		return fmt.Errorf("final status: %w", err)
	}
	res.Log = final.Plugins.Logger
	n, err := r.env.ch.Count(sctx, r.table)
	if err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	res.TableRows = int64(n)
	rows, distinct, err := r.distinctRows(sctx)
	if err != nil {
		return err
	}
	res.DistinctRows = int64(distinct)

	r.rec.mu.Lock()
	for msg, n := range r.rec.gwErrs {
		r.note("gateway failure ×%d: %s", n, msg)
	}
	r.rec.mu.Unlock()
	// Rules every scenario must keep.
	r.check("forged tokens never pass jwtcache", res.Total.ForgedOK == 0,
		"%d forged accepted, %d rejected", res.Total.ForgedOK, res.Total.ForgedRejected)
	l := res.Log
	r.check("logger accounting exact: enqueued + spool_inherited = inserted + dropped + pending", l.balanced(),
		"%d + %d vs %d + %d + %d", l.Enqueued, l.SpoolInherited, l.Inserted, l.dropped(), l.pending())
	if !r.sc.restartsRunner {
		r.check("every logged request was enqueued (client count = enqueued)", res.Total.Logged == l.Enqueued,
			"client %d, enqueued %d", res.Total.Logged, l.Enqueued)
		// Delivery is at least once (docs/clickhouselogger.md): an insert
		// that timed out may still commit on the server, and its retry
		// then writes the batch again. So: no row lost or invented
		// (distinct request ids = the inserted counter), and duplicates
		// only within what failed attempts can explain.
		r.check("no row lost or invented: distinct request ids in ClickHouse = inserted counter", int64(distinct) == l.Inserted,
			"%d distinct, inserted %d", distinct, l.Inserted)
		metrics, merr := fetchMetrics(sctx, r.admin)
		// the runner's failed insert attempts (0 when /metrics is unreadable)
		failed := metricValue(metrics, "apisix_edge_log_batch_seconds_count", `result="error"`)
		r.check("duplicate rows only from inserts retried after a failed attempt (at most one batch each)",
			float64(rows-distinct) <= failed*chaosBatchSize, "%d duplicate rows, %.0f failed insert attempts of at most %d rows",
			rows-distinct, failed, chaosBatchSize)
		r.metricChecks(metrics, merr)
	} else {
		r.check("no duplicate rows in ClickHouse (count() = distinct request ids)", rows == distinct,
			"%d rows, %d distinct request ids", rows, distinct)
	}
	r.sc.judge(r)
	return nil
}

// metricChecks cross-checks the client's counts with the runner's
// /metrics (exactly: the load lets every request in flight finish); err is
// the error reading /metrics.
func (r *run) metricChecks(metrics map[string]float64, err error) {
	if err != nil {
		r.check("/metrics readable", false, "%v", err)
		return
	}
	tot := r.res.Total
	acc := metricValue(metrics, "apisix_edge_jwt_verifications_total", `outcome="accepted"`)
	r.check("/metrics jwt accepted = valid tokens the client saw pass",
		acc == float64(tot.TokensOK), "metric %.0f, client %d", acc, tot.TokensOK)
	deg := metricValue(metrics, "apisix_edge_ratelimit_decisions_total", `outcome="degraded_open"`)
	seen := countWhere(r.window(r.loadStart, time.Time{}), func(s sample) bool { return s.rl == rlDegraded && s.status == 200 })
	r.check("/metrics degraded_open decisions = degraded 200s the client saw",
		deg == float64(seen), "metric %.0f, client %d", deg, seen)
}

// distinctRows returns count() and the number of distinct request ids of
// the scenario's table: a row inserted twice (an insert retried after the
// server committed it) shows as a difference.
func (r *run) distinctRows(ctx context.Context) (rows, distinct uint64, err error) {
	conn, err := r.env.ch.Conn()
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(request_id) FROM "+r.table).Scan(&rows, &distinct); err != nil {
		return 0, 0, fmt.Errorf("count distinct rows: %w", err)
	}
	return rows, distinct, nil
}
