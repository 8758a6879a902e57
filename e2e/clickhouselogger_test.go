package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// chlRow is a row read back from ClickHouse.
type chlRow struct {
	routeID, method, host, path, clientIP, ua, reqID, tenant, consumer string
	status                                                             uint16
	latency                                                            uint32
	reqNames, reqValues, respNames, respValues                         []string
}

func chlRows(t *testing.T, srv *backing.ClickHouse, table string) map[string]chlRow {
	t.Helper()
	ch, err := srv.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := ch.Query(ctx, "SELECT route_id, method, host, path, client_ip, user_agent, request_id, tenant, consumer, status, latency_ms, "+
		"req_header_names, req_header_values, resp_header_names, resp_header_values FROM "+table)
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	defer rows.Close()
	out := map[string]chlRow{}
	for rows.Next() {
		var r chlRow
		if err := rows.Scan(&r.routeID, &r.method, &r.host, &r.path, &r.clientIP, &r.ua, &r.reqID, &r.tenant, &r.consumer,
			&r.status, &r.latency, &r.reqNames, &r.reqValues, &r.respNames, &r.respValues); err != nil {
			t.Fatalf("scan: %v", err)
		}
		out[r.reqID] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// chlCheckRow compares a row with the request that produced it.
func chlCheckRow(t *testing.T, i int, got chlRow, routeID string, reqHdr, respHdr bool) {
	t.Helper()
	s := chlSpec(i)
	var lat uint32
	fmt.Sscanf(strings.Replace(s.latency, ".", "", 1), "%d", &lat)
	want := chlRow{routeID: routeID, method: s.method, host: s.host, path: s.path, clientIP: s.ip, ua: s.ua,
		reqID: s.reqID, tenant: s.tenant, consumer: s.consumer, status: uint16(s.status), latency: lat}
	if reqHdr {
		want.reqNames, want.reqValues = []string{"x-extra"}, []string{s.extra}
	}
	if respHdr {
		want.respNames, want.respValues = []string{"x-upstream-id", "content-type"}, []string{"up-" + s.reqID, "application/json"}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("row %d:\n got %+v\nwant %+v", i, got, want)
	}
}

// TestCHLRowsLand: N requests through the real binary give N rows with the
// right values; the client gets the upstream's response untouched (the
// logger answers nothing); the composite variable makes it two ExtraInfo
// round trips per request (one with route_id in the conf); the accounting
// identity holds.
func TestCHLRowsLand(t *testing.T) {
	t.Parallel()
	ch := chlCH(t)
	e := chlStart(t, chlSection(ch.NativeAddr(), ""), testbed.RunnerOptions{})
	route := chlRoute("r1", `{"req_headers":["X-Extra"],"resp_headers":["X-Upstream-Id","Content-Type"]}`)
	const n = 120
	before := e.g.Stats()
	chlDoAll(t, e, route, 0, n, true)
	st := e.g.Stats()
	// The first request also prepares the conf; every request asks for the
	// composite, $route_id and the X-Extra header.
	if got, want := st.ExtraInfo-before.ExtraInfo, int64(3*n); got != want {
		t.Errorf("got %d ExtraInfo round trips for %d requests, want %d (composite + route_id + one req header)", got, n, want)
	}
	eventually(t, 10*time.Second, "rows in clickhouse", func() bool { return chlCount(ch, "edge_access_log") == n })
	rows := chlRows(t, ch, "edge_access_log")
	for i := 0; i < n; i++ {
		chlCheckRow(t, i, rows[chlSpec(i).reqID], "r1", true, true)
	}
	// A route naming its id and no extra header: one round trip per request.
	route2 := chlRoute("r2", `{"route_id":"checkout","table":"edge_other"}`)
	before = e.g.Stats()
	chlDoAll(t, e, route2, n, 10, true)
	if got := e.g.Stats().ExtraInfo - before.ExtraInfo; got != 10 {
		t.Errorf("with route_id in the conf: got %d round trips for 10 requests, want 10", got)
	}
	eventually(t, 10*time.Second, "rows in the route's table", func() bool { return chlCount(ch, "edge_other") == 10 })
	rows = chlRows(t, ch, "edge_other")
	chlCheckRow(t, n+3, rows[chlSpec(n+3).reqID], "checkout", false, false)

	a := chlAccounting(t, e.admin)
	if a.enqueued != n+10 || a.inserted != n+10 || a.dropped != 0 || a.queue != 0 {
		t.Errorf("got accounting %+v, want %d enqueued and inserted, nothing dropped or pending", a, n+10)
	}
}

// TestCHLFallbackSingleVars: without the composite variable in APISIX, the
// logger asks for each field on its own and the rows are the same; then it
// stops asking for the composite for a while (one round trip less).
func TestCHLFallbackSingleVars(t *testing.T) {
	t.Parallel()
	ch := chlCH(t)
	e := chlStart(t, chlSection(ch.NativeAddr(), ""), testbed.RunnerOptions{})
	route := chlRoute("fb", `{}`)
	before := e.g.Stats()
	chlDoAll(t, e, route, 0, 1, false)
	first := e.g.Stats().ExtraInfo - before.ExtraInfo
	// composite (absent) + 7 fields + $request_id (no X-Request-Id? it is
	// set here, so not asked) + tenant + consumer + route_id
	if first != 11 {
		t.Errorf("first request: got %d round trips, want 11 (the composite, 9 fields, route_id)", first)
	}
	before = e.g.Stats()
	chlDoAll(t, e, route, 1, 9, false)
	if got := e.g.Stats().ExtraInfo - before.ExtraInfo; got != 9*10 {
		t.Errorf("next requests: got %d round trips for 9, want %d (the composite is not asked again for a minute)", got, 9*10)
	}
	eventually(t, 10*time.Second, "rows", func() bool { return chlCount(ch, "edge_access_log") == 10 })
	rows := chlRows(t, ch, "edge_access_log")
	for i := 0; i < 10; i++ {
		chlCheckRow(t, i, rows[chlSpec(i).reqID], "fb", false, false)
	}
}

// TestCHLInvalidConfPassesThrough: a bad conf is logged once with its field
// and rule, counted, and the route keeps serving, untouched.
func TestCHLInvalidConfPassesThrough(t *testing.T) {
	t.Parallel()
	e := chlStart(t, chlSection("127.0.0.1:1", ""), testbed.RunnerOptions{})
	route := chlRoute("bad", `{"sample_ratio":2,"resp_hedaers":["X"]}`)
	for i := 0; i < 5; i++ {
		s := chlSpec(i)
		res := do(t, e.g, route, chlRequest(s, true))
		if res.Status != s.status || !res.UpstreamCalled || res.Headers.Get("X-Upstream-Id") != "up-"+s.reqID {
			t.Fatalf("request %d: got %d upstream %v headers %v, want the upstream's answer untouched", i, res.Status, res.UpstreamCalled, res.Headers)
		}
	}
	m := chlMetrics(t, e.admin)
	if got := m[`apisix_edge_plugin_conf_errors_total{plugin="clickhouselogger"}`]; got != 1 {
		t.Errorf("got %v conf errors, want 1", got)
	}
	if got := m[`apisix_edge_plugin_invalid_conf_requests_total{plugin="clickhouselogger",policy="open"}`]; got != 5 {
		t.Errorf("got %v invalid-conf requests, want 5", got)
	}
	out := e.r.Output()
	if strings.Count(out, "invalid plugin conf") != 1 || !strings.Contains(out, "sample_ratio: must be between 0 and 1") ||
		!strings.Contains(out, "resp_hedaers: unknown field") {
		t.Errorf("got runner output without one line naming both problems:\n%s", out)
	}
}
