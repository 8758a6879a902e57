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
	if opts.Concurrency <= 0 {
		opts.Concurrency = 1
	}
	if opts.Duration <= 0 && opts.Requests <= 0 {
		opts.Duration = 5 * time.Second
	}
	if opts.NewRequest == nil {
		def := &Request{Method: "GET", Path: "/"}
		opts.NewRequest = func(int, int) *Request { return def }
	}
	start := time.Now()
	var end time.Time
	if opts.Duration > 0 {
		end = start.Add(opts.Duration)
	}
	var next atomic.Int64
	stats := make([]*workerStats, opts.Concurrency)
	var wg sync.WaitGroup
	for w := 0; w < opts.Concurrency; w++ {
		ws := &workerStats{status: map[int]int64{}, hdr: map[string]int64{}, errKinds: map[string]int64{}}
		stats[w] = ws
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			loadWorker(ctx, &opts, w, ws, start, end, &next)
		}(w)
	}
	wg.Wait()
	rep := buildReport(&opts, stats, time.Since(start))
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("load: %w", err)
	}
	return rep, nil
}

func loadWorker(ctx context.Context, o *LoadOptions, w int, ws *workerStats, start, end time.Time, next *atomic.Int64) {
	var every time.Duration
	slot := start
	if o.Rate > 0 {
		every = time.Duration(float64(o.Concurrency) / o.Rate * float64(time.Second))
		// stagger the workers over one period so that they don't fire together
		slot = start.Add(every * time.Duration(w) / time.Duration(o.Concurrency))
	}
	for {
		if every > 0 {
			if d := time.Until(slot); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-o.Stop: // a nil channel never fires
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
		if o.Stop != nil {
			select {
			case <-o.Stop:
				return
			default:
			}
		}
		i := next.Add(1) - 1
		if o.Requests > 0 && i >= int64(o.Requests) {
			return
		}
		req := o.NewRequest(w, int(i))
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if o.RequestTimeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, o.RequestTimeout)
		}
		t0 := time.Now()
		res, err := o.Gateway.Do(rctx, o.Route, req)
		lat := time.Since(t0)
		cancel()
		if err != nil && ctx.Err() != nil {
			return // interrupted by the caller, not a result
		}
		if o.OnResult != nil {
			o.OnResult(LoadResult{Worker: w, Index: int(i), Request: req, Start: t0, Latency: lat, Result: res, Err: err})
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
	}
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
