package clickhouselogger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fixtureDir holds the batches captured from APISIX 3.18's http-logger
// (CI has /work/shared beside the repository).
const fixtureDir = "../../../shared/apisix-http-logger"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return b
}

// fixtureHead reads a captured request head: the request target and the
// headers APISIX sent.
func fixtureHead(t testing.TB, name string) (string, http.Header) {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(append(readFixture(t, name), "\r\n"...))))
	if err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return r.RequestURI, r.Header
}

// ingestRig is a logger with its ingest listening on a free loopback port.
type ingestRig struct {
	l    *Logger
	reg  *prometheus.Registry
	logs *observer.ObservedLogs
	addr string
}

func startIngest(t testing.TB, yaml string, now func() time.Time) *ingestRig {
	t.Helper()
	cfg := testConfig(t, yaml)
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	reg := prometheus.NewRegistry()
	l := newLoggerWith(cfg, log, reg)
	if now != nil {
		l.now = now
	}
	l.Start(context.Background())
	for l.IngestAddr() == "" {
		time.Sleep(5 * time.Millisecond)
	}
	return &ingestRig{l: l, reg: reg, logs: logs, addr: l.IngestAddr()}
}

func newLoggerWith(cfg Config, log *zap.Logger, reg *prometheus.Registry) *Logger {
	return New(cfg, core.Deps{Log: log, Throttle: core.NewLogThrottle(log, time.Minute), Metrics: reg, Status: core.NewStatus("test", nil)})
}

// post sends one batch on a new connection, as APISIX does.
func (rig *ingestRig) post(t testing.TB, target string, hdr http.Header, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+rig.addr+target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k != "Content-Length" && k != "Host" {
			req.Header[k] = v
		}
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond until it holds; the test binary's -timeout is the
// only bound.
func eventually(t testing.TB, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(10 * time.Millisecond)
	}
}

// checkIngestIdentity asserts received = enqueued + rejected.
func checkIngestIdentity(t testing.TB, l *Logger) *IngestSnapshot {
	t.Helper()
	s := l.Snapshot().Ingest
	var rej uint64
	for _, v := range s.Rejected {
		rej += v
	}
	if s.Received != s.Enqueued+rej {
		t.Errorf("ingest identity: got received %d, want enqueued %d + rejected %d", s.Received, s.Enqueued, rej)
	}
	return s
}

// queryRows returns request_id -> the row's columns, joined by "|".
func queryRows(t testing.TB, ch *backing.ClickHouse, where string) map[string]string {
	t.Helper()
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := "SELECT request_id, arrayStringConcat([" + strings.ReplaceAll(
		"toString(toUnixTimestamp(ts)), route_id, method, host, path, toString(status), toString(latency_ms), client_ip, user_agent, tenant, consumer, "+
			"source, service_id, upstream_addr, toString(upstream_latency_ms), toString(apisix_latency_ms), toString(bytes_sent), toString(request_length), rl_status, toString(rl_limit), toString(rl_remaining), toString(retry_after)",
		"\n", "") + "], '|') FROM edge_access_log " + where
	rows, err := conn.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	return out
}

