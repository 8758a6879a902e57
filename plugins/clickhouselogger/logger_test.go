package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// testResponse stands in for the framework's response object: the raw
// HTTPRespCall in a field "r" (where the accessor looks), variables answered
// from a map. Any call that would change the response is recorded.
type testResponse struct {
	r       *hrc.Req
	vars    map[string]string
	asked   []string
	changed []string
	failVar bool
}

var _ pkgHTTP.Response = (*testResponse)(nil)

func (w *testResponse) ID() uint32      { return w.r.Id() }
func (w *testResponse) StatusCode() int { return int(w.r.Status()) }
func (w *testResponse) Header() pkgHTTP.Header {
	w.changed = append(w.changed, "Header")
	return nil
}
func (w *testResponse) Var(name string) ([]byte, error) {
	w.asked = append(w.asked, name)
	if w.failVar {
		return nil, fmt.Errorf("connection closed")
	}
	if v, ok := w.vars[name]; ok {
		return []byte(v), nil
	}
	return nil, nil
}
func (w *testResponse) ReadBody() ([]byte, error) { return nil, nil }

// VisitHeaders reads the response headers read-only, as the runner's
// server's responses do (core.ResponseHeaderVisitor).
func (w *testResponse) VisitHeaders(fn func(name, value []byte)) { (&visitor{w.r}).VisitHeaders(fn) }
func (w *testResponse) Write(b []byte) (int, error) {
	w.changed = append(w.changed, "Write")
	return len(b), nil
}
func (w *testResponse) WriteHeader(int) { w.changed = append(w.changed, "WriteHeader") }

func newTestResponse(i int) *testResponse {
	return &testResponse{
		r: respCall(uint16(200+i%3), [][2]string{{"Content-Type", "application/json"}, {"X-Upstream", fmt.Sprint("u", i)}}),
		vars: map[string]string{
			"edge_log_fields": composite(fmt.Sprintf("0.%03d", i%1000), "GET", "api.example.com", fmt.Sprint("/items/", i),
				"192.0.2.7", "ua/1", fmt.Sprint("req-", i), "", "acme", "alice"),
			"route_id": "r7",
			"http_x_a": "va",
		},
	}
}

