package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// chlSection is a clickhouse section pointing at addr, with small batches
// and short waits for tests. extra holds indented YAML lines: a top-level
// key in it replaces the default of the same key.
func chlSection(addr, extra string) string {
	defaults := [][2]string{
		{"create_table", "true"}, {"batch_size", "200"}, {"flush_interval", "100ms"},
		{"dial_timeout", "300ms"}, {"read_timeout", "2s"},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "clickhouse:\n  addrs: [%q]\n", addr)
	for _, kv := range defaults {
		if !strings.Contains(extra, "\n  "+kv[0]+":") && !strings.HasPrefix(extra, "  "+kv[0]+":") {
			fmt.Fprintf(&b, "  %s: %s\n", kv[0], kv[1])
		}
	}
	if !strings.Contains(extra, "retries:") {
		b.WriteString("  retries:\n    max_attempts: 2\n    backoff: 50ms\n    max_backoff: 300ms\n")
	}
	b.WriteString(extra)
	return b.String()
}

// chlStart spawns the runner with section and an admin listener.
func chlStart(t *testing.T, section string, opts testbed.RunnerOptions) *adminEnv {
	t.Helper()
	return startWithAdmin(t, "shutdown_timeout: 4s\n"+section, opts)
}

// chlCH starts a clickhouse-server for one test.
func chlCH(t *testing.T) *backing.ClickHouse {
	t.Helper()
	backing.MustRequire(t, backing.ClickHouseServer)
	return backing.MustClickHouse(t, backing.ClickHouseOptions{})
}

func chlRoute(id, conf string) *testbed.Route {
	return &testbed.Route{ID: id, PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: conf}}}
}

// chlReqSpec is what one test request carries, and so what its row must
// hold.
type chlReqSpec struct {
	method, path, host, ua, reqID, tenant, consumer, ip, extra string
	latency                                                    string // $request_time
	status                                                     int
}

func chlSpec(i int) chlReqSpec {
	return chlReqSpec{
		method:   []string{"GET", "POST", "PUT", "DELETE"}[i%4],
		path:     fmt.Sprintf("/items/%d", i),
		host:     fmt.Sprintf("h%d.example.com", i%3),
		ua:       fmt.Sprintf("agent/%d (test)", i),
		reqID:    fmt.Sprintf("req-%06d", i),
		tenant:   fmt.Sprintf("tenant-%d", i%5),
		consumer: fmt.Sprintf("user-%d", i%7),
		ip:       fmt.Sprintf("10.1.%d.%d", i/250, i%250+1),
		extra:    fmt.Sprintf("x-%d", i),
		latency:  fmt.Sprintf("%d.%03d", i/1000, i%1000),
		status:   []int{200, 201, 404, 503}[i%4],
	}
}

// chlComposite is the composite variable as the nginx map of
// docs/clickhouselogger.md would build it.
func chlComposite(s chlReqSpec) string {
	return strings.Join([]string{"e1", s.latency, s.method, s.host, s.path, s.ip, s.ua, s.reqID, "", s.tenant, s.consumer}, "\n")
}

// chlRequest builds the request of s. With composite, the edge_log_fields
// variable is answered as APISIX would with the snippet configured.
func chlRequest(s chlReqSpec, composite bool) *testbed.Request {
	h := http.Header{}
	h.Set("Host", s.host)
	h.Set("User-Agent", s.ua)
	h.Set("X-Request-Id", s.reqID)
	h.Set("X-Tenant-ID", s.tenant)
	h.Set("X-Edge-Consumer", s.consumer)
	h.Set("X-Extra", s.extra)
	vars := map[string]string{"request_time": s.latency}
	if composite {
		vars["edge_log_fields"] = chlComposite(s)
	}
	status := s.status
	return &testbed.Request{
		Method: s.method, Path: s.path, Headers: h, SrcIP: net.ParseIP(s.ip), Vars: vars,
		Upstream: func(*testbed.UpstreamRequest) testbed.UpstreamResponse {
			return testbed.UpstreamResponse{Status: status, Headers: http.Header{
				"Content-Type":  {"application/json"},
				"X-Upstream-Id": {"up-" + s.reqID},
				"Cache-Control": {"no-store"},
			}, Body: []byte(`{"ok":true}`)}
		},
	}
}

// chlMetrics scrapes /metrics into "name{labels}" -> value.
func chlMetrics(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	_, body := get(t, admin+"/metrics")
	return testbed.ParseMetrics(body)
}

// chlAccount is the logger's row accounting read from /metrics.
type chlAccount struct {
	enqueued, inserted, dropped, queue, spooled, replayed float64
	byReason                                              map[string]float64
}

func chlAccounting(t *testing.T, admin string) chlAccount {
	t.Helper()
	m := chlMetrics(t, admin)
	a := chlAccount{
		enqueued: m["apisix_edge_log_rows_enqueued_total"],
		inserted: m["apisix_edge_log_rows_inserted_total"],
		queue:    m["apisix_edge_log_queue_rows"],
		spooled:  m["apisix_edge_log_rows_spooled_total"],
		replayed: m["apisix_edge_log_rows_replayed_total"],
		byReason: map[string]float64{},
	}
	for _, r := range []string{"queue_full", "insert_failed", "spool_full", "shutdown", "invalid"} {
		v := m[`apisix_edge_log_rows_dropped_total{reason="`+r+`"}`]
		a.byReason[r] = v
		a.dropped += v
	}
	return a
}

// chlCount counts the rows of table, -1 when the server does not answer.
func chlCount(ch *backing.ClickHouse, table string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	n, err := ch.Count(ctx, table)
	if err != nil {
		return -1
	}
	return int64(n)
}

// chlDoAll sends n requests from spec 0..n-1 and checks each is answered as
// the upstream answered, with the upstream's headers.
func chlDoAll(t *testing.T, e *adminEnv, route *testbed.Route, from, n int, composite bool) {
	t.Helper()
	for i := from; i < from+n; i++ {
		s := chlSpec(i)
		res := do(t, e.g, route, chlRequest(s, composite))
		if res.Status != s.status || res.Err != nil || res.Headers.Get("X-Upstream-Id") != "up-"+s.reqID {
			t.Fatalf("request %d: got status %d err %v headers %v, want %d with the upstream's headers", i, res.Status, res.Err, res.Headers, s.status)
		}
	}
}
