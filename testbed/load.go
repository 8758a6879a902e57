package testbed

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// LoadOptions configures Load.
type LoadOptions struct {
	// Gateway and Route are required.
	Gateway *Gateway
	Route   *Route
	// Concurrency is the number of workers, each with one request in
	// flight. Default 1.
	Concurrency int
	// Duration stops issuing requests after this long. Requests stops after
	// that many requests in total. The run ends at whichever comes first;
	// with neither set, Duration defaults to 5 s.
	Duration time.Duration
	Requests int
	// NewRequest builds request number i (0-based, unique across workers)
	// for a worker. Default: GET / with no headers. It may return the same
	// *Request for every call if the Upstream func is safe for concurrent use.
	NewRequest func(worker, i int) *Request
	// CountHeader names a client response header whose values are counted
	// (e.g. "X-RateLimit-Status"). Empty: none.
	CountHeader string
	// Interval enables a time series with one point per Interval (e.g.
	// 250 ms), bucketed by completion time. Zero: no series.
	Interval time.Duration
	// RequestTimeout bounds each Do call. Zero: only the Gateway timeouts.
	RequestTimeout time.Duration
	// Rate paces the run at about this many requests per second in total,
	// spread evenly over the workers (each waits for its next slot and does
	// not catch up on missed ones). Zero: closed loop, each worker sends its
	// next request as soon as the previous one is answered.
	Rate float64
	// Stop, if set, ends the run when closed: workers send no new request
	// and the requests in flight finish and are counted (cancelling ctx
	// instead interrupts them).
	Stop <-chan struct{}
	// Turn is, for LoadPair, how many requests of this route a worker
	// sends in a row before it turns to the other route. Default 1.
	Turn int
	// OnResult, if set, is called after every counted request with what it
	// sent and got (for per-phase accounting by a caller). It runs on the
	// worker's goroutine, concurrently with other workers, so it must be
	// safe for concurrent use and quick: its time delays the worker's next
	// request but is not part of the measured latency.
	OnResult func(LoadResult)
}

// LoadResult is one request of a Load run, as given to OnResult.
type LoadResult struct {
	Worker int
	// Index is the request number passed to NewRequest.
	Index   int
	Request *Request
	// Start is when Do was called; Latency is how long it took.
	Start   time.Time
	Latency time.Duration
	// Result is what Do returned (nil when Err is set and Do gave none).
	Result *Result
	// Err is the error Do returned, or nil.
	Err error
}

// LatencyStats summarizes request latencies.
type LatencyStats struct {
	Min  time.Duration `json:"min_ns"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
}

// SeriesPoint is one interval of a load run's time series.
type SeriesPoint struct {
	// Offset is the start of the interval since the start of the run.
	Offset     time.Duration `json:"offset_ns"`
	Requests   int64         `json:"requests"`
	Errors     int64         `json:"errors"`
	Throughput float64       `json:"throughput"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
}

// LoadReport is the outcome of a Load run.
type LoadReport struct {
	Concurrency int   `json:"concurrency"`
	Requests    int64 `json:"requests"`
	// Errors counts requests whose Do returned an error and requests that
	// hit a runner failure (Result.Err set: 503 or degradation).
	Errors     int64         `json:"errors"`
	Degraded   int64         `json:"degraded"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput"`
	Latency    LatencyStats  `json:"latency"`
	// Status counts client status codes (requests without a Result are
	// not counted).
	Status map[int]int64 `json:"status"`
	// CountHeader and HeaderValues count the values of LoadOptions.CountHeader
	// ("" for responses without it).
	CountHeader  string           `json:"count_header,omitempty"`
	HeaderValues map[string]int64 `json:"header_values,omitempty"`
	// ErrorKinds counts error messages (at most 20 distinct, then "other").
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	Series     []SeriesPoint    `json:"series,omitempty"`
}

type workerStats struct {
	requests, errors, degraded int64
	busy                       time.Duration // LoadPair: this leg's share of the loop
	hist                       histogram
	status                     map[int]int64
	hdr                        map[string]int64
	errKinds                   map[string]int64
	series                     []*seriesBucket
}

type seriesBucket struct {
	hist   histogram
	errors int64
}

