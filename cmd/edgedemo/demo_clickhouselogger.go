package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

func init() {
	register(part{name: "clickhouselogger", config: chlPartConfig, run: chlPartRun})
}

// chlPartTable is the demo's log table, created by the logger itself.
const chlPartTable = "edge_access_log"

// chlIngestAddr is the runner's ingest listener (the log-phase path), on a
// free loopback port chosen with the config.
var chlIngestAddr string

// chlPartConfig points the clickhouse section at the demo's server, or at
// a closed port: the logger then drops its rows and counts them, and
// requests are unaffected.
func chlPartConfig(e *demoEnv) (string, error) {
	addr, db, pw := "", "default", ""
	if e.ClickHouse != nil {
		addr, db, pw = e.ClickHouse.NativeAddr(), e.ClickHouse.Database(), e.ClickHouse.Password()
	} else {
		p, err := backing.FreePort()
		if err != nil {
			return "", err
		}
		addr = fmt.Sprintf("127.0.0.1:%d", p)
	}
	port, err := backing.FreePort()
	if err != nil {
		return "", err
	}
	chlIngestAddr = fmt.Sprintf("127.0.0.1:%d", port)
	return fmt.Sprintf(`clickhouse:
  addrs: [%q]
  database: %s
  password: %q
  table: %s
  create_table: true
  batch_size: 500
  flush_interval: 200ms
  dial_timeout: 300ms
  retries: {max_attempts: 2, backoff: 50ms, max_backoff: 500ms}
  ingest: {listen: %q}
`, addr, db, pw, chlPartTable, chlIngestAddr), nil
}

// chlPartRequest is request i of the demo: what APISIX would answer to the
// logger's questions, including the composite variable of the nginx
// snippet in docs/clickhouselogger.md.
func chlPartRequest(i int, composite bool) *testbed.Request {
	method := []string{"GET", "POST", "GET", "DELETE"}[i%4]
	path := fmt.Sprintf("/api/orders/%d", 1000+i)
	ip := fmt.Sprintf("203.0.113.%d", 1+i%50)
	tenant := []string{"acme", "globex", "initech"}[i%3]
	consumer := fmt.Sprintf("user-%d", i%7)
	reqID := fmt.Sprintf("demo-%04d", i)
	latency := fmt.Sprintf("0.%03d", 2+i%40)
	status := []int{200, 200, 201, 404, 200, 503}[i%6]
	vars := map[string]string{"request_time": latency}
	if composite {
		vars["edge_log_fields"] = strings.Join([]string{"e1", latency, method, "shop.example.com", path, ip,
			"demo-client/1.0", reqID, "", tenant, consumer}, "\n")
	}
	return &testbed.Request{
		Method: method, Path: path, SrcIP: net.ParseIP(ip), Vars: vars,
		Headers: http.Header{
			"Host": {"shop.example.com"}, "User-Agent": {"demo-client/1.0"}, "X-Request-Id": {reqID},
			"X-Tenant-Id": {tenant}, "X-Edge-Consumer": {consumer}, "X-Cart": {fmt.Sprint("items=", i%5)},
		},
		Upstream: func(*testbed.UpstreamRequest) testbed.UpstreamResponse {
			return testbed.UpstreamResponse{Status: status, Headers: http.Header{
				"Content-Type": {"application/json"}, "X-Served-By": {"backend-2"}}, Body: []byte(`{}`)}
		},
	}
}