// TestIngestFixturesLand: every captured batch, posted as APISIX posted it
// (its path with the stray '?', its headers, a new connection), lands as
// the right rows in a real ClickHouse.
func TestIngestFixturesLand(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	recv := time.Date(2026, 12, 2, 16, 30, 0, 0, time.UTC)
	rig := startIngest(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 100\n  flush_interval: 20ms\n"+
		"  ingest: {listen: \"127.0.0.1:0\", auth_header: \"Bearer peer-sink-secret\"}\n", ch.NativeAddr()), func() time.Time { return recv })
	defer shutdown(t, rig.l)
	batches := []struct{ body, head string }{
		{"default-entry.json", "request-head-default.txt"},
		{"log-format.json", "request-head-format.txt"},
		{"log-format-new-line.txt", "request-head-newline-auth.txt"},
		{"rejected-requests.txt", "request-head-newline-auth.txt"},
	}
	for _, b := range batches {
		target, hdr := fixtureHead(t, b.head)
		hdr.Set("Authorization", "Bearer peer-sink-secret") // the captured heads without auth_header had none
		target = IngestPath + target[strings.IndexByte(target, '?'):]
		code, body := rig.post(t, target, hdr, readFixture(t, b.body))
		if code != http.StatusOK {
			t.Fatalf("%s: got %d %s, want 200", b.body, code, body)
		}
	}
	const total = 3 + 3 + 3 + 9
	eventually(t, func() bool { return rig.l.Snapshot().Inserted == total })
	r := recv.Unix()
	// ts|route|method|host|path|status|latency|client|ua|tenant|consumer|source|service|upstream|up_ms|apisix_ms|bytes|req_len|rl_status|rl_limit|rl_remaining|retry_after
	want := map[string]string{
		"cap-default-1": "1796228840|peer-cap-default|GET|127.0.0.1|/peer-cap-default/item|200|3|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|1|2|341|759||1000000|999999|-1",
		"cap-default-2": "1796228840|peer-cap-default|GET|127.0.0.1|/peer-cap-default/item|200|1|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|1|341|759||1000000|999998|-1",
		"cap-default-3": "1796228840|peer-cap-default|GET|127.0.0.1|/peer-cap-default/item|200|2|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|2|341|759||1000000|999997|-1",
		"cap-format-1":  fmt.Sprintf("%d|peer-cap-format|GET|127.0.0.1|/peer-cap-format/item|200|2|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|2|340|757||1000000|999996|-1", r),
		"cap-format-2":  fmt.Sprintf("%d|peer-cap-format|GET|127.0.0.1|/peer-cap-format/item|200|1|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|1|340|757||1000000|999995|-1", r),
		"cap-format-3":  fmt.Sprintf("%d|peer-cap-format|GET|127.0.0.1|/peer-cap-format/item|200|2|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|1|1|340|757||1000000|999994|-1", r),
		"cap-newline-1": fmt.Sprintf("%d|peer-cap-newline|GET|127.0.0.1|/peer-cap-newline/item|200|2|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|2|341|759||1000000|999993|-1", r),
		"cap-newline-2": fmt.Sprintf("%d|peer-cap-newline|GET|127.0.0.1|/peer-cap-newline/item|200|1|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|1|0|341|759||1000000|999992|-1", r),
		"cap-newline-3": fmt.Sprintf("%d|peer-cap-newline|GET|127.0.0.1|/peer-cap-newline/item|200|1|127.0.0.1|peer-check/1|acme|user-42|http_logger||127.0.0.1:8080|0|1|341|759||1000000|999991|-1", r),
		// two 401s from jwtcache: no consumer, no upstream, no rate-limit headers
		"rej-1": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|401|1|127.0.0.1|curl/7.88.1|||http_logger|||0|1|260|112||-1|-1|-1", r),
		"rej-2": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|401|1|127.0.0.1|curl/7.88.1|||http_logger|||0|1|282|145||-1|-1|-1", r),
		"rej-3": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|200|2|127.0.0.1|curl/7.88.1|acme|user-42|http_logger||127.0.0.1:8080|1|1|322|738||3|2|-1", r),
		"rej-4": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|200|1|127.0.0.1|curl/7.88.1|acme|user-42|http_logger||127.0.0.1:8080|0|1|322|738||3|1|-1", r),
		"rej-5": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|200|1|127.0.0.1|curl/7.88.1|acme|user-42|http_logger||127.0.0.1:8080|0|1|322|738||3|0|-1", r),
		// 429s from ratelimit: Retry-After, no upstream
		"rej-6": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|429|1|127.0.0.1|curl/7.88.1|||http_logger|||0|1|310|738||3|0|60", r),
		"rej-7": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|429|0|127.0.0.1|curl/7.88.1|||http_logger|||0|0|310|738||3|0|60", r),
		// Redis paused: degraded decisions
		"rej-8": fmt.Sprintf("%d|peer-degraded|GET|127.0.0.1|/peer-degraded/x|200|23|127.0.0.1|curl/7.88.1|acme|user-42|http_logger||127.0.0.1:8080|1|22|311|740|degraded|1000000|-1|-1", r),
		"rej-9": fmt.Sprintf("%d|peer-reject|GET|127.0.0.1|/peer-reject/x|429|1|127.0.0.1|curl/7.88.1|||http_logger|||0|1|340|738|degraded|3|0|60", r),
	}
	got := queryRows(t, ch, "")
	if len(got) != len(want) {
		t.Errorf("got %d rows, want %d", len(got), len(want))
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("row %s:\n got %s\nwant %s", id, got[id], w)
		}
	}
	s := checkIngestIdentity(t, rig.l)
	if s.Received != total || s.Batches[resOK] != 4 {
		t.Errorf("got %+v, want %d entries in 4 ok batches", s, total)
	}
	checkIdentity(t, rig.l)
}

