package clickhouselogger

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The ingest: an HTTP listener for APISIX's http-logger batches (the
// log-phase path). It answers POST /apisix/http-logger, decodes each batch
// (ingest_decode.go) and hands the rows to the same queue as the post-resp
// path, so batching, retries, the spool and the accounting are shared.
//
// Answers (APISIX's batch processor treats any status >= 400 as a failed
// batch and retries it only when max_retry_count > 0):
//   - 200: the batch was read; its entries were enqueued, or rejected one by
//     one (counted), or dropped because the queue was full (counted as
//     queue_full, like post-resp rows). A full queue is not refused: it means
//     ClickHouse has been unreachable for max_pending rows with the spool
//     off or full; a retry would only hold the entries in nginx's memory
//     (where past max_pending_entries APISIX discards new ones uncounted)
//     and send them again, while here each one is counted exactly;
//   - 400: malformed JSON, or every entry rejected; 401: wrong or missing
//     Authorization (auth_header); 404, 405: another path or method; 413:
//     body over max_body_bytes or more than max_entries entries; 415: a
//     Content-Type other than application/json or text/plain.
//
// Accounting: entries received (of batches that decoded) = entries
// enqueued + entries rejected (by reason). Enqueued entries are also in
// log_rows_enqueued_total, where enqueued = inserted + dropped + pending
// holds as for post-resp rows. A batch refused as a whole counts in
// log_ingest_batches_total only.

// Results of one batch (the result label of log_ingest_batches_total).
const (
	resOK             = "ok"
	resInvalidEntries = "invalid_entries"
	resMalformed      = "malformed"
	resTooLarge       = "too_large"
	resTooMany        = "too_many_entries"
	resUnauthorized   = "unauthorized"
	resUnsupported    = "unsupported_media_type"
	resBadMethod      = "method_not_allowed"
	resNotFound       = "not_found"
)

var batchResults = []string{resOK, resInvalidEntries, resMalformed, resTooLarge, resTooMany, resUnauthorized, resUnsupported, resBadMethod, resNotFound}

// ingestCounters are the ingest's accounting, read by /status and
// Prometheus at scrape time.
type ingestCounters struct {
	batches  [9]atomic.Uint64 // indexed like batchResults
	received atomic.Uint64
	enqueued atomic.Uint64
	rejected [2]atomic.Uint64 // indexed like rejectReasons
	sealedOK atomic.Uint64
	sealedNo atomic.Uint64
}

func (c *ingestCounters) batch(result string) {
	for i, r := range batchResults {
		if r == result {
			c.batches[i].Add(1)
			return
		}
	}
}

// ingestSlot is the scratch state of one batch being decoded. The slots
// also bound the batches decoded at once (and so the memory their bodies
// take: slots × max_body_bytes).
type ingestSlot struct {
	dec  *ingestDecoder
	body []byte
	rows []row
}

type ingest struct {
	l      *Logger
	cfg    IngestConfig
	auth   bool
	secret [sha256.Size]byte
	slots  chan *ingestSlot
	srv    *http.Server
	n      ingestCounters

	addr    atomic.Pointer[string] // the bound address, once bound
	stopped chan struct{}
	once    sync.Once
	served  chan struct{} // closed when the serving goroutine has ended
}

func newIngest(l *Logger) *ingest {
	in := &ingest{
		l:       l,
		cfg:     l.cfg.Ingest,
		stopped: make(chan struct{}),
		served:  make(chan struct{}),
	}
	if in.cfg.AuthHeader != "" {
		in.auth = true
		in.secret = sha256.Sum256([]byte(in.cfg.AuthHeader))
	}
	n := max(2, runtime.GOMAXPROCS(0))
	in.slots = make(chan *ingestSlot, n)
	for range n {
		in.slots <- &ingestSlot{dec: newIngestDecoder(&l.cfg)}
	}
	in.srv = &http.Server{
		Handler:           in,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(io.Discard, "", 0), // never a line per connection
	}
	l.deps.Metrics.MustRegister(newIngestCollector(in))
	return in
}