// Load runs Concurrency workers against the Gateway until Duration has
// passed or Requests have been sent, then reports. In-flight requests are
// allowed to finish. It returns an error for invalid options, or with the
// partial report when ctx ends first.
func Load(ctx context.Context, opts LoadOptions) (*LoadReport, error) {
	if opts.Gateway == nil || opts.Route == nil {
		return nil, errors.New("load: gateway and route are required")
	}
	l := newLeg(&opts)
	start := time.Now()
	run(ctx, &opts, []*leg{l}, start)
	rep := buildReport(&opts, l.stats, time.Since(start))
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("load: %w", err)
	}
	return rep, nil
}

// LoadPair runs a and b in one closed loop: each worker sends a.Turn
// requests of a, then b.Turn of b, then of a again, so that both meet the
// same moments of the machine. Compare two routes with it where the machine
// changes state faster than two Load runs can alternate: with one worker,
// the latency of a lone request swings between states that last tens of
// milliseconds on a virtual machine (whether a sleeping CPU must be woken),
// and alternating runs of even 100 ms then give ratios from 0.3 to 3 for
// the same code. A turn of one request is not a run of the route either:
// each request then follows the other route's, in caches the other left,
// and the two latencies draw together (measured here: 0.7 µs each way, for
// a plugin adding 3.5 µs to a 28 µs round trip). Turns of a few dozen
// requests keep a route's requests following each other, and are still
// short against the machine's states.
//
// Concurrency, Duration, Requests (per route), RequestTimeout and Stop are
// a's; Gateway, Route, NewRequest, CountHeader, Turn and OnResult are each
// one's own. Rate and Interval are not supported. With more than one worker the
// two routes' requests run side by side and slow each other down, so a
// ratio of the two is fair at Concurrency 1 only.
//
// Each report's Elapsed is the time of its own requests, each from its
// start to the start of the worker's next, summed over the workers and
// divided by Concurrency; its Throughput is its requests over that time:
// the rate the loop would reach on that route alone.
func LoadPair(ctx context.Context, a, b LoadOptions) (ra, rb *LoadReport, err error) {
	if a.Gateway == nil || a.Route == nil || b.Gateway == nil || b.Route == nil {
		return nil, nil, errors.New("load pair: gateways and routes are required")
	}
	if a.Rate > 0 || b.Rate > 0 || a.Interval > 0 || b.Interval > 0 {
		return nil, nil, errors.New("load pair: Rate and Interval are not supported")
	}
	la := newLeg(&a)
	b.Concurrency = a.Concurrency
	lb := newLeg(&b)
	run(ctx, &a, []*leg{la, lb}, time.Now())
	ra, rb = buildReport(&a, la.stats, la.busy()), buildReport(&b, lb.stats, lb.busy())
	if err := ctx.Err(); err != nil {
		return ra, rb, fmt.Errorf("load pair: %w", err)
	}
	return ra, rb, nil
}

// leg is one route's share of a run: its options, its request numbering
// and its workers' statistics.
type leg struct {
	o     *LoadOptions
	next  atomic.Int64
	stats []*workerStats
}

// newLeg applies the defaults to o and makes its statistics.
func newLeg(o *LoadOptions) *leg {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Duration <= 0 && o.Requests <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.NewRequest == nil {
		def := &Request{Method: "GET", Path: "/"}
		o.NewRequest = func(int, int) *Request { return def }
	}
	l := &leg{o: o, stats: make([]*workerStats, o.Concurrency)}
	for w := range l.stats {
		l.stats[w] = &workerStats{status: map[int]int64{}, hdr: map[string]int64{}, errKinds: map[string]int64{}}
	}
	return l
}

// busy is the leg's turns' time per worker.
func (l *leg) busy() time.Duration {
	var sum time.Duration
	for _, ws := range l.stats {
		sum += ws.busy
	}
	return sum / time.Duration(len(l.stats))
}

// run starts ctl.Concurrency workers, each taking the legs in turn, and
// waits for them.
func run(ctx context.Context, ctl *LoadOptions, legs []*leg, start time.Time) {
	var end time.Time
	if ctl.Duration > 0 {
		end = start.Add(ctl.Duration)
	}
	var wg sync.WaitGroup
	for w := 0; w < ctl.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			loadWorker(ctx, ctl, w, legs, start, end)
		}(w)
	}
	wg.Wait()
}