func chlPartRun(ctx context.Context, e *demoEnv, w io.Writer) error {
	route := &testbed.Route{ID: "demo-logged", PostResp: []testbed.PluginConf{{
		Name: "clickhouselogger", Value: `{"req_headers":["X-Cart"],"resp_headers":["X-Served-By"]}`,
	}}}
	fmt.Fprintf(w, "route conf (ext-plugin-post-resp) %s\n", route.PostResp[0].Value)
	const n = 200
	before := e.Gateway.Stats()
	untouched := 0
	start := time.Now()
	for i := 0; i < n; i++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := e.Gateway.Do(rctx, route, chlPartRequest(i, true))
		cancel()
		if err != nil {
			return err
		}
		if res.Err == nil && res.Headers.Get("X-Served-By") == "backend-2" {
			untouched++
		}
	}
	elapsed := time.Since(start)
	st := e.Gateway.Stats()
	fmt.Fprintf(w, "%d requests in %v: %d answered with the upstream's own status and headers (the logger answers nothing)\n",
		n, elapsed.Round(time.Millisecond), untouched)
	fmt.Fprintf(w, "ExtraInfo round trips: %.1f per request (the composite variable, $route_id, the X-Cart header)\n",
		float64(st.ExtraInfo-before.ExtraInfo)/n)
	before = e.Gateway.Stats()
	if _, err := e.Gateway.Do(ctx, route, chlPartRequest(n, false)); err != nil {
		return err
	}
	fmt.Fprintf(w, "without the nginx snippet (one variable per field): %d round trips for that request\n",
		e.Gateway.Stats().ExtraInfo-before.ExtraInfo)

	if e.ClickHouse == nil {
		time.Sleep(time.Second) // let the flusher give up on the batch
		fmt.Fprintln(w, "no clickhouse-server: rows are dropped and counted; requests were unaffected")
		return chlPartCounters(w, e.AdminURL)
	}
	table := e.ClickHouse.Database() + "." + chlPartTable
	var got uint64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		got, _ = e.ClickHouse.Count(cctx, table)
		cancel()
		if got >= n+1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(w, "rows in ClickHouse %s: %d (want %d)\n", table, got, n+1)
	if err := chlPartShowRows(ctx, w, e.ClickHouse, table); err != nil {
		return err
	}
	if err := chlPartCounters(w, e.AdminURL); err != nil {
		return err
	}
	if got != n+1 {
		return fmt.Errorf("got %d rows in ClickHouse, want %d", got, n+1)
	}
	return chlIngestRun(ctx, e, w, table)
}

func chlPartShowRows(ctx context.Context, w io.Writer, ch *backing.ClickHouse, table string) error {
	conn, err := ch.Conn()
	if err != nil {
		return err
	}
	defer conn.Close()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, "SELECT ts, route_id, method, path, status, latency_ms, client_ip, tenant, consumer, request_id, "+
		"req_header_values, resp_header_values FROM "+table+" ORDER BY request_id LIMIT 3")
	if err != nil {
		return fmt.Errorf("query rows: %w", err)
	}
	defer rows.Close()
	fmt.Fprintln(w, "first rows:")
	for rows.Next() {
		var ts time.Time
		var route, method, path, ip, tenant, consumer, reqID string
		var status uint16
		var lat uint32
		var reqV, respV []string
		if err := rows.Scan(&ts, &route, &method, &path, &status, &lat, &ip, &tenant, &consumer, &reqID, &reqV, &respV); err != nil {
			return fmt.Errorf("scan row: %w", err)
		}
		fmt.Fprintf(w, "  %s route=%s %s %s %d %dms ip=%s tenant=%s consumer=%s id=%s x-cart=%v x-served-by=%v\n",
			ts.UTC().Format(time.TimeOnly), route, method, path, status, lat, ip, tenant, consumer, reqID, reqV, respV)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	qctx2, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	trows, err := conn.Query(qctx2, "SELECT tenant, count(), round(avg(latency_ms), 1) FROM "+table+" GROUP BY tenant ORDER BY tenant")
	if err != nil {
		return fmt.Errorf("query tenants: %w", err)
	}
	defer trows.Close()
	fmt.Fprintln(w, "per tenant (count, avg latency ms):")
	for trows.Next() {
		var tenant string
		var c uint64
		var avg float64
		if err := trows.Scan(&tenant, &c, &avg); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-8s %4d  %.1f\n", tenant, c, avg)
	}
	return trows.Err()
}

// chlPartCounters prints the logger's metrics from the admin listener.
func chlPartCounters(w io.Writer, admin string) error {
	body, err := adminGet(admin, "/metrics")
	if err != nil {
		return err
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "apisix_edge_log_") && !strings.Contains(l, "_bucket{") ||
			strings.HasPrefix(l, `apisix_edge_backend_state{backend="clickhouse"`) && strings.HasSuffix(l, " 1") {
			lines = append(lines, "  "+l)
		}
	}
	sort.Strings(lines)
	fmt.Fprintf(w, "metrics:\n%s\n", strings.Join(lines, "\n"))
	return nil
}