// start binds the listener in the background: with SO_REUSEPORT the new
// runner of an `apisix reload` binds while the old one still drains; if
// the port is held by a process that did not set it, binding is retried
// every 500ms (logged once) until the runner stops.
func (in *ingest) start(ctx context.Context) {
	go func() {
		defer close(in.served)
		logged := false
		for {
			ln, err := listenReusePort(ctx, in.cfg.Listen)
			if err == nil {
				a := ln.Addr().String()
				in.addr.Store(&a)
				in.l.deps.Log.Info("clickhouselogger: ingest listening", zap.String("addr", a), zap.String("path", IngestPath))
				if err := in.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					in.l.deps.Log.Error("clickhouselogger: ingest listener", zap.Error(err))
				}
				return
			}
			if !logged {
				in.l.deps.Log.Warn("clickhouselogger: ingest listener: bind failed, retrying", zap.String("addr", in.cfg.Listen), zap.Error(err))
				logged = true
			}
			select {
			case <-ctx.Done():
				return
			case <-in.stopped:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
}

// stop closes the listener and waits, within ctx and at most a second,
// for the batches being read to reach the queue.
func (in *ingest) stop(ctx context.Context) {
	in.once.Do(func() { close(in.stopped) })
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_ = in.srv.Shutdown(ctx)
}

func listenReusePort(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: reusePort}
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		// An ephemeral port (tests) has no successor to share it with, and
		// SO_REUSEPORT could join the group of another socket given the
		// same port.
		lc.Control = nil
	}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ingest listen: %w", err)
	}
	return ln, nil
}

// authorized compares the Authorization header with auth_header in
// constant time (hashes first, so the length does not leak either).
func (in *ingest) authorized(got string) bool {
	h := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(h[:], in.secret[:]) == 1
}

// refuse answers a batch refused as a whole. The body goes to APISIX's
// error.log: it names the problem, never the batch's content.
func (in *ingest) refuse(w http.ResponseWriter, result string, code int, msg string, err error) {
	in.n.batch(result)
	in.l.deps.Throttle.Warn("clickhouselogger:ingest:"+result, "clickhouselogger: ingest batch refused ("+result+")", err,
		zap.Int("status", code))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "{\"error\":%q}\n", msg)
}