func loadWorker(ctx context.Context, ctl *LoadOptions, w int, legs []*leg, start, end time.Time) {
	var every time.Duration
	slot := start
	if ctl.Rate > 0 {
		every = time.Duration(float64(ctl.Concurrency) / ctl.Rate * float64(time.Second))
		// stagger the workers over one period so that they don't fire together
		slot = start.Add(every * time.Duration(w) / time.Duration(ctl.Concurrency))
	}
	var cur struct {
		leg     *leg
		n, left int // turns taken; requests left in this one
		spent   int // routes in a row found to have sent their share
	}
	for {
		if every > 0 {
			if d := time.Until(slot); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-ctl.Stop: // a nil channel never fires
					t.Stop()
					return
				case <-t.C:
				}
			}
			slot = slot.Add(every)
			if now := time.Now(); slot.Before(now) {
				slot = now // behind: no burst to catch up
			}
		}
		if ctx.Err() != nil || (!end.IsZero() && !time.Now().Before(end)) {
			return
		}
		if ctl.Stop != nil {
			select {
			case <-ctl.Stop:
				return
			default:
			}
		}
		if cur.left == 0 {
			cur.leg = legs[cur.n%len(legs)]
			cur.left = max(cur.leg.o.Turn, 1)
			cur.n++
		}
		cur.left--
		l := cur.leg
		i := l.next.Add(1) - 1
		if ctl.Requests > 0 && i >= int64(ctl.Requests) {
			// this route has sent its share: on to the next, until all have
			if cur.spent++; cur.spent == len(legs) {
				return
			}
			cur.left = 0
			continue
		}
		cur.spent = 0
		ws := l.stats[w]
		t0 := time.Now()
		if !l.send(ctx, ctl, w, int(i), ws, start) {
			return
		}
		ws.busy += time.Since(t0)
	}
}

// send sends request i of the leg for worker w and records it in ws; it
// reports false when ctx ended the request.
func (l *leg) send(ctx context.Context, ctl *LoadOptions, w, i int, ws *workerStats, start time.Time) bool {
	o := l.o
	req := o.NewRequest(w, i)
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if ctl.RequestTimeout > 0 {
		rctx, cancel = context.WithTimeout(ctx, ctl.RequestTimeout)
	}
	t0 := time.Now()
	res, err := o.Gateway.Do(rctx, o.Route, req)
	lat := time.Since(t0)
	cancel()
	if err != nil && ctx.Err() != nil {
		return false // interrupted by the caller, not a result
	}
	if o.OnResult != nil {
		o.OnResult(LoadResult{Worker: w, Index: i, Request: req, Start: t0, Latency: lat, Result: res, Err: err})
	}
	ws.requests++
	ws.hist.record(lat)
	var bucket *seriesBucket
	if o.Interval > 0 {
		idx := int(time.Since(start) / o.Interval)
		for len(ws.series) <= idx {
			ws.series = append(ws.series, &seriesBucket{})
		}
		bucket = ws.series[idx]
		bucket.hist.record(lat)
	}
	if err == nil && res != nil && res.Err != nil {
		err = res.Err
		if res.Degraded {
			ws.degraded++
		}
	}
	if err != nil {
		ws.errors++
		if bucket != nil {
			bucket.errors++
		}
		k := err.Error()
		if _, ok := ws.errKinds[k]; !ok && len(ws.errKinds) >= 20 {
			k = "other"
		}
		ws.errKinds[k]++
	}
	if res != nil && res.Status != 0 {
		ws.status[res.Status]++
		if o.CountHeader != "" {
			ws.hdr[res.Headers.Get(o.CountHeader)]++
		}
	}
	return true
}