// TestIngestNoCredentials: the bearer token of the default entry's
// authorization header (and cookies, and the auth_header secret) are found
// in no stored column and in no log line, even with refused batches.
func TestIngestNoCredentials(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	rig := startIngest(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 100\n  flush_interval: 20ms\n"+
		"  ingest: {listen: \"127.0.0.1:0\", auth_header: \"Bearer s3cret-sink\"}\n", ch.NativeAddr()), nil)
	defer shutdown(t, rig.l)
	body := readFixture(t, "default-entry.json")
	// add a cookie, a set-cookie and a proxy-authorization to every entry
	body = bytes.ReplaceAll(body, []byte(`"accept":"*/*"`), []byte(`"accept":"*/*","cookie":"session=c00kie-secret","proxy-authorization":"Basic cHJveHktc2VjcmV0"`))
	body = bytes.ReplaceAll(body, []byte(`"connection":"close"`), []byte(`"connection":"close","set-cookie":["a=set-c00kie","b=set-c00kie2"]`))
	hdr := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer s3cret-sink"}}
	if code, msg := rig.post(t, IngestPath, hdr, body); code != 200 {
		t.Fatalf("got %d %s, want 200", code, msg)
	}
	// refused batches that carry the same secrets
	rig.post(t, IngestPath, http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer wrong"}}, body)
	rig.post(t, IngestPath, hdr, body[:len(body)/2])
	eventually(t, func() bool { return rig.l.Snapshot().Inserted == 3 })
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var all []string
	for _, c := range builtinColumns {
		switch {
		case strings.HasPrefix(c.old, "Array"):
			all = append(all, "arrayStringConcat("+c.name+", ',')")
		default:
			all = append(all, "toString("+c.name+")")
		}
	}
	rows, err := conn.Query(context.Background(), "SELECT arrayStringConcat(["+strings.Join(all, ", ")+"], '|') FROM edge_access_log")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	secrets := []string{"eyJhbGci", "Bearer", "c00kie", "cHJveHkt", "s3cret-sink"}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		n++
		for _, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("stored row holds %q: %s", sec, s)
			}
		}
	}
	if n != 3 {
		t.Errorf("got %d rows, want 3", n)
	}
	rig.l.deps.Throttle.Flush()
	for _, e := range rig.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, sec := range secrets {
			if strings.Contains(line, sec) {
				t.Errorf("log line holds %q: %s", sec, line)
			}
		}
	}
}

