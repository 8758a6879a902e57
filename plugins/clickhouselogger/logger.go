// Package clickhouselogger is the clickhouselogger plugin: in
// ext-plugin-post-resp it turns every request into an access-log row and
// inserts the rows into ClickHouse in batches, off the request path.
//
// Its contract: logging never slows down or breaks a request (the request
// path only copies a few values into a bounded queue and answers nothing),
// memory stays bounded whatever ClickHouse does (max_pending), and every row
// is accounted for as inserted, dropped with a reason, or pending (in memory
// or in the optional on-disk spool):
//
//	enqueued + spool rows inherited from an earlier runner
//	    = inserted + dropped + queue rows + spool rows
package clickhouselogger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apisix-edge/edge-runner/core"
)

// Name is the plugin name used in APISIX route confs.
const Name = "clickhouselogger"

// BackendName is the name of ClickHouse in /status and in
// apisix_edge_backend_state.
const BackendName = "clickhouse"

// compositeRetry is how long the logger stops asking for the composite
// variable after APISIX answered it with no value (not defined).
const compositeRetry = time.Minute

// Logger is the clickhouselogger module. Build it with New; the runner
// calls Start, then ParseConf and ResponseFilter from many goroutines, then
// Shutdown.
type Logger struct {
	cfg  Config
	deps core.Deps
	now  func() time.Time

	composite string // "" when off
	// vars are the nginx variables of the request fields, indexed by the
	// c constants.
	vars [numFields]string

	// compositeRetryAt is the Unix ns before which the composite variable
	// is not asked for (APISIX did not define it).
	compositeRetryAt atomic.Int64

	q       *queue
	n       counters
	m       *metrics
	spool   atomic.Pointer[spool]
	backend *core.Backend

	started  atomic.Bool
	stop     chan struct{} // closed by Shutdown
	stopOnce sync.Once
	done     chan struct{} // closed when the flusher has drained and exited
	// drainBy is the Unix ns by which the shutdown flush must end.
	drainBy atomic.Int64
	// hard is canceled at drainBy: it bounds every insert, so one stuck on
	// a frozen server cannot outlive the shutdown.
	hard       context.Context
	hardCancel context.CancelFunc

	fl flusher // the flusher goroutine's own state

	in *ingest // the http-logger listener (ingest.go); nil when off
}

var _ core.Module = (*Logger)(nil)