func buildReport(o *LoadOptions, stats []*workerStats, elapsed time.Duration) *LoadReport {
	rep := &LoadReport{
		Concurrency: o.Concurrency,
		Elapsed:     elapsed,
		Status:      map[int]int64{},
		CountHeader: o.CountHeader,
		ErrorKinds:  map[string]int64{},
	}
	if o.CountHeader != "" {
		rep.HeaderValues = map[string]int64{}
	}
	var all histogram
	var series []*seriesBucket
	for _, ws := range stats {
		rep.Requests += ws.requests
		rep.Errors += ws.errors
		rep.Degraded += ws.degraded
		all.merge(&ws.hist)
		for k, v := range ws.status {
			rep.Status[k] += v
		}
		for k, v := range ws.hdr {
			rep.HeaderValues[k] += v
		}
		for k, v := range ws.errKinds {
			if _, ok := rep.ErrorKinds[k]; !ok && len(rep.ErrorKinds) >= 20 {
				k = "other"
			}
			rep.ErrorKinds[k] += v
		}
		for i, b := range ws.series {
			for len(series) <= i {
				series = append(series, &seriesBucket{})
			}
			series[i].hist.merge(&b.hist)
			series[i].errors += b.errors
		}
	}
	if elapsed > 0 {
		rep.Throughput = float64(rep.Requests) / elapsed.Seconds()
	}
	rep.Latency = LatencyStats{
		Min: time.Duration(all.min), Mean: all.mean(),
		P50: all.quantile(0.50), P90: all.quantile(0.90), P99: all.quantile(0.99),
		Max: time.Duration(all.max),
	}
	for i, b := range series {
		width := o.Interval
		if rest := elapsed - time.Duration(i)*o.Interval; rest < width {
			width = rest
		}
		p := SeriesPoint{
			Offset:   time.Duration(i) * o.Interval,
			Requests: int64(b.hist.n),
			Errors:   b.errors,
			P50:      b.hist.quantile(0.50),
			P99:      b.hist.quantile(0.99),
			Max:      time.Duration(b.hist.max),
		}
		if width > 0 {
			p.Throughput = float64(p.Requests) / width.Seconds()
		}
		rep.Series = append(rep.Series, p)
	}
	if len(rep.ErrorKinds) == 0 {
		rep.ErrorKinds = nil
	}
	return rep
}

// String formats the report as a small table, plus outcome counts and the
// time series if any.
func (r *LoadReport) String() string {
	s := FormatReports([]*LoadReport{r})
	if len(r.Series) > 0 {
		s += "\n" + r.SeriesString()
	}
	return s
}

// SeriesString formats the time series as a table (empty without one).
func (r *LoadReport) SeriesString() string {
	if len(r.Series) == 0 {
		return ""
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "offset\treq/s\terrors\tp50\tp99\tmax\t")
	for _, p := range r.Series {
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%s\t%s\t%s\t\n", p.Offset, p.Throughput, p.Errors,
			FormatDuration(p.P50), FormatDuration(p.P99), FormatDuration(p.Max))
	}
	_ = tw.Flush()
	return sb.String()
}

// FormatReports formats several reports (e.g. one per concurrency level) as
// one table: concurrency, requests, errors, req/s, p50, p90, p99, max and
// the outcome counts (status codes, then CountHeader values).
func FormatReports(reps []*LoadReport) string {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "conc\trequests\terrors\treq/s\tp50\tp90\tp99\tmax\toutcomes")
	for _, r := range reps {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\n", r.Concurrency, r.Requests, r.Errors,
			r.Throughput, FormatDuration(r.Latency.P50), FormatDuration(r.Latency.P90), FormatDuration(r.Latency.P99),
			FormatDuration(r.Latency.Max), r.outcomes())
	}
	_ = tw.Flush()
	return sb.String()
}

func (r *LoadReport) outcomes() string {
	var parts []string
	codes := make([]int, 0, len(r.Status))
	for c := range r.Status {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		parts = append(parts, strconv.Itoa(c)+"="+strconv.FormatInt(r.Status[c], 10))
	}
	vals := make([]string, 0, len(r.HeaderValues))
	for v := range r.HeaderValues {
		vals = append(vals, v)
	}
	sort.Strings(vals)
	for _, v := range vals {
		name := v
		if name == "" {
			name = "(none)"
		}
		parts = append(parts, r.CountHeader+":"+name+"="+strconv.FormatInt(r.HeaderValues[v], 10))
	}
	return strings.Join(parts, " ")
}

// FormatDuration prints a latency for reports: seconds, milliseconds with
// two decimals, or whole microseconds.
func FormatDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	}
}
