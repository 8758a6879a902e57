package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// The log-phase path of the clickhouselogger part: batches shaped like the
// ones APISIX 3.18's http-logger sends (../shared/apisix-http-logger) are
// posted to the runner's ingest listener, and the rows come out of
// ClickHouse, 401s and 429s included, with the columns post-resp cannot
// fill.

// chlIngestLogFormat is one batch with the documented log_format, framed
// new_line (one entry per line, Content-Type text/plain): a jwtcache 401,
// requests under a limit of 3, the 429s past it, and two decisions taken
// while Redis was paused (degraded).
var chlIngestLogFormat = strings.Join([]string{
	`{"method":"GET","uri":"/api/orders","request_id":"a8e7","request_time":"0.001","user_agent":"curl/7.88.1","request_length":"112","route_id":"edge-all","status":"401","remote_addr":"203.0.113.9","bytes_sent":"260","x_request_id":"ingest-1","host":"shop.example.com"}`,
	`{"rl_limit":"3","rl_remaining":"2","method":"GET","uri":"/api/orders","upstream_addr":"10.0.0.7:8080","upstream_response_time":"0.004","request_time":"0.006","user_agent":"curl/7.88.1","request_length":"738","tenant":"acme","status":"200","consumer":"user-42","remote_addr":"203.0.113.7","host":"shop.example.com","bytes_sent":"322","route_id":"edge-all","x_request_id":"ingest-2","request_id":"f9ec"}`,
	`{"rl_limit":"3","rl_remaining":"1","method":"GET","uri":"/api/orders","upstream_addr":"10.0.0.7:8080","upstream_response_time":"0.003","request_time":"0.004","user_agent":"curl/7.88.1","request_length":"738","tenant":"acme","status":"200","consumer":"user-42","remote_addr":"203.0.113.7","host":"shop.example.com","bytes_sent":"322","route_id":"edge-all","x_request_id":"ingest-3","request_id":"cefd"}`,
	`{"rl_limit":"3","rl_remaining":"0","method":"GET","uri":"/api/orders","upstream_addr":"10.0.0.7:8080","upstream_response_time":"0.002","request_time":"0.003","user_agent":"curl/7.88.1","request_length":"738","tenant":"acme","status":"200","consumer":"user-42","remote_addr":"203.0.113.7","host":"shop.example.com","bytes_sent":"322","route_id":"edge-all","x_request_id":"ingest-4","request_id":"59a9"}`,
	`{"rl_limit":"3","rl_remaining":"0","method":"GET","uri":"/api/orders","request_id":"b4ce","request_time":"0.001","user_agent":"curl/7.88.1","request_length":"738","route_id":"edge-all","status":"429","remote_addr":"203.0.113.7","bytes_sent":"310","host":"shop.example.com","retry_after":"60","x_request_id":"ingest-5"}`,
	`{"rl_limit":"1000000","method":"GET","uri":"/api/orders","upstream_addr":"10.0.0.7:8080","upstream_response_time":"0.001","request_time":"0.023","user_agent":"curl/7.88.1","request_length":"740","tenant":"globex","status":"200","consumer":"user-7","remote_addr":"203.0.113.8","host":"shop.example.com","bytes_sent":"311","route_id":"edge-all","x_request_id":"ingest-6","request_id":"7b52","rl_status":"degraded"}`,
	`{"rl_limit":"3","rl_remaining":"0","method":"GET","uri":"/api/orders","request_id":"ef00","request_time":"0.001","user_agent":"curl/7.88.1","request_length":"738","route_id":"edge-all","status":"429","remote_addr":"203.0.113.7","bytes_sent":"340","host":"shop.example.com","retry_after":"60","x_request_id":"ingest-7","rl_status":"degraded"}`,
}, "\n")

// chlIngestDefault is one default http-logger entry (no log_format), with
// the client's bearer token in its request headers, as APISIX sends it.
const chlIngestDefault = `[{"apisix_latency":2.0,"latency":5.0,"route_id":"edge-logged","response":{"size":"341","headers":{"content-type":"text/plain","x-ratelimit-limit":"100","x-ratelimit-remaining":"97"},"status":200},` +
	`"server":{"version":"3.18.0","hostname":"demo"},"client_ip":"203.0.113.5","upstream":"10.0.0.7:8080","service_id":"orders",` +
	`"request":{"size":"759","headers":{"accept":"*/*","x-request-id":"ingest-8","user-agent":"demo-client/1.0","x-tenant-id":"initech","authorization":"Bearer eyJhbGciOiJSUzI1NiJ9.demo-token.sig","cookie":"session=secret","host":"shop.example.com:9080","x-edge-consumer":"user-9"},` +
	`"querystring":{"page":"2"},"method":"GET","url":"http://shop.example.com:9080/logged/orders?page=2","uri":"/logged/orders?page=2"},"start_time":1796228840632,"upstream_latency":3}]`