// testConfig is a runner config section with the defaults applied.
func testConfig(t testing.TB, yaml string) Config {
	t.Helper()
	var doc struct {
		C Config `yaml:"clickhouse"`
	}
	if err := core.DecodeYAML([]byte("clickhouse:\n"+yaml), nil, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(yaml, "ingest:") {
		doc.C.Ingest.Listen = "off" // tests that want the listener say so
	}
	doc.C.ApplyDefaults()
	if err := errors.Join(doc.C.Validate()...); err != nil {
		t.Fatal(err)
	}
	return doc.C
}

func newTestLogger(t testing.TB, cfg Config) (*Logger, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l := New(cfg, core.Deps{Log: zap.NewNop(), Throttle: core.NewLogThrottle(zap.NewNop(), time.Minute), Metrics: reg, Status: core.NewStatus("test", nil)})
	return l, reg
}

func startCH(t testing.TB) *backing.ClickHouse {
	t.Helper()
	backing.MustRequire(t, backing.ClickHouseServer)
	return backing.MustClickHouse(t, backing.ClickHouseOptions{})
}

func shutdown(t testing.TB, l *Logger) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkIdentity asserts enqueued + inherited = inserted + dropped + pending.
func checkIdentity(t testing.TB, l *Logger) Snapshot {
	t.Helper()
	s := l.Snapshot()
	var dropped uint64
	for _, v := range s.Dropped {
		dropped += v
	}
	if int64(s.Enqueued)+s.SpoolInherited != int64(s.Inserted+dropped)+s.QueueRows+s.SpoolRows {
		t.Errorf("identity broken: %+v", s)
	}
	return s
}

// TestLoggerEndToEnd: rows built on the request path land in a table the
// logger created, with the values the response and APISIX gave, and the
// response is never changed.
func TestLoggerEndToEnd(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 50\n  flush_interval: 50ms\n", ch.NativeAddr()))
	l, reg := newTestLogger(t, cfg)
	fixed := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	l.now = func() time.Time { return fixed }
	l.Start(context.Background())
	conf, err := l.ParseConf([]byte(`{"req_headers":["X-A"],"resp_headers":["X-Upstream","X-None"]}`))
	if err != nil {
		t.Fatal(err)
	}
	const n = 120
	for i := 0; i < n; i++ {
		w := newTestResponse(i)
		l.ResponseFilter(conf, w)
		if len(w.changed) > 0 {
			t.Fatalf("request %d: the logger called %v on the response", i, w.changed)
		}
		if got := strings.Join(w.asked, ","); got != "edge_log_fields,route_id,http_x_a" {
			t.Fatalf("request %d: asked APISIX for %s, want the composite, route_id and the header", i, got)
		}
	}
	waitFor(t, "rows", func() bool { return l.Snapshot().Inserted == n })
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var ts time.Time
	var route, path, tenant, consumer string
	var status uint16
	var lat uint32
	var reqV, respN, respV []string
	err = conn.QueryRow(context.Background(), "SELECT ts, route_id, path, tenant, consumer, status, latency_ms, req_header_values, resp_header_names, resp_header_values "+
		"FROM edge_access_log WHERE request_id = 'req-7'").Scan(&ts, &route, &path, &tenant, &consumer, &status, &lat, &reqV, &respN, &respV)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(ts.UTC(), route, path, tenant, consumer, status, lat, reqV, respN, respV)
	want := fmt.Sprint(fixed, "r7", "/items/7", "acme", "alice", 201, 7, []string{"va"}, []string{"x-upstream", "x-none"}, []string{"u7", ""})
	if got != want {
		t.Errorf("row req-7:\n got %s\nwant %s", got, want)
	}
	if cnt := testutil.CollectAndCount(reg, "apisix_edge_log_batch_seconds"); cnt != 2 {
		t.Errorf("got %d batch_seconds series, want 2 (ok, error)", cnt)
	}
	shutdown(t, l)
	if s := checkIdentity(t, l); s.Dropped[reasonShutdown] != 0 {
		t.Errorf("got %+v, want nothing dropped", s)
	}
}

// TestLoggerRequestPathNeverWaits: with the server unreachable and the
// queue at its cap, the request path returns without asking APISIX for
// anything, and drops are counted.
func TestLoggerRequestPathNeverWaits(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "  addrs: [\"127.0.0.1:1\"]\n  batch_size: 10\n  max_pending: 20\n  flush_interval: 1h\n")
	l, _ := newTestLogger(t, cfg)
	conf, _ := l.ParseConf([]byte(`{}`))
	for i := 0; i < 50; i++ {
		w := newTestResponse(i)
		l.ResponseFilter(conf, w)
		if i >= 20 && len(w.asked) != 0 {
			t.Fatalf("request %d: asked %v with the queue full, want nothing", i, w.asked)
		}
	}
	s := checkIdentity(t, l)
	if s.Enqueued != 50 || s.QueueRows != 20 || s.Dropped[reasonQueueFull] != 30 {
		t.Errorf("got %+v, want 50 enqueued, 20 pending, 30 queue_full", s)
	}
	shutdown(t, l) // never started: returns at once
	if s := checkIdentity(t, l); s.QueueRows != 20 {
		t.Errorf("got %+v after a shutdown without start", s)
	}
}

// TestLoggerSampling: sample_ratio 0 logs nothing; 0.5 about half, and
// sampled-out requests ask APISIX for nothing.
func TestLoggerSampling(t *testing.T) {
	t.Parallel()
	l, _ := newTestLogger(t, testConfig(t, "  addrs: [\"127.0.0.1:1\"]\n  max_pending: 100000\n"))
	none, _ := l.ParseConf([]byte(`{"sample_ratio":0}`))
	half, _ := l.ParseConf([]byte(`{"sample_ratio":0.5}`))
	var asked atomic.Int64
	for i := 0; i < 1000; i++ {
		w := newTestResponse(i)
		l.ResponseFilter(none, w)
		asked.Add(int64(len(w.asked)))
	}
	if s := l.Snapshot(); s.Enqueued != 0 || s.SampledOut != 1000 || asked.Load() != 0 {
		t.Fatalf("ratio 0: got %+v and %d questions, want all sampled out, none asked", s, asked.Load())
	}
	for i := 0; i < 4000; i++ {
		l.ResponseFilter(half, newTestResponse(i))
	}
	s := l.Snapshot()
	if s.Enqueued < 1700 || s.Enqueued > 2300 || s.Enqueued+s.SampledOut != 5000 {
		t.Errorf("ratio 0.5: got %d enqueued of 4000 (sampled out %d in all), want about 2000", s.Enqueued, s.SampledOut)
	}
}