// TestIngestRefusals: malformed, oversized, unauthenticated and misdirected
// batches get their 4xx, are counted by result, and enqueue nothing; bad
// entries in a good batch are rejected one by one and counted.
func TestIngestRefusals(t *testing.T) {
	t.Parallel()
	rig := startIngest(t, "  addrs: [\"127.0.0.1:1\"]\n  flush_interval: 1h\n"+
		"  ingest: {listen: \"127.0.0.1:0\", auth_header: \"Bearer k\", max_body_bytes: 4096, max_entries: 3, max_field_bytes: 300}\n", nil)
	defer shutdown(t, rig.l)
	jsonHdr := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer k"}}
	with := func(h http.Header, k, v string) http.Header {
		c := h.Clone()
		if v == "" {
			c.Del(k)
		} else {
			c.Set(k, v)
		}
		return c
	}
	good := `{"route_id":"r","status":"200"}`
	tests := []struct {
		name         string
		method, path string
		hdr          http.Header
		body         string
		wantCode     int
		wantResult   string
		wantAccepted int
		wantRejected map[string]int
	}{
		{"ok, the stray '?'", "POST", IngestPath + "?", jsonHdr, "[" + good + "]", 200, resOK, 1, nil},
		{"empty array", "POST", IngestPath, jsonHdr, "[]", 200, resOK, 0, nil},
		{"no Authorization", "POST", IngestPath, with(jsonHdr, "Authorization", ""), "[" + good + "]", 401, resUnauthorized, 0, nil},
		{"wrong Authorization", "POST", IngestPath, with(jsonHdr, "Authorization", "Bearer K"), "[" + good + "]", 401, resUnauthorized, 0, nil},
		{"longer Authorization", "POST", IngestPath, with(jsonHdr, "Authorization", "Bearer kk"), "[" + good + "]", 401, resUnauthorized, 0, nil},
		{"truncated", "POST", IngestPath, jsonHdr, `[{"route_id":"r","status":"200"`, 400, resMalformed, 0, nil},
		{"garbage", "POST", IngestPath, jsonHdr, `hello`, 400, resMalformed, 0, nil},
		{"bad escape", "POST", IngestPath, jsonHdr, `[{"route_id":"\q"}]`, 400, resMalformed, 0, nil},
		{"too deep", "POST", IngestPath, jsonHdr, `[{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}]`, 400, resMalformed, 0, nil},
		{"body too large", "POST", IngestPath, jsonHdr, "[" + strings.Repeat(good+",", 200) + good + "]", 413, resTooLarge, 0, nil},
		{"too many entries", "POST", IngestPath, jsonHdr, "[" + strings.Repeat(good+",", 3) + good + "]", 413, resTooMany, 0, nil},
		{"xml", "POST", IngestPath, with(jsonHdr, "Content-Type", "application/xml"), "[" + good + "]", 415, resUnsupported, 0, nil},
		{"GET", "GET", IngestPath, jsonHdr, "", 405, resBadMethod, 0, nil},
		{"other path", "POST", "/other", jsonHdr, "[" + good + "]", 404, resNotFound, 0, nil},
		{"new_line with a bad entry", "POST", IngestPath, with(jsonHdr, "Content-Type", "text/plain"),
			good + "\n" + `{"status":"abc"}` + "\n" + `{"route_id":"` + strings.Repeat("x", 301) + `"}`, 200, resOK, 1,
			map[string]int{rejectInvalid: 1, rejectFieldTooLarge: 1}},
		{"every entry rejected", "POST", IngestPath, jsonHdr, `[5, {}, {"nothing":"known"}]`, 400, resInvalidEntries, 0, map[string]int{rejectInvalid: 3}},
		{"a long skipped header is too large too", "POST", IngestPath, jsonHdr,
			`[{"route_id":"r","request":{"headers":{"authorization":"` + strings.Repeat("x", 400) + `"}}}]`, 400, resInvalidEntries, 0,
			map[string]int{rejectFieldTooLarge: 1}},
	}
	for _, tt := range tests {
		before := rig.l.Snapshot()
		req, err := http.NewRequest(tt.method, "http://"+rig.addr+tt.path, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = tt.hdr
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		after := rig.l.Snapshot()
		if resp.StatusCode != tt.wantCode {
			t.Errorf("%s: got status %d (%s), want %d", tt.name, resp.StatusCode, msg, tt.wantCode)
		}
		if got := after.Ingest.Batches[tt.wantResult] - before.Ingest.Batches[tt.wantResult]; got != 1 {
			t.Errorf("%s: got %d more %s batches, want 1", tt.name, got, tt.wantResult)
		}
		if got := int(after.Enqueued - before.Enqueued); got != tt.wantAccepted {
			t.Errorf("%s: got %d rows enqueued, want %d", tt.name, got, tt.wantAccepted)
		}
		for _, reason := range rejectReasons {
			if got := int(after.Ingest.Rejected[reason] - before.Ingest.Rejected[reason]); got != tt.wantRejected[reason] {
				t.Errorf("%s: got %d entries rejected as %s, want %d", tt.name, got, reason, tt.wantRejected[reason])
			}
		}
		if bytes.Contains(msg, []byte("xxxx")) {
			t.Errorf("%s: the answer echoes the batch: %s", tt.name, msg)
		}
	}
	s := checkIngestIdentity(t, rig.l)
	if s.Received != 1+1+2+3+1 || s.Enqueued != 2 {
		t.Errorf("got %+v, want 8 received, 2 enqueued", s)
	}
	if got := testutil.CollectAndCount(rig.reg, "apisix_edge_log_ingest_batches_total"); got != len(batchResults) {
		t.Errorf("got %d batch result series, want %d", got, len(batchResults))
	}
	// one line per result at most, whatever the number of bad batches
	for range 50 {
		rig.post(t, IngestPath, jsonHdr, []byte("nope"))
	}
	if got := rig.logs.FilterMessageSnippet("malformed").Len(); got != 1 {
		t.Errorf("got %d log lines for malformed batches, want 1 (throttled)", got)
	}
}

// defaultBatch returns a batch of n default entries shaped like the
// captured one (its first entry, a request id per entry).
func defaultBatch(t testing.TB, n int, prefix string) []byte {
	t.Helper()
	var entries []json.RawMessage
	if err := json.Unmarshal(readFixture(t, "default-entry.json"), &entries); err != nil {
		t.Fatal(err)
	}
	tmpl := string(entries[0])
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strings.Replace(tmpl, `"cap-default-1"`, fmt.Sprintf(`"%s-%d"`, prefix, i), 1))
	}
	b.WriteByte(']')
	return []byte(b.String())
}