func (in *ingest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != IngestPath {
		in.refuse(w, resNotFound, http.StatusNotFound, "not found: post batches to "+IngestPath, nil)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		in.refuse(w, resBadMethod, http.StatusMethodNotAllowed, "method not allowed: use POST", nil)
		return
	}
	if in.auth && !in.authorized(r.Header.Get("Authorization")) {
		in.refuse(w, resUnauthorized, http.StatusUnauthorized, "wrong or missing Authorization (clickhouse.ingest.auth_header)", nil)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && mt != "text/plain") {
			in.refuse(w, resUnsupported, http.StatusUnsupportedMediaType, "content type must be application/json or text/plain", nil)
			return
		}
	}
	limit := in.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		in.refuse(w, resTooLarge, http.StatusRequestEntityTooLarge, "body over clickhouse.ingest.max_body_bytes ("+strconv.FormatInt(limit, 10)+")", nil)
		return
	}
	var slot *ingestSlot
	select {
	case slot = <-in.slots:
	case <-r.Context().Done():
		return
	}
	defer func() { in.slots <- slot }()
	body, err := readBody(r.Body, r.ContentLength, limit, slot.body[:0])
	slot.body = body[:0]
	if errors.Is(err, errBodyTooLarge) {
		in.refuse(w, resTooLarge, http.StatusRequestEntityTooLarge, "body over clickhouse.ingest.max_body_bytes ("+strconv.FormatInt(limit, 10)+")", nil)
		return
	}
	if err != nil {
		in.refuse(w, resMalformed, http.StatusBadRequest, "cannot read the body", err)
		return
	}
	if cap(slot.body) > int(limit) {
		slot.body = nil
	}
	rows, st, err := slot.dec.decode(body, in.l.now().UnixMilli(), slot.rows[:0])
	defer func() {
		clear(rows) // the strings go with the queue's copies
		slot.rows = rows[:0]
	}()
	switch {
	case errors.Is(err, errTooMany):
		in.refuse(w, resTooMany, http.StatusRequestEntityTooLarge, "more entries than clickhouse.ingest.max_entries ("+strconv.Itoa(in.cfg.MaxEntries)+")", nil)
		return
	case err != nil:
		in.refuse(w, resMalformed, http.StatusBadRequest, err.Error(), err)
		return
	}
	in.n.received.Add(uint64(st.entries))
	for i, c := range st.rejected {
		in.n.rejected[i].Add(uint64(c))
	}
	in.n.sealedOK.Add(uint64(st.sealedOK))
	in.n.sealedNo.Add(uint64(st.sealedNo))
	if st.sealedNo > 0 {
		in.l.deps.Throttle.Warn("clickhouselogger:ingest:sealed", "clickhouselogger: ingest: sealed consumers this runner cannot open (sealed by another runner process, or forged): rows logged without consumer", nil,
			zap.Int("in_batch", st.sealedNo))
	}
	l := in.l
	var full, closed int
	if len(rows) > 0 {
		l.n.enqueued.Add(uint64(len(rows)))
		in.n.enqueued.Add(uint64(len(rows)))
		_, full, closed = l.q.pushMany(rows)
		if full > 0 {
			l.n.drop(reasonQueueFull, full)
		}
		if closed > 0 {
			l.n.drop(reasonShutdown, closed)
		}
	}
	rejected := st.rejectedTotal()
	if rejected > 0 {
		in.l.deps.Throttle.Warn("clickhouselogger:ingest:rejected", "clickhouselogger: ingest entries rejected (totals in apisix_edge_log_ingest_entries_rejected_total)", nil,
			zap.Int("invalid", st.rejected[0]), zap.Int("field_too_large", st.rejected[1]), zap.Int("batch_entries", st.entries))
	}
	if len(rows) == 0 && rejected > 0 {
		in.refuse(w, resInvalidEntries, http.StatusBadRequest, fmt.Sprintf("every entry rejected (%d invalid, %d with a field over max_field_bytes)", st.rejected[0], st.rejected[1]), nil)
		return
	}
	in.n.batch(resOK)
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, "{\"accepted\":%d,\"rejected\":%d,\"dropped\":%d}\n", len(rows)-full-closed, rejected, full+closed)
}

var errBodyTooLarge = errors.New("body too large")

// readBody reads the body (length bytes, or up to EOF when unknown) into
// buf, refusing more than limit bytes.
func readBody(r io.Reader, length, limit int64, buf []byte) ([]byte, error) {
	if length >= 0 {
		if int64(cap(buf)) < length {
			buf = make([]byte, 0, length)
		}
		buf = buf[:length]
		if _, err := io.ReadFull(r, buf); err != nil {
			return buf[:0], fmt.Errorf("read body: %w", err)
		}
		return buf, nil
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return buf[:0], errBodyTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf[:0], fmt.Errorf("read body: %w", err)
		}
	}
}

// bulkPush is the size of a push (an ingest batch) from which the queue's
// batch buffers are allocated at their full size at once.
const bulkPush = 512

// pushMany appends copies of rows under one lock, as push does for one,
// copying them by runs that fill a batch. It returns how many were queued,
// refused because max_pending rows are in memory, and refused because the
// queue is closed.
func (q *queue) pushMany(rows []row) (pushed, full, closed int) {
	signal := false
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, 0, len(rows)
	}
	// The room is read once: inMem grows only under q.mu (release lowers
	// it without the lock, which only makes more room).
	n := min(len(rows), max(0, q.max-int(q.inMem.Load())))
	full = len(rows) - n
	q.inMem.Add(int64(n))
	for rest := rows[:n]; len(rest) > 0; {
		k := len(q.batches)
		if k == 0 || len(q.batches[k-1]) >= q.batchSize {
			q.batches = append(q.batches, q.newBuf())
			k++
		}
		b := q.batches[k-1]
		if len(rows) >= bulkPush && cap(b) < q.batchSize {
			// A bulk push will fill the batch: one allocation of its full
			// size instead of append doubling it from 1024 rows, each time
			// copying every row (15% of the runner's CPU under ingest load,
			// profiled).
			b = slices.Grow(b, q.batchSize-len(b))
		}
		m := min(len(rest), q.batchSize-len(b))
		b = append(b, rest[:m]...)
		rest = rest[m:]
		q.batches[k-1] = b
		signal = signal || len(b) >= q.batchSize
		pushed += m
	}
	q.mu.Unlock()
	if signal {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return pushed, full, 0
}