// TestLoggerCompositeFallback: when APISIX does not define the composite
// variable, the row is built from single variables and the composite is not
// asked again until compositeRetry has passed; a failed round trip ends the
// questions but keeps the row.
func TestLoggerCompositeFallback(t *testing.T) {
	t.Parallel()
	l, _ := newTestLogger(t, testConfig(t, "  addrs: [\"127.0.0.1:1\"]\n"))
	now := time.Unix(1700000000, 0)
	l.now = func() time.Time { return now }
	conf, _ := l.ParseConf([]byte(`{"route_id":"fixed"}`))
	singles := map[string]string{"request_time": "0.250", "request_method": "PATCH", "host": "h", "uri": "/u",
		"remote_addr": "198.51.100.1", "http_user_agent": "ua", "request_id": "rid", "http_x_tenant_id": "t", "http_x_edge_consumer": "c"}
	w := &testResponse{r: respCall(204, nil), vars: singles}
	l.ResponseFilter(conf, w)
	want := "edge_log_fields,request_time,request_method,host,uri,remote_addr,http_user_agent,http_x_request_id,request_id,http_x_tenant_id,http_x_edge_consumer"
	if got := strings.Join(w.asked, ","); got != want {
		t.Errorf("first request asked %s, want %s", got, want)
	}
	w = &testResponse{r: respCall(204, nil), vars: singles}
	l.ResponseFilter(conf, w)
	if w.asked[0] == "edge_log_fields" {
		t.Errorf("second request asked for the composite again within %v", compositeRetry)
	}
	now = now.Add(compositeRetry)
	w = &testResponse{r: respCall(204, nil), vars: singles}
	l.ResponseFilter(conf, w)
	if w.asked[0] != "edge_log_fields" {
		t.Errorf("after %v: asked %v first, want the composite again", compositeRetry, w.asked[0])
	}
	b := l.q.pop(true)
	r := b[0]
	if r.method != "PATCH" || r.latencyMs != 250 || r.requestID != "rid" || r.routeID != "fixed" || r.status != 204 || r.tenant != "t" {
		t.Errorf("got row %+v from single variables", r)
	}
	l.q.release(b)
	w = &testResponse{r: respCall(200, nil), failVar: true}
	l.ResponseFilter(conf, w)
	if len(w.asked) != 1 {
		t.Errorf("asked %v after a failed round trip, want to stop at once", w.asked)
	}
	if s := l.Snapshot(); s.Enqueued != 4 || s.QueueRows != 1 || s.CompositeMisses != 2 {
		t.Errorf("got %+v, want 4 enqueued (the row of the failed round trip kept) and 2 composite misses", s)
	}
}

// TestLoggerRetriesThenDrops: with the server down and no spool, a batch
// is tried max_attempts times and dropped (insert_failed); the identity
// holds; when the server is back, logging resumes by itself.
func TestLoggerRetriesThenDrops(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 10\n  flush_interval: 20ms\n  dial_timeout: 200ms\n"+
		"  retries: {max_attempts: 3, backoff: 10ms, max_backoff: 40ms}\n", ch.NativeAddr()))
	l, _ := newTestLogger(t, cfg)
	l.Start(context.Background())
	defer shutdown(t, l)
	conf, _ := l.ParseConf([]byte(`{}`))
	l.ResponseFilter(conf, newTestResponse(0))
	waitFor(t, "first row", func() bool { return l.Snapshot().Inserted == 1 })
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitFor(t, "the batch dropped", func() bool { return l.Snapshot().Dropped[reasonInsertFailed] == 10 })
	if got := testutil.CollectAndCount(l.m.batch); got != 2 {
		t.Errorf("got %d histogram series, want 2", got)
	}
	if l.backend.State() != core.StateDown {
		t.Errorf("got backend %s, want down", l.backend.State())
	}
	if err := ch.Restart(); err != nil {
		t.Fatal(err)
	}
	for i := 11; i <= 15; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitFor(t, "rows after restart", func() bool { return l.Snapshot().Inserted == 6 })
	if l.backend.State() != core.StateOK {
		t.Errorf("got backend %s after recovery, want ok", l.backend.State())
	}
	checkIdentity(t, l)
}