func chlIngestRun(ctx context.Context, e *demoEnv, w io.Writer, table string) error {
	fmt.Fprintf(w, "\nthe log-phase path (recommended): APISIX's http-logger posts batches to http://%s/apisix/http-logger\n", chlIngestAddr)
	for _, b := range []struct{ what, ctype, body string }{
		{"7 log_format entries, new_line", "text/plain", chlIngestLogFormat},
		{"1 default entry with an Authorization and a Cookie header, json", "application/json", chlIngestDefault},
	} {
		status, answer, err := chlIngestPost(ctx, b.ctype, b.body)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "POST %s: %d %s", b.what, status, answer)
	}
	var got uint64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		got, _ = chlIngestCount(qctx, e, table)
		cancel()
		if got >= 8 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(w, "rows with source = 'http_logger': %d (want 8)\n", got)
	conn, err := e.ClickHouse.Conn()
	if err != nil {
		return err
	}
	defer conn.Close()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, "SELECT request_id, status, latency_ms, upstream_latency_ms, apisix_latency_ms, consumer, tenant, upstream_addr, "+
		"bytes_sent, rl_status, rl_limit, rl_remaining, retry_after, service_id FROM "+table+" WHERE source = 'http_logger' ORDER BY request_id")
	if err != nil {
		return fmt.Errorf("query ingest rows: %w", err)
	}
	defer rows.Close()
	fmt.Fprintln(w, "  id        status total/upstream/apisix ms  consumer  tenant   upstream        bytes  rl_status limit remaining retry_after service")
	for rows.Next() {
		var id, consumer, tenant, up, rl, svc string
		var status uint16
		var lat, upMs, apMs uint32
		var bytesSent uint64
		var limit, remaining, retry int64
		if err := rows.Scan(&id, &status, &lat, &upMs, &apMs, &consumer, &tenant, &up, &bytesSent, &rl, &limit, &remaining, &retry, &svc); err != nil {
			return fmt.Errorf("scan ingest row: %w", err)
		}
		fmt.Fprintf(w, "  %-9s %d    %3d/%d/%d %22s %-8s %-15s %5d  %-9s %5d %9d %11d %s\n",
			id, status, lat, upMs, apMs, consumer, tenant, up, bytesSent, rl, limit, remaining, retry, svc)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var leaked uint64
	if err := conn.QueryRow(qctx, "SELECT count() FROM "+table+" WHERE position(arrayStringConcat(req_header_values), 'Bearer') > 0 "+
		"OR position(arrayStringConcat(resp_header_values), 'Bearer') > 0 OR position(user_agent, 'Bearer') > 0").Scan(&leaked); err != nil {
		return fmt.Errorf("query credentials: %w", err)
	}
	fmt.Fprintf(w, "rows holding the bearer token: %d (the ingest never reads authorization, cookie, proxy-authorization, set-cookie)\n", leaked)
	var rejected, degraded uint64
	if err := conn.QueryRow(qctx, "SELECT countIf(status IN (401, 429)), countIf(rl_status = 'degraded') FROM "+table+" WHERE source = 'http_logger'").Scan(&rejected, &degraded); err != nil {
		return fmt.Errorf("query decisions: %w", err)
	}
	fmt.Fprintf(w, "rejected requests logged (401, 429): %d; degraded rate-limit decisions: %d (post-resp never sees either)\n", rejected, degraded)
	if got != 8 || leaked != 0 {
		return fmt.Errorf("ingest: got %d rows and %d with a token, want 8 and 0", got, leaked)
	}
	return nil
}

func chlIngestPost(ctx context.Context, ctype, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+chlIngestAddr+"/apisix/http-logger?", bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", ctype)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var resp *http.Response
	for i := 0; ; i++ { // the runner binds the listener in the background
		resp, err = c.Do(req)
		if err == nil || i == 20 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, "", fmt.Errorf("post to the ingest: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func chlIngestCount(ctx context.Context, e *demoEnv, table string) (uint64, error) {
	conn, err := e.ClickHouse.Conn()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var n uint64
	err = conn.QueryRow(ctx, "SELECT count() FROM "+table+" WHERE source = 'http_logger'").Scan(&n)
	return n, err
}