// TestIngestClickHouseKilledUnderLoad: batches keep arriving while
// ClickHouse is killed and restarted. With the spool on nothing is lost:
// every entry received is in ClickHouse once it is back; with it off the
// losses are exactly the rows counted dropped. Both keep the identities.
func TestIngestClickHouseKilledUnderLoad(t *testing.T) {
	t.Parallel()
	for _, spoolOn := range []bool{true, false} {
		t.Run(fmt.Sprint("spool=", spoolOn), func(t *testing.T) {
			t.Parallel()
			ch := startCH(t)
			// With the spool on, max_pending holds the whole run: rows wait
			// in memory only while the spool writes (fsync per batch), so
			// no loss may come from the memory bound on a slow disk.
			spool, maxPending := "", 3000
			if spoolOn {
				spool = fmt.Sprintf("  spool: {enabled: true, dir: %s}\n", filepath.Join(t.TempDir(), "spool"))
				maxPending = 20000
			}
			rig := startIngest(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 500\n  max_pending: %d\n  flush_interval: 20ms\n"+
				"  dial_timeout: 200ms\n  retries: {max_attempts: 2, backoff: 10ms, max_backoff: 100ms}\n%s"+
				"  ingest: {listen: \"127.0.0.1:0\"}\n", ch.NativeAddr(), maxPending, spool), nil)
			hdr := http.Header{"Content-Type": {"application/json"}}
			const batches, per = 60, 200
			for i := range batches {
				switch i {
				case 15:
					if err := ch.Kill(); err != nil {
						t.Fatal(err)
					}
				case 45:
					if err := ch.Restart(); err != nil {
						t.Fatal(err)
					}
				}
				if code, msg := rig.post(t, IngestPath, hdr, defaultBatch(t, per, fmt.Sprint("b", i))); code != 200 {
					t.Fatalf("batch %d: got %d %s, want 200", i, code, msg)
				}
			}
			eventually(t, func() bool { s := rig.l.Snapshot(); return s.QueueRows == 0 && s.SpoolRows == 0 })
			shutdown(t, rig.l)
			in := checkIngestIdentity(t, rig.l)
			s := checkIdentity(t, rig.l)
			var dropped uint64
			for _, v := range s.Dropped {
				dropped += v
			}
			if in.Received != batches*per || in.Enqueued != batches*per || s.Enqueued != batches*per {
				t.Errorf("got ingest %+v, logger %+v, want %d received and enqueued", in, s, batches*per)
			}
			n, err := ch.Count(context.Background(), "edge_access_log")
			if err != nil {
				t.Fatal(err)
			}
			if n != s.Inserted || n+dropped != batches*per {
				t.Errorf("got %d rows in ClickHouse, %d inserted, %d dropped, want inserted + dropped = %d", n, s.Inserted, dropped, batches*per)
			}
			if spoolOn && (dropped != 0 || s.Spooled == 0) {
				t.Errorf("spool on: got %v dropped, %d spooled, want nothing dropped and the outage spooled", s.Dropped, s.Spooled)
			}
			if !spoolOn && dropped == 0 {
				t.Errorf("spool off: got nothing dropped through a %d-batch outage with max_pending 3000", 30)
			}
		})
	}
}

// TestIngestSealedConsumer: the consumer of a rejected request (a 429 after
// jwtcache verified the token) comes from the sealed X-Edge-Log-Consumer
// the runner added to its answer; a value it cannot open is counted and
// never stored, nor is the sealed value itself.
func TestIngestSealedConsumer(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	rig := startIngest(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 100\n  flush_interval: 20ms\n  ingest: {listen: \"127.0.0.1:0\"}\n", ch.NativeAddr()), nil)
	defer shutdown(t, rig.l)
	sealed := core.SealConsumer("user-7")
	sealed2 := core.SealConsumer("user-8")
	body := fmt.Sprintf(`{"route_id":"r","status":"429","x_request_id":"s1","consumer_sealed":%q}
{"route_id":"r","status":"429","x_request_id":"s2","consumer_sealed":"forged-value"}
{"route_id":"r","status":"200","x_request_id":"s3","consumer":"user-9","consumer_sealed":%q}
[{"route_id":"r","response":{"status":429,"headers":{"x-edge-log-consumer":%q}},"request":{"headers":{"x-request-id":"s4"}}}]`, sealed, sealed, sealed2)
	// a default entry in new_line framing: one array per line is not what
	// APISIX sends, so send it alone
	lines := strings.SplitN(body, "\n", 4)
	if code, msg := rig.post(t, IngestPath, http.Header{"Content-Type": {"text/plain"}}, []byte(strings.Join(lines[:3], "\n"))); code != 200 {
		t.Fatalf("got %d %s", code, msg)
	}
	if code, msg := rig.post(t, IngestPath, http.Header{"Content-Type": {"application/json"}}, []byte(lines[3])); code != 200 {
		t.Fatalf("got %d %s", code, msg)
	}
	eventually(t, func() bool { return rig.l.Snapshot().Inserted == 4 })
	got := queryRows(t, ch, "")
	for id, want := range map[string]string{"s1": "user-7", "s2": "", "s3": "user-9", "s4": "user-8"} {
		if c := strings.Split(got[id], "|")[10]; c != want {
			t.Errorf("row %s: got consumer %q, want %q", id, c, want)
		}
		if strings.Contains(got[id], sealed) || strings.Contains(got[id], sealed2) {
			t.Errorf("row %s holds the sealed value: %s", id, got[id])
		}
	}
	if s := rig.l.Snapshot().Ingest.SealedConsumers; s["opened"] != 2 || s["invalid"] != 1 {
		t.Errorf("got sealed counts %v, want 2 opened, 1 invalid", s)
	}
}