// TestLoggerSpoolReplay: spool on, server down: batches go to disk; back
// up: replayed oldest first; a runner on the same directory afterwards finds
// nothing left.
func TestLoggerSpoolReplay(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	dir := filepath.Join(t.TempDir(), "spool")
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 7\n  flush_interval: 20ms\n  dial_timeout: 200ms\n"+
		"  retries: {max_attempts: 2, backoff: 10ms, max_backoff: 50ms}\n  spool: {enabled: true, dir: %s}\n", ch.NativeAddr(), dir))
	l, _ := newTestLogger(t, cfg)
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitFor(t, "rows spooled", func() bool { s := l.Snapshot(); return s.Spooled == 40 && s.QueueRows == 0 })
	if s := checkIdentity(t, l); s.SpoolRows != 40 {
		t.Errorf("got %+v, want 40 rows in the spool", s)
	}
	if err := ch.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replay", func() bool { return l.Snapshot().Replayed == 40 })
	shutdown(t, l)
	if s := checkIdentity(t, l); s.Inserted != 40 || s.SpoolRows != 0 {
		t.Errorf("got %+v, want 40 inserted and an empty spool", s)
	}
	n, err := ch.Count(context.Background(), "edge_access_log")
	if err != nil || n != 40 {
		t.Errorf("got %d rows (%v), want 40", n, err)
	}
}

// TestLoggerShutdownSpoolsWhenDown: SIGTERM while the server is down and
// the spool is on: pending rows go to the spool, not lost.
func TestLoggerShutdownSpoolsWhenDown(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "spool")
	cfg := testConfig(t, fmt.Sprintf("  addrs: [\"127.0.0.1:1\"]\n  dial_timeout: 100ms\n  flush_interval: 1h\n  shutdown_flush: 500ms\n  spool: {enabled: true, dir: %s}\n", dir))
	l, _ := newTestLogger(t, cfg)
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	for i := 0; i < 25; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	shutdown(t, l)
	s := checkIdentity(t, l)
	if s.Spooled != 25 || s.SpoolRows != 25 || s.Dropped[reasonShutdown] != 0 {
		t.Errorf("got %+v, want the 25 rows spooled", s)
	}
	l.ResponseFilter(conf, newTestResponse(99))
	if s := l.Snapshot(); s.Dropped[reasonShutdown] != 1 {
		t.Errorf("a row after shutdown: got %+v, want it dropped as shutdown", s)
	}
}

func BenchmarkEnqueue(b *testing.B) {
	q := newQueue(1<<20, 10000)
	r := row{tsMilli: 1, status: 200, routeID: "r", method: "GET", host: "h", path: "/p", clientIP: "ip", userAgent: "ua", requestID: "id"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		q.push(&r)
		if i++; i == 10000 {
			// the flusher's part, amortized: take and release the batch
			q.release(q.pop(true))
			i = 0
		}
	}
}

func BenchmarkEnqueueParallel(b *testing.B) {
	q := newQueue(1<<30, 10000)
	go func() {
		for {
			select {
			case <-q.ready:
				for bt := q.pop(false); bt != nil; bt = q.pop(false) {
					q.release(bt)
				}
			case <-b.Context().Done():
				return
			}
		}
	}()
	r := row{tsMilli: 1, status: 200, routeID: "r", method: "GET", host: "h", path: "/p", clientIP: "ip", userAgent: "ua", requestID: "id"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		rr := r
		for pb.Next() {
			q.push(&rr)
		}
	})
}

// BenchmarkResponseFilter is the whole request-path cost of the logger
// except the ExtraInfo round trips themselves: sampling, the composite
// parse, the response headers and the enqueue.
func BenchmarkResponseFilter(b *testing.B) {
	l, _ := newTestLogger(b, testConfig(b, "  addrs: [\"127.0.0.1:1\"]\n  batch_size: 10000\n  max_pending: 1000000\n"))
	conf, _ := l.ParseConf([]byte(`{"resp_headers":["X-Upstream"]}`))
	w := newTestResponse(1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		w.asked = w.asked[:0]
		l.ResponseFilter(conf, w)
		if i++; i == 10000 {
			l.q.release(l.q.pop(true))
			i = 0
		}
	}
}

// BenchmarkInsert measures batch inserts into a real clickhouse-server:
// rows/s with the default batch size, compression on. cpu-ns/row is this
// process's CPU (the column encoding, the compression, the send) per row.
func BenchmarkInsert(b *testing.B) {
	benchInsert(b, func(cfg Config) []row { return testRows(cfg.BatchSize, time.Now().UnixMilli(), "bench") })
}

