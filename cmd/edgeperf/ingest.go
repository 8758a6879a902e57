package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// The log-phase ingest scenario (issue 13): JSON batches of 1000 default
// http-logger entries, shaped like the ones APISIX 3.18 sends (a JWT in
// the request headers, about 1.6 KB an entry), POSTed over loopback to the
// ingest listener of a runner of its own (so that its CPU is the ingest's
// alone) and inserted into the same clickhouse-server as the bare insert
// of the limits, right after it.

// ingestEntry is one default entry; %d is the entry's number, %s the
// batch's tag.
const ingestEntry = `{"apisix_latency":2.000020980835,"latency":3.000020980835,"route_id":"bench-route","response":{"size":"341","headers":{"server":"APISIX/3.18.0","date":"Wed, 02 Dec 2026 16:27:20 GMT","x-ratelimit-limit":"1000000","content-type":"text/plain; charset=utf-8","x-ratelimit-remaining":"999999","content-length":"95","x-ratelimit-reset":"60","connection":"close"},"status":200},"server":{"version":"3.18.0","hostname":"bench"},"client_ip":"127.0.0.1","upstream":"127.0.0.1:8080","service_id":"","request":{"size":"759","headers":{"accept":"*/*","x-request-id":"%s-%d","user-agent":"edgeperf/1","x-forwarded-proto":"http","x-forwarded-host":"127.0.0.1:9080","x-forwarded-port":"9080","x-tenant-id":"acme","authorization":"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJlZGdlLWFwaSIsImV4cCI6MTc5NjI3MTIyNywiaWF0IjoxNzk2MjI4MDI3LCJpc3MiOiJodHRwOi8va2V5Y2xvYWs6ODA4MC9yZWFsbXMvZWRnZSIsImp0aSI6IlhHTmtmN3hrWGJWZEM1TnYiLCJzdWIiOiJ1c2VyLTQyIiwidGVuYW50X2lkIjoiYWNtZSJ9.LORI-p3A2UI7_HyYRnb6tIKw-YbwaKToioDJSW7o1hrSUVJVdxgQgcjF-tBP8RFW9MDPQSjypaKJAVGK8nh3STzq3HcizPHbk5ZyHjZXe9ZqkZ24mkuejnE4KaJLnf0e5qfK2uzhHfH6tWdOUHr7Yqh0rbdV87VS9xB6oVxF4r39lgsAAtBSvC-S5AUJNq-cXFDmPYTSNpITab_aNE5jGR8LuPHmXwOJEEN94v_L7KNt5HdKulrZfzM_a4z8uhvkgrGsyJyKsyK9G8XMh-a-Rm5-b-XE_FlNW5KgC5LnpJRRAb1KMz4UL58lEStv8SdYU5iF_SghtNlufGoq7fis4w","host":"127.0.0.1:9080","x-edge-consumer":"user-42","x-user-id":"user-42"},"querystring":{"i":"1"},"method":"GET","url":"http://127.0.0.1:9080/bench/item?i=1","uri":"/bench/item?i=1"},"start_time":1796228840632,"upstream_latency":1}`

const (
	ingestPerBatch = 1000
	ingestPosters  = 2 // concurrent batches, as from two nginx workers
	ingestTable    = "edgeperf_ingest"
)

type ingestResult struct {
	batches, entries int
	bodyBytes        int
	accept           time.Duration // first POST to the last answer
	total            time.Duration // first POST to the last row inserted
	inserted         float64
	dropped          float64
	cpu              time.Duration // the runner's CPU over total
	chCPU            time.Duration // clickhouse-server's CPU over total
	loadCPU          time.Duration // edgeperf's own CPU over total (posting the batches)
	machineBusy      time.Duration // every core's non-idle time over total (/proc/stat)
	machineAll       time.Duration // every core's time over total
	inTable          uint64
	refused          int
	err              error
	// The bare insert of the ingest's own rows, after the run
	// (bareSameRows).
	bareRows int
	bareTime time.Duration
	bareCols int
	bareErr  error
}