// oldDDL is the table of the release before the log-phase path.
const oldDDL = `CREATE TABLE edge_access_log (ts DateTime, route_id String, method String, host String, path String, status UInt16,
 latency_ms UInt32, client_ip String, user_agent String, request_id String, tenant String, consumer String,
 req_header_names Array(String), req_header_values Array(String), resp_header_names Array(String), resp_header_values Array(String))
 ENGINE = MergeTree() PARTITION BY toYYYYMMDD(ts) ORDER BY (route_id, ts)`

// TestIngestCustomColumns: custom columns of every type, from an entry
// key, a request header and a response header; create_table adds them and
// the log-phase columns to a table of the earlier release (ALTER TABLE on
// 18.16), whose old rows read the defaults.
func TestIngestCustomColumns(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	ctx := context.Background()
	if err := ch.Exec(ctx, oldDDL); err != nil {
		t.Fatal(err)
	}
	if err := ch.Exec(ctx, "INSERT INTO edge_access_log (ts, route_id, request_id) SELECT now(), 'old', 'old-1'"); err != nil {
		t.Fatal(err)
	}
	rig := startIngest(t, fmt.Sprintf(`  addrs: [%q]
  create_table: true
  batch_size: 100
  flush_interval: 20ms
  ingest:
    listen: "127.0.0.1:0"
    columns:
      - {name: accept, from: "header:Accept"}
      - {name: content_type, type: String, from: "response_header:Content-Type"}
      - {name: query_i, type: UInt16, from: "entry:nope"}
      - {name: started, type: DateTime, from: "entry:start_time"}
      - {name: lat, type: Float64, from: "entry:latency"}
      - {name: up32, type: UInt32, from: "entry:upstream_latency"}
      - {name: up64, type: UInt64, from: "response_header:x-ratelimit-remaining"}
      - {name: neg, type: Int64, from: "entry:neg"}
      - {name: route_copy, from: "entry:route_id"}
`, ch.NativeAddr()), nil)
	defer shutdown(t, rig.l)
	body := bytes.Replace(defaultBatch(t, 1, "cc"), []byte(`"route_id"`), []byte(`"neg":-42,"route_id"`), 1)
	if code, msg := rig.post(t, IngestPath, http.Header{"Content-Type": {"application/json"}}, body); code != 200 {
		t.Fatalf("got %d %s", code, msg)
	}
	eventually(t, func() bool { return rig.l.Snapshot().Inserted == 1 })
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got string
	err = conn.QueryRow(ctx, "SELECT arrayStringConcat([accept, content_type, toString(query_i), toString(toUnixTimestamp(started)), toString(lat), "+
		"toString(up32), toString(up64), toString(neg), route_copy, route_id], '|') FROM edge_access_log WHERE request_id = 'cc-0'").Scan(&got)
	if err != nil {
		t.Fatal(err)
	}
	if want := "*/*|text/plain; charset=utf-8|0|1796228840|3.000020980835|1|999999|-42|peer-cap-default|peer-cap-default"; got != want {
		t.Errorf("custom columns:\n got %s\nwant %s", got, want)
	}
	var old string
	err = conn.QueryRow(ctx, "SELECT arrayStringConcat([source, toString(rl_limit), toString(retry_after), accept], '|') FROM edge_access_log WHERE request_id = 'old-1'").Scan(&old)
	if err != nil {
		t.Fatal(err)
	}
	if want := "post_resp|-1|-1|"; old != want {
		t.Errorf("a row of the earlier release: got %s, want %s", old, want)
	}
}

// TestIngestPostRespRowsKeepWorking: post-resp rows land in the extended
// table with the log-phase columns at their defaults.
func TestIngestPostRespRowsKeepWorking(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: 10\n  flush_interval: 20ms\n  ingest: {listen: \"off\"}\n", ch.NativeAddr()))
	l, _ := newTestLogger(t, cfg)
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	l.ResponseFilter(conf, newTestResponse(3))
	eventually(t, func() bool { return l.Snapshot().Inserted == 1 })
	shutdown(t, l)
	if l.IngestAddr() != "" || l.Snapshot().Ingest != nil {
		t.Errorf("ingest off: got addr %q, snapshot %+v", l.IngestAddr(), l.Snapshot().Ingest)
	}
	got := queryRows(t, ch, "")["req-3"]
	if parts := strings.Split(got, "|"); len(parts) != 22 || strings.Join(parts[11:], "|") != "post_resp|||0|0|0|0||-1|-1|-1" {
		t.Errorf("post-resp row: got %s, want the log-phase columns at their defaults", got)
	}
}