// BenchmarkInsertIngest is BenchmarkInsert with the rows of the ingest:
// default http-logger entries as the decoder reads them.
func BenchmarkInsertIngest(b *testing.B) {
	benchInsert(b, func(cfg Config) []row {
		d := newIngestDecoder(&cfg)
		var rows []row
		for k := 0; len(rows) < cfg.BatchSize; k++ {
			var err error
			if rows, _, err = d.decode(defaultBatch(b, 1000, fmt.Sprintf("b%d", k)), time.Now().UnixMilli(), rows); err != nil {
				b.Fatal(err)
			}
		}
		return rows[:cfg.BatchSize]
	})
}

func benchInsert(b *testing.B, rowsOf func(Config) []row) {
	ch := startCH(b)
	cfg := testConfig(b, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n", ch.NativeAddr()))
	c, err := newClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	rows := rowsOf(cfg)
	ctx := context.Background()
	if err := c.insert(ctx, cfg.Table, rows); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := time.Now()
	cpu0 := cpuTime()
	n := 0
	for b.Loop() {
		if err := c.insert(ctx, cfg.Table, rows); err != nil {
			b.Fatal(err)
		}
		n += len(rows)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "rows/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(n), "cpu-ns/row")
}

// TestShippedSchema: conf/clickhouse-schema.sql creates a table on this
// server (18.16 in CI) that the logger inserts into, and it has the columns
// of create_table's DDL.
func TestShippedSchema(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	ddl, err := os.ReadFile("../../conf/clickhouse-schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ch.Exec(ctx, string(ddl)); err != nil {
		t.Fatalf("shipped DDL: %v", err)
	}
	if err := ch.Exec(ctx, strings.Replace(createTableSQL("default", "by_logger", false, nil), "IF NOT EXISTS", "", 1)); err != nil {
		t.Fatalf("create_table DDL: %v", err)
	}
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cols := func(table string) string {
		var out []string
		rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = 'default' AND table = '"+table+"' ORDER BY name")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var n, ty string
			if err := rows.Scan(&n, &ty); err != nil {
				t.Fatal(err)
			}
			out = append(out, n+" "+ty)
		}
		return strings.Join(out, ", ")
	}
	if a, b := cols("edge_access_log"), cols("by_logger"); a != b || a == "" {
		t.Errorf("shipped schema columns\n%s\ndiffer from create_table's\n%s", a, b)
	}
	c, err := newClient(testConfig(t, fmt.Sprintf("  addrs: [%q]\n", ch.NativeAddr())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.insert(ctx, "edge_access_log", testRows(10, time.Now().UnixMilli(), "s")); err != nil {
		t.Fatalf("insert into the shipped schema: %v", err)
	}
	if n, err := ch.Count(ctx, "edge_access_log"); err != nil || n != 10 {
		t.Errorf("got %d rows (%v), want 10", n, err)
	}
}

// TestLoggerMissingTable: without create_table and without the table, the
// server refuses the rows: one attempt per batch (no pointless retries),
// rows dropped as insert_failed, the backend degraded (it answers), the
// error naming the table.
func TestLoggerMissingTable(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  table: no_such_table\n  batch_size: 10\n  flush_interval: 20ms\n"+
		"  retries: {max_attempts: 5, backoff: 10ms, max_backoff: 20ms}\n", ch.NativeAddr()))
	l, reg := newTestLogger(t, cfg)
	l.Start(context.Background())
	defer shutdown(t, l)
	conf, _ := l.ParseConf([]byte(`{}`))
	for i := 0; i < 10; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitFor(t, "the batch dropped", func() bool { return l.Snapshot().Dropped[reasonInsertFailed] == 10 })
	if l.backend.State() != core.StateDegraded {
		t.Errorf("got backend %s, want degraded", l.backend.State())
	}
	snap := l.deps.Status.Snapshot().Backends[BackendName]
	if !strings.Contains(snap.LastError, "no_such_table") {
		t.Errorf("got last error %q, want it to name the table", snap.LastError)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "apisix_edge_log_batch_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "error" && m.GetHistogram().GetSampleCount() != 1 {
				t.Errorf("got %d failed inserts, want 1 (a refused batch is not retried)", m.GetHistogram().GetSampleCount())
			}
		}
	}
}