// bareRowsPerSec is the bare insert rate of the ingest's own rows, 0 when
// not measured.
func (r *ingestResult) bareRowsPerSec() float64 {
	if r.bareTime <= 0 {
		return 0
	}
	return float64(r.bareRows) / r.bareTime.Seconds()
}

func (r *ingestResult) rowsPerSec() float64 {
	if r.total <= 0 {
		return 0
	}
	return r.inserted / r.total.Seconds()
}

// measureIngest runs the scenario. It never fails the run: errors are
// reported in the section.
func measureIngest(ctx context.Context, o *options, e *env, pr *progress) *ingestResult {
	res := &ingestResult{batches: 2000}
	if o.quick {
		res.batches = 10
	}
	pr.printf("log-phase ingest: %d JSON batches of %d default http-logger entries over loopback", res.batches, ingestPerBatch)
	res.err = res.run(ctx, o, e)
	if res.err == nil {
		pr.printf("bare insert of the ingest's own rows")
		res.bareErr = res.bareSameRows(ctx, o, e)
	}
	return res
}

func (res *ingestResult) run(ctx context.Context, o *options, e *env) error {
	adminPort, err := backing.FreePort()
	if err != nil {
		return err
	}
	ingestPort, err := backing.FreePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`log:
  level: warn
admin:
  listen: 127.0.0.1:%d
  pprof: %v
clickhouse:
  addrs: [%q]
  table: %s
  create_table: true
  max_pending: 400000
  ingest:
    listen: 127.0.0.1:%d
`, adminPort, o.profile != "", e.ch.NativeAddr(), ingestTable, ingestPort)
	path := filepath.Join(e.dir, "go-runner-ingest.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("ingest: write runner config: %w", err)
	}
	rn, err := testbed.StartRunner(testbed.RunnerOptions{Path: o.runner, Args: []string{"run", "-c", path}})
	if err != nil {
		return fmt.Errorf("ingest: start runner: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rn.Stop(sctx)
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/apisix/http-logger?", ingestPort)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	bodies := make([][]byte, 8)
	for k := range bodies {
		var b bytes.Buffer
		b.WriteByte('[')
		for i := range ingestPerBatch {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, ingestEntry, "b"+strconv.Itoa(k), i)
		}
		b.WriteByte(']')
		bodies[k] = b.Bytes()
	}
	res.bodyBytes = len(bodies[0])
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}} // a new connection per batch, as APISIX
	post := func(body []byte) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// The listener binds in the background: wait for it, then warm up
	// (table creation, connections).
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := post([]byte("[]"))
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ingest: listener not answering: %v (status %d)\n%s", err, code, tail(rn.Output(), 1000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 3 {
		if code, err := post(bodies[i]); err != nil || code != 200 {
			return fmt.Errorf("ingest: warm-up batch: status %d, %v", code, err)
		}
	}
	base, err := ingestCounters(ctx, admin, 3*ingestPerBatch)
	if err != nil {
		return err
	}
	// The runner of its own, clickhouse-server and this process posting.
	pids := [numProcs]int{procLoad: os.Getpid(), procRunner: rn.PID(), procCH: e.ch.PID()}
	cpu0, err := readCPU(pids)
	if err != nil {
		return err
	}
	busy0, all0, err := machineCPU()
	if err != nil {
		return err
	}
	var prof sync.WaitGroup
	if o.profile != "" {
		// -profile: the runner's CPU profile over the run (taking the
		// batches, then inserting them), in DIR/ingest.pprof.
		prof.Add(1)
		go func() {
			defer prof.Done()
			resp, err := http.Get(admin + "/debug/pprof/profile?seconds=6")
			if err != nil {
				return
			}
			defer resp.Body.Close()
			if b, err := io.ReadAll(resp.Body); err == nil && os.MkdirAll(o.profile, 0o755) == nil {
				_ = os.WriteFile(filepath.Join(o.profile, "ingest.pprof"), b, 0o644)
			}
		}()
	}
	defer prof.Wait()
	var next, refused atomic.Int64
	var wg sync.WaitGroup
	var postErr error
	var mu sync.Mutex
	start := time.Now()
	for range ingestPosters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1) - 1
				if n >= int64(res.batches) {
					return
				}
				code, err := post(bodies[n%int64(len(bodies))])
				if err != nil {
					mu.Lock()
					postErr = errors.Join(postErr, err)
					mu.Unlock()
					return
				}
				if code != 200 {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	res.accept = time.Since(start)
	res.refused = int(refused.Load())
	if postErr != nil {
		return fmt.Errorf("ingest: post: %w", postErr)
	}
	want := base.enqueued + float64(res.batches*ingestPerBatch)
	var c counters
	for {
		if c, err = ingestCounters(ctx, admin, 0); err != nil {
			return err
		}
		if c.inserted+c.dropped >= want || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.total = time.Since(start)
	cpu1, err := readCPU(pids)
	if !cpu1.ok[procRunner] {
		return err
	}
	used := cpu1.since(cpu0)
	res.cpu, res.chCPU, res.loadCPU = used.d[procRunner], used.d[procCH], used.d[procLoad]
	if busy1, all1, err := machineCPU(); err == nil {
		res.machineBusy, res.machineAll = busy1-busy0, all1-all0
	}
	res.entries = res.batches * ingestPerBatch
	res.inserted = c.inserted - base.inserted
	res.dropped = c.dropped - base.dropped
	if c.enqueued != want {
		return fmt.Errorf("ingest: %0.f entries enqueued, want %0.f", c.enqueued, want)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if res.inTable, err = e.ch.Count(cctx, ingestTable); err != nil {
		return fmt.Errorf("ingest: count rows: %w", err)
	}
	if float64(res.inTable) != c.inserted {
		return fmt.Errorf("ingest: %d rows in ClickHouse, the runner counts %.0f inserted", res.inTable, c.inserted)
	}
	return nil
}

type counters struct{ enqueued, inserted, dropped float64 }

// ingestCounters reads the logger's counters from /status; with want > 0
// it waits until that many rows are resolved (the warm-up).
func ingestCounters(ctx context.Context, admin string, want float64) (counters, error) {
	for {
		var c counters
		resp, err := http.Get(admin + "/status")
		if err != nil {
			return c, fmt.Errorf("ingest: /status: %w", err)
		}
		var st struct {
			Plugins struct {
				CHL struct {
					Enqueued uint64            `json:"enqueued"`
					Inserted uint64            `json:"inserted"`
					Dropped  map[string]uint64 `json:"dropped"`
				} `json:"clickhouselogger"`
			} `json:"plugins"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return c, fmt.Errorf("ingest: /status: %w", err)
		}
		l := st.Plugins.CHL
		c.enqueued, c.inserted = float64(l.Enqueued), float64(l.Inserted)
		for _, v := range l.Dropped {
			c.dropped += float64(v)
		}
		if c.inserted+c.dropped >= want || ctx.Err() != nil {
			return c, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procCPU returns the user and system CPU time of process pid
// (/proc/<pid>/stat, in clock ticks of 10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("process CPU of pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("process CPU of pid %d: short /proc stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond, nil
}

// machineCPU returns the time of every core, busy (not idle nor waiting
// for I/O) and in all, from the cpu line of /proc/stat (clock ticks of
// 10 ms).
func machineCPU() (busy, all time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("ingest: machine CPU: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("ingest: machine CPU: unexpected /proc/stat")
	}
	var total, idle int64
	for i, v := range f[1:] {
		if i >= 8 { // guest time is already in user
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return time.Duration(total-idle) * 10 * time.Millisecond, time.Duration(total) * 10 * time.Millisecond, nil
}

func (r *report) writeIngest(p func(string, ...any)) {
	in := r.ingest
	p("## Log-phase ingest (APISIX http-logger batches)\n\n")
	if in == nil {
		p("Not run.\n\n")
		return
	}
	p("JSON batches of %d default http-logger entries (%d bytes a batch, shaped like APISIX 3.18's, a JWT in each entry's request headers), ", ingestPerBatch, in.bodyBytes)
	p("%d at a time, each on a new connection as APISIX posts them, to `POST /apisix/http-logger` of a runner of its own (`clickhouse.ingest`, defaults otherwise, `max_pending` 400000), ", ingestPosters)
	p("inserted into the same clickhouse-server right after the bare insert above. Rows/s counts from the first POST to the last row inserted.\n\n")
	if in.err != nil {
		p("ERROR: %s\n\n", mdCell(in.err.Error()))
		if in.total == 0 {
			return
		}
	}
	bare := r.limits.insertRowsPerSec()
	p("| batches | entries | accepted in | all inserted in | rows/s end to end | bare insert rows/s (this run) | ratio | bare insert of the ingest's rows | ratio | dropped | refused batches | runner CPU per row |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ratio := "n/a"
	if bare > 0 {
		ratio = fmt.Sprintf("%.2f", in.rowsPerSec()/bare)
	}
	same, sameRatio := "n/a", "n/a"
	if v := in.bareRowsPerSec(); v > 0 {
		same, sameRatio = fmt.Sprintf("%.0f", v), fmt.Sprintf("%.2f", in.rowsPerSec()/v)
	} else if in.bareErr != nil {
		same = "ERROR: " + mdCell(in.bareErr.Error())
	}
	cpuRow := "n/a"
	if in.inserted > 0 {
		cpuRow = fmt.Sprintf("%.2f µs", float64(in.cpu.Microseconds())/(in.inserted+in.dropped))
	}
	p("| %d | %d | %s (%.0f entries/s) | %s | **%.0f** | %.0f | %s | %s | %s | %.0f | %d | %s |\n\n", in.batches, in.entries,
		in.accept.Round(time.Millisecond), float64(in.entries)/in.accept.Seconds(), in.total.Round(time.Millisecond),
		in.rowsPerSec(), bare, ratio, same, sameRatio, in.dropped, in.refused, cpuRow)
	if in.bareTime > 0 {
		p("*Bare insert of the ingest's rows*: one row the runner inserted, read back with its %d columns, inserted again after the run, %d rows in %s, %d copies a batch (distinct request ids) into a table of the same structure, with the bare insert's client (native, lz4, one connection, column-wise appends): what ClickHouse and the driver reach for these very rows with no HTTP, no JSON and no queue. The bare insert above sends slimmer rows (one header each way, the post-resp columns only). ",
			in.bareCols, in.bareRows, in.bareTime.Round(time.Millisecond), bareBatch)
	}
	p("Runner CPU per row is the runner process's user + system time over the run (from `/proc`), divided by the rows: decoding, the queue, the flusher's column encoding and the insert's compression and send. ")
	if rows := in.inserted + in.dropped; rows > 0 {
		perRow := func(d time.Duration) string { return fmt.Sprintf("%.2f µs", float64(d.Microseconds())/rows) }
		busy := "n/a"
		if in.machineAll > 0 {
			busy = fmt.Sprintf("%.0f%%", 100*float64(in.machineBusy)/float64(in.machineAll))
		}
		p("CPU per row over the same interval, by process:\n\n| runner | clickhouse-server | load generator (edgeperf, posting) | whole machine (every process) | machine busy |\n|---|---|---|---|---|\n")
		p("| %s | %s | %s | %s | %s |\n\n", perRow(in.cpu), perRow(in.chCPU), perRow(in.loadCPU), perRow(in.machineBusy), busy)
		p("The whole machine's CPU per row bounds the rows/s end to end: with every core busy, no more than cores ÷ (CPU per row) rows/s. ")
	}
	p("Rows in ClickHouse: %d (the runner counts the same inserted).\n\n", in.inTable)
	if v, ok := r.micro.get("BenchmarkIngestDecode/default", "cpu-ns/entry"); ok {
		ns, _ := r.micro.get("BenchmarkIngestDecode/default", "ns/entry")
		allocs, _ := r.micro.get("BenchmarkIngestDecode/default", "allocs/op")
		lf, _ := r.micro.get("BenchmarkIngestDecode/log_format", "cpu-ns/entry")
		p("Parse cost (`BenchmarkIngestDecode`, below): %.0f ns CPU (%.0f ns wall) per default entry, %.0f allocations per batch of 1000 entries; %.0f ns CPU per log_format entry.\n\n", v, ns, allocs, lf)
	}
}