// TestIngestReusePort: a second runner binds the same port while the first
// still listens (apisix reload); once the first shuts down, batches reach
// the second.
func TestIngestReusePort(t *testing.T) {
	t.Parallel()
	port, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("  addrs: [\"127.0.0.1:1\"]\n  flush_interval: 1h\n  ingest: {listen: \"127.0.0.1:%d\"}\n", port)
	old := startIngest(t, yaml, nil)
	nw := startIngest(t, yaml, nil)
	if old.addr != nw.addr {
		t.Fatalf("got %s and %s, want the same address", old.addr, nw.addr)
	}
	shutdown(t, old.l)
	for i := range 20 {
		if code, msg := nw.post(t, IngestPath, nil, []byte(fmt.Sprintf(`{"route_id":"r","x_request_id":"%d"}`, i))); code != 200 {
			t.Fatalf("after the old runner left: got %d %s, want 200", code, msg)
		}
	}
	if got := nw.l.Snapshot().Ingest.Enqueued; got != 20 {
		t.Errorf("got %d entries in the new runner, want 20", got)
	}
	shutdown(t, nw.l)
	// after shutdown the port is closed
	if c, err := net.Dial("tcp", nw.addr); err == nil {
		c.Close()
		t.Errorf("got a connection after shutdown, want refused")
	}
}

// TestIngestShutdownFlushes: batches taken (answered 200) before SIGTERM
// are flushed by the shutdown, with flush_interval far away.
func TestIngestShutdownFlushes(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	rig := startIngest(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  flush_interval: 1h\n  ingest: {listen: \"127.0.0.1:0\"}\n", ch.NativeAddr()), nil)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := defaultBatch(t, 500, fmt.Sprint("sd", i))
			req, _ := http.NewRequest(http.MethodPost, "http://"+rig.addr+IngestPath, bytes.NewReader(body))
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	shutdown(t, rig.l)
	s := checkIdentity(t, rig.l)
	in := checkIngestIdentity(t, rig.l)
	if s.Inserted != in.Enqueued || in.Enqueued != 2000 {
		t.Errorf("got %d inserted of %d enqueued, want all 2000", s.Inserted, in.Enqueued)
	}
}

func TestIngestConfig(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		wantErr  []string
		check    func(IngestConfig) string
		checkAll func(Config) string // instead of check: the whole section
	}{
		{name: "defaults", yaml: "", check: func(c IngestConfig) string {
			if c.Listen != "127.0.0.1:9543" || c.AuthHeader != "" || c.MaxBodyBytes != 8<<20 || c.MaxEntries != 10000 || c.MaxFieldBytes != 65536 || len(c.Columns) != 0 {
				return fmt.Sprintf("got %+v, want the documented defaults", c)
			}
			return ""
		}},
		{name: "off", yaml: "  ingest: {listen: \"off\"}\n", check: func(c IngestConfig) string {
			if c.Enabled() {
				return "got enabled, want off"
			}
			return ""
		}},
		{name: "column type defaults to String", yaml: "  ingest: {columns: [{name: region, from: \"entry:region\"}]}\n", check: func(c IngestConfig) string {
			if c.Columns[0].Type != "String" {
				return "got type " + c.Columns[0].Type + ", want String"
			}
			return ""
		}},
		{name: "bad values name their field", yaml: `  ingest:
    listen: "nope"
    max_body_bytes: 10
    max_entries: -1
    max_field_bytes: 1
    auth_header: "a\nb"
    columns:
      - {name: "1x", type: String, from: "entry:a"}
      - {name: status, type: String, from: "entry:a"}
      - {name: ok, type: Map, from: "entry:a"}
      - {name: ok2, from: "header:Authorization"}
      - {name: ok3, from: "cookie:x"}
      - {name: ok4, from: "response_header:Set-Cookie"}
      - {name: OK4, from: "header:bad header"}
`, wantErr: []string{
			`clickhouse.ingest.listen: must be host:port or "off", got "nope"`,
			`clickhouse.ingest.max_body_bytes: must be between 1024 and 268435456, got 10`,
			`clickhouse.ingest.max_entries: must be between 1 and 1000000, got -1`,
			`clickhouse.ingest.max_field_bytes: must be between 256 and 16777216, got 1`,
			`clickhouse.ingest.auth_header: must be one line`,
			`clickhouse.ingest.columns[0].name: must be letters, digits and '_'`,
			`clickhouse.ingest.columns[1].name: must not be a built-in column, got "status"`,
			`clickhouse.ingest.columns[2].type: must be one of String, UInt16, UInt32, UInt64, Int64, Float64, DateTime, got "Map"`,
			`clickhouse.ingest.columns[3].from: must not name a credential header`,
			`clickhouse.ingest.columns[4].from: must be entry:<key>, header:<name> or response_header:<name>, got "cookie:x"`,
			`clickhouse.ingest.columns[5].from: must not name a credential header`,
			`clickhouse.ingest.columns[6].name: must be unique, got "OK4" twice`,
			`clickhouse.ingest.columns[6].from: must name an HTTP header, got "header:bad header"`,
		}},
		{name: "insert_concurrency defaults to 2 with one server", yaml: "  addrs: [\"127.0.0.1:9000\"]\n", checkAll: func(c Config) string {
			if c.InsertConcurrency != 2 {
				return fmt.Sprintf("got insert_concurrency %d, want 2", c.InsertConcurrency)
			}
			return ""
		}},
		{name: "insert_concurrency defaults to 1 with several servers", yaml: "  addrs: [\"127.0.0.1:9000\", \"127.0.0.2:9000\"]\n", checkAll: func(c Config) string {
			if c.InsertConcurrency != 1 {
				return fmt.Sprintf("got insert_concurrency %d, want 1", c.InsertConcurrency)
			}
			return ""
		}},
		{name: "insert_concurrency out of range", yaml: "  insert_concurrency: 17\n",
			wantErr: []string{`clickhouse.insert_concurrency: must be between 1 and 16, got 17`}},
		{name: "non-loopback needs a secret", yaml: "  ingest: {listen: \"0.0.0.0:9543\"}\n",
			wantErr: []string{`clickhouse.ingest.listen: a non-loopback address needs ingest.auth_header, got "0.0.0.0:9543"`}},
		{name: "non-loopback with a secret", yaml: "  ingest: {listen: \"0.0.0.0:9543\", auth_header: \"Bearer x\"}\n", check: func(IngestConfig) string { return "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc struct {
				C Config `yaml:"clickhouse"`
			}
			if err := core.DecodeYAML([]byte("clickhouse:\n"+tt.yaml), nil, &doc); err != nil {
				t.Fatal(err)
			}
			doc.C.ApplyDefaults()
			err := errors.Join(doc.C.Validate()...)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				if tt.checkAll != nil {
					if msg := tt.checkAll(doc.C); msg != "" {
						t.Error(msg)
					}
					return
				}
				if msg := tt.check(doc.C.Ingest); msg != "" {
					t.Error(msg)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want %v", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got\n%v\nwant a line containing %q", err, w)
				}
			}
		})
	}
}