// TestLoggerRecreatesDroppedTable: with create_table, a table dropped by
// hand costs one batch (refused, counted) and is created again.
func TestLoggerRecreatesDroppedTable(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 5\n  flush_interval: 20ms\n", ch.NativeAddr()))
	l, _ := newTestLogger(t, cfg)
	l.Start(context.Background())
	defer shutdown(t, l)
	conf, _ := l.ParseConf([]byte(`{}`))
	send := func(from int) {
		for i := from; i < from+5; i++ {
			l.ResponseFilter(conf, newTestResponse(i))
		}
	}
	send(0)
	waitFor(t, "first batch", func() bool { return l.Snapshot().Inserted == 5 })
	if err := ch.Exec(context.Background(), "DROP TABLE edge_access_log"); err != nil {
		t.Fatal(err)
	}
	send(5)
	// under load the flush interval can cut these five rows into two
	// batches: the first is refused, the table is created again before
	// the second
	waitFor(t, "the refused batch", func() bool {
		s := l.Snapshot()
		return s.Inserted-5+s.Dropped[reasonInsertFailed] == 5
	})
	dropped := l.Snapshot().Dropped[reasonInsertFailed]
	if dropped == 0 {
		t.Fatalf("got no row dropped after the table was dropped, want the next batch refused")
	}
	send(10)
	waitFor(t, "the table back", func() bool { return l.Snapshot().Inserted == 15-dropped })
	if n, err := ch.Count(context.Background(), "edge_access_log"); err != nil || n != uint64(10-dropped) {
		t.Errorf("got %d rows (%v) in the new table, want %d", n, err, 10-dropped)
	}
	checkIdentity(t, l)
}

// TestInsertBatchesExact: batches of different sizes, one after the other
// on the same client, land exactly (nothing of a larger batch before, the
// header lists in place), and after an insert cut by read_timeout (the
// server frozen) the next batch lands.
func TestInsertBatchesExact(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  read_timeout: 1s\n  dial_timeout: 1s\n", ch.NativeAddr()))
	c, err := newClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	ctx := context.Background()
	want := map[string]string{} // request_id -> the row's path and header lists
	insert := func(rows []row) error {
		err := c.insert(ctx, cfg.Table, rows)
		if err == nil {
			for _, r := range rows {
				want[r.requestID] = fmt.Sprint(r.path, nonNil(r.reqValues), nonNil(r.respNames), nonNil(r.respValues))
			}
		}
		return err
	}
	check := func(when string) {
		t.Helper()
		conn, err := ch.Conn()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		rs, err := conn.Query(ctx, "SELECT request_id, path, req_header_values, resp_header_names, resp_header_values FROM edge_access_log")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		got := map[string]string{}
		for rs.Next() {
			var id, path string
			var a, b, c []string
			if err := rs.Scan(&id, &path, &a, &b, &c); err != nil {
				t.Fatal(err)
			}
			if _, dup := got[id]; dup {
				t.Errorf("%s: request_id %s twice", when, id)
			}
			if strings.HasPrefix(id, "frozen-") {
				// the batch of the insert cut by read_timeout: the server
				// had it and may store it when it resumes (at least once)
				got[id] = ""
				continue
			}
			got[id] = fmt.Sprint(path, a, b, c)
		}
		for id, v := range got {
			if v == "" {
				delete(got, id)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: table holds\n%v\nwant\n%v", when, got, want)
		}
	}
	if err := insert(testRows(7, 1, "a")); err != nil {
		t.Fatal(err)
	}
	if err := insert(testRows(2, 2, "b")); err != nil {
		t.Fatal(err)
	}
	if err := insert(testRows(5, 3, "c")); err != nil {
		t.Fatal(err)
	}
	check("after three batches")

	if err := ch.Freeze(); err != nil {
		t.Fatal(err)
	}
	err = c.insert(ctx, cfg.Table, testRows(3, 4, "frozen"))
	if thawErr := ch.Thaw(); thawErr != nil {
		t.Fatal(thawErr)
	}
	if err == nil {
		t.Fatal("an insert into a frozen server succeeded")
	}
	t.Logf("the insert into the frozen server: %v", err)
	waitFor(t, "an insert after the thaw", func() bool { return insert(testRows(4, 5, "d")) == nil })
	check("after the thaw")
}