// New builds the logger from the runner config and deps, every field of
// which must be set (as the server builds them). It dials nothing: the
// flusher connects in the background after Start.
func New(cfg Config, deps core.Deps) *Logger {
	l := &Logger{
		cfg:  cfg,
		deps: deps,
		now:  time.Now,
		vars: requestVars(cfg.TenantVar()),
		q:    newQueue(cfg.MaxPending, cfg.BatchSize),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if cfg.CompositeEnabled() {
		l.composite = cfg.CompositeVar
	}
	l.hard, l.hardCancel = context.WithCancel(context.Background())
	l.m = newMetrics(deps.Metrics, l)
	if cfg.Ingest.Enabled() {
		l.in = newIngest(l)
	}
	l.backend = deps.Status.Backend(BackendName)
	deps.Status.Plugin(Name, func() any { return l.Snapshot() })
	return l
}

// Name implements plugin.Plugin.
func (l *Logger) Name() string { return Name }

// FailPolicy implements core.Module: a logger only observes, so a request
// it cannot handle goes on unlogged.
func (l *Logger) FailPolicy() core.FailPolicy { return core.FailOpen }

// ParseConf implements plugin.Plugin.
func (l *Logger) ParseConf(in []byte) (any, error) {
	c, err := parseConf(in)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks a route conf exactly as ParseConf does (for `go-runner
// validate`).
func Validate(in []byte) error {
	_, err := parseConf(in)
	return err
}

// RequestFilter implements plugin.Plugin. The logger works in
// ext-plugin-post-resp only, where it sees the response; in a request phase
// it does nothing (and touches nothing), and says so in the log.
func (l *Logger) RequestFilter(_ any, _ http.ResponseWriter, _ pkgHTTP.Request) {
	l.deps.Throttle.Warn("clickhouselogger:phase",
		"clickhouselogger is configured in ext-plugin-pre-req or ext-plugin-post-req: it logs only in ext-plugin-post-resp", nil)
}

// varSource is what the logger asks APISIX through: the framework's
// response (each Var is an ExtraInfo round trip).
type varSource interface {
	Var(name string) ([]byte, error)
}

// ResponseFilter implements plugin.Plugin: it builds the row and enqueues
// it. It answers nothing: it never writes, never sets the status and never
// calls the response's Header(), so APISIX forwards the upstream response
// untouched.
func (l *Logger) ResponseFilter(conf any, w pkgHTTP.Response) {
	c, ok := conf.(*routeConf)
	if !ok || w == nil {
		return
	}
	if c.ratio < 1 && (c.ratio <= 0 || rand.Float64() >= c.ratio) {
		l.n.sampledOut.Add(1)
		return
	}
	l.n.enqueued.Add(1)
	if l.q.full() {
		// Dropped anyway: ask APISIX for nothing.
		l.n.drop(reasonQueueFull, 1)
		return
	}
	var r row
	now := l.now()
	r.tsMilli = now.UnixMilli()
	r.table = c.table
	if s := w.StatusCode(); s > 0 && s < 65536 {
		r.status = uint16(s)
	}
	l.fill(w, c, &r, now)
	if len(c.respNames) > 0 {
		r.respNames = c.respNames
		r.respValues, _ = respHeaderValues(w, c.respNames, l.cfg.MaxValueBytes)
	}
	l.enqueue(&r)
}

// enqueue hands a finished row to the queue; it never blocks.
func (l *Logger) enqueue(r *row) {
	switch l.q.push(r) {
	case pushFull:
		l.n.drop(reasonQueueFull, 1)
	case pushClosed:
		l.n.drop(reasonShutdown, 1)
	}
}

// fill asks APISIX for the request fields: the composite variable when it is
// defined, else one variable per field; then the route id and the extra
// request headers. A failed round trip (APISIX closed the connection) ends
// the questions; the row keeps what it has.
func (l *Logger) fill(v varSource, c *routeConf, r *row, now time.Time) {
	haveFields := false
	if l.composite != "" && now.UnixNano() >= l.compositeRetryAt.Load() {
		b, err := v.Var(l.composite)
		if err != nil {
			return
		}
		switch {
		case parseComposite(string(b), r, l.cfg.MaxValueBytes):
			haveFields = true
		case len(b) == 0:
			// Not defined in APISIX's nginx config: stop asking for a while.
			l.compositeRetryAt.Store(now.Add(compositeRetry).UnixNano())
			l.n.compositeMisses.Add(1)
		default:
			// Malformed (a separator inside a value): this request only.
			l.n.compositeMisses.Add(1)
		}
	}
	if !haveFields && !l.fillSingles(v, r) {
		return
	}
	if c.routeID != "" {
		r.routeID = c.routeID
	} else {
		b, err := v.Var("route_id")
		if err != nil {
			return
		}
		r.routeID = boundBytes(b, l.cfg.MaxValueBytes)
	}
	if len(c.reqVars) > 0 {
		r.reqNames = c.reqNames
		r.reqValues = make([]string, len(c.reqVars))
		for i, name := range c.reqVars {
			b, err := v.Var(name)
			if err != nil {
				return
			}
			r.reqValues[i] = boundBytes(b, l.cfg.MaxValueBytes)
		}
	}
}

// fillSingles asks for each request field on its own, in index order
// (request_id only when X-Request-Id is empty). It reports false when a
// round trip failed; the row keeps the fields answered before.
func (l *Logger) fillSingles(v varSource, r *row) bool {
	for i, name := range l.vars {
		if i == cRequestID && r.requestID != "" {
			continue
		}
		b, err := v.Var(name)
		if err != nil {
			if i <= cXRequestID {
				// A row keeps its latency only once the fields up to
				// X-Request-Id are in (unchanged behaviour).
				r.latencyMs = 0
			}
			return false
		}
		r.setField(i, boundBytes(b, l.cfg.MaxValueBytes), l.cfg.MaxValueBytes)
	}
	return true
}

// boundBytes converts at most max bytes of b (cut at a UTF-8 boundary).
func boundBytes(b []byte, max int) string {
	if len(b) <= max {
		return string(b)
	}
	return bound(string(b[:max+1]), max)
}

// Start implements core.Module: it starts the flusher, which opens the spool
// and connects in the background. It returns at once.
func (l *Logger) Start(ctx context.Context) {
	if l.started.Swap(true) {
		return
	}
	go l.run(ctx)
	if l.in != nil {
		l.in.start(ctx)
	}
}

// Shutdown implements core.Module: it stops accepting rows and flushes what
// is pending within clickhouse.shutdown_flush (and ctx). Rows that could not
// be inserted by then are spooled if the spool is on, else dropped and
// counted (reason shutdown).
func (l *Logger) Shutdown(ctx context.Context) error {
	if l.in != nil {
		// First the ingest: the batches being read reach the queue before
		// it closes.
		l.in.stop(ctx)
	}
	l.q.close()
	by := time.Now().Add(l.cfg.ShutdownFlush.D())
	if dl, ok := ctx.Deadline(); ok && dl.Add(-250*time.Millisecond).Before(by) {
		by = dl.Add(-250 * time.Millisecond)
	}
	l.drainBy.Store(by.UnixNano())
	l.stopOnce.Do(func() { close(l.stop) })
	if !l.started.Load() {
		l.hardCancel()
		return nil
	}
	t := time.AfterFunc(time.Until(by), l.hardCancel)
	defer t.Stop()
	defer l.hardCancel()
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("clickhouselogger shutdown: %w", ctx.Err())
	}
}

// Snapshot is the logger's entry in /status "plugins".
type Snapshot struct {
	Enqueued   uint64            `json:"enqueued"`
	Inserted   uint64            `json:"inserted"`
	Dropped    map[string]uint64 `json:"dropped"`
	SampledOut uint64            `json:"sampled_out"`
	Spooled    uint64            `json:"spooled"`
	Replayed   uint64            `json:"replayed"`
	// QueueRows are pending in memory; SpoolRows pending on disk.
	QueueRows int64 `json:"queue_rows"`
	SpoolRows int64 `json:"spool_rows"`
	// SpoolInherited are spool rows this runner found rather than wrote:
	// the accounting identity is enqueued + spool_inherited = inserted +
	// dropped + queue_rows + spool_rows.
	SpoolInherited int64 `json:"spool_inherited"`
	// CompositeMisses counts requests whose composite variable was absent
	// or malformed (fields were then fetched one by one).
	CompositeMisses uint64 `json:"composite_misses"`
	// Ingest are the counters of the http-logger listener; absent when it
	// is off.
	Ingest *IngestSnapshot `json:"ingest,omitempty"`
}

// Snapshot returns the counters. Read while traffic flows, the identity may
// be off by the rows in flight on the request path.
func (l *Logger) Snapshot() Snapshot {
	s := Snapshot{
		Enqueued:        l.n.enqueued.Load(),
		Inserted:        l.n.inserted.Load(),
		Dropped:         map[string]uint64{},
		SampledOut:      l.n.sampledOut.Load(),
		Spooled:         l.n.spooled.Load(),
		Replayed:        l.n.replayed.Load(),
		QueueRows:       l.q.rows(),
		CompositeMisses: l.n.compositeMisses.Load(),
	}
	for i, r := range dropReasons {
		s.Dropped[r] = l.n.dropped[i].Load()
	}
	if sp := l.spool.Load(); sp != nil {
		s.SpoolRows = sp.rows.Load()
		s.SpoolInherited = sp.inherited.Load()
	}
	if l.in != nil {
		s.Ingest = l.in.snapshot()
	}
	return s
}