// TestRecommendedLogFormat: every key of the log_format documented in
// docs/clickhouselogger.md (and shipped in apisix/global_rules/edge-log.json,
// which apisix/apisix_test.go compares with it) is one the decoder reads.
func TestRecommendedLogFormat(t *testing.T) {
	docs, err := os.ReadFile("../../docs/clickhouselogger.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(docs), "<!-- log_format -->\n```json\n")
	if !ok {
		t.Fatal("docs/clickhouselogger.md: no log_format block")
	}
	block, _, _ := strings.Cut(after, "```")
	var lf map[string]string
	if err := json.Unmarshal([]byte(block), &lf); err != nil {
		t.Fatalf("documented log_format: %v", err)
	}
	if len(lf) != 22 {
		t.Errorf("got %d keys in the documented log_format, want the 22 of the contract", len(lf))
	}
	for k, v := range lf {
		if _, known := topTarget([]byte(k)); !known {
			t.Errorf("log_format key %q (%s): the decoder does not read it", k, v)
		}
		if !strings.HasPrefix(v, "$") {
			t.Errorf("log_format key %q: got %q, want an nginx variable", k, v)
		}
	}
}

// TestIngestChunkedBody: a body without Content-Length (chunked) is read up
// to max_body_bytes, and refused past it.
func TestIngestChunkedBody(t *testing.T) {
	t.Parallel()
	rig := startIngest(t, "  addrs: [\"127.0.0.1:1\"]\n  flush_interval: 1h\n  ingest: {listen: \"127.0.0.1:0\", max_body_bytes: 4096}\n", nil)
	defer shutdown(t, rig.l)
	for _, tt := range []struct {
		n        int
		wantCode int
	}{{10, 200}, {200, 413}} {
		body := strings.Repeat(`{"route_id":"r","status":"200"}`+"\n", tt.n)
		// io.MultiReader hides the length: the client sends it chunked
		req, err := http.NewRequest(http.MethodPost, "http://"+rig.addr+IngestPath, io.MultiReader(strings.NewReader(body)))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantCode {
			t.Errorf("%d entries chunked: got %d %s, want %d", tt.n, resp.StatusCode, msg, tt.wantCode)
		}
	}
	if s := checkIngestIdentity(t, rig.l); s.Enqueued != 10 || s.Batches[resTooLarge] != 1 {
		t.Errorf("got %+v, want 10 enqueued and one batch too large", s)
	}
}