// IngestAddr returns the address the ingest listener is bound to, "" while
// it is not (off, not started, or still retrying the bind).
func (l *Logger) IngestAddr() string {
	if l.in == nil {
		return ""
	}
	if a := l.in.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// IngestSnapshot is the ingest's entry in the logger's /status counters.
type IngestSnapshot struct {
	Listen  string            `json:"listen"`
	Batches map[string]uint64 `json:"batches"`
	// Received = Enqueued + the sum of Rejected.
	Received uint64            `json:"entries_received"`
	Enqueued uint64            `json:"entries_enqueued"`
	Rejected map[string]uint64 `json:"entries_rejected"`
	// SealedConsumers counts X-Edge-Log-Consumer values opened ("opened")
	// and those this runner could not open ("invalid").
	SealedConsumers map[string]uint64 `json:"sealed_consumers"`
}

func (in *ingest) snapshot() *IngestSnapshot {
	s := &IngestSnapshot{
		Listen:          in.cfg.Listen,
		Batches:         map[string]uint64{},
		Received:        in.n.received.Load(),
		Enqueued:        in.n.enqueued.Load(),
		Rejected:        map[string]uint64{},
		SealedConsumers: map[string]uint64{"opened": in.n.sealedOK.Load(), "invalid": in.n.sealedNo.Load()},
	}
	for i, r := range batchResults {
		s.Batches[r] = in.n.batches[i].Load()
	}
	for i, r := range rejectReasons {
		s.Rejected[r] = in.n.rejected[i].Load()
	}
	return s
}

// ingestCollector exports the ingest counters at scrape time.
type ingestCollector struct {
	in                                   *ingest
	batches, received, enqueued, rejects *prometheus.Desc
	sealed                               *prometheus.Desc
}

func newIngestCollector(in *ingest) *ingestCollector {
	return &ingestCollector{
		in:       in,
		batches:  prometheus.NewDesc(name("log_ingest_batches_total"), "http-logger batches posted to the ingest listener, by result: ok, invalid_entries, malformed, too_large, too_many_entries, unauthorized, unsupported_media_type, method_not_allowed, not_found.", []string{"result"}, nil),
		received: prometheus.NewDesc(name("log_ingest_entries_received_total"), "Entries of the ingest batches that decoded: enqueued + rejected.", nil, nil),
		enqueued: prometheus.NewDesc(name("log_ingest_entries_enqueued_total"), "Ingest entries handed to the queue (also in log_rows_enqueued_total).", nil, nil),
		rejects:  prometheus.NewDesc(name("log_ingest_entries_rejected_total"), "Ingest entries rejected, by reason: invalid, field_too_large.", []string{"reason"}, nil),
		sealed:   prometheus.NewDesc(name("log_ingest_sealed_consumers_total"), "Sealed consumers (X-Edge-Log-Consumer) in ingest entries, by result: opened, invalid (sealed by another runner process, or forged).", []string{"result"}, nil),
	}
}

func (c *ingestCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.batches, c.received, c.enqueued, c.rejects, c.sealed} {
		ch <- d
	}
}

func (c *ingestCollector) Collect(ch chan<- prometheus.Metric) {
	n := &c.in.n
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for i, r := range batchResults {
		counter(c.batches, n.batches[i].Load(), r)
	}
	counter(c.received, n.received.Load())
	counter(c.enqueued, n.enqueued.Load())
	for i, r := range rejectReasons {
		counter(c.rejects, n.rejected[i].Load(), r)
	}
	counter(c.sealed, n.sealedOK.Load(), "opened")
	counter(c.sealed, n.sealedNo.Load(), "invalid")
}
