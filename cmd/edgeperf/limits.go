package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// limits are the physical limits measured on the same machine in the same
// run: what Redis, ClickHouse and the CPU can do with no runner in between.
type limits struct {
	scriptSHA    string
	scriptSource string
	scriptLoaded string // whether the runner had loaded the same script
	redis        []redisBench
	evalUsec     string // Redis CPU per EVALSHA call (INFO commandstats)

	insertRows   int
	insertTime   time.Duration
	insertErr    error
	rsaSingle    float64 // verifications/s, one goroutine
	rsaAll       float64 // verifications/s, one goroutine per core
	rsaNsOp      float64
	errs         []error
	redisErr     error
	redisCommand string
	bare         []bareResult // the limiter's commands, bare (rlbare.go)
}

type redisBench struct {
	pipeline int
	clients  int
	requests int
	rps      float64
	p50, p99 string // ms, as printed by redis-benchmark
}

func measureLimits(ctx context.Context, o *options, e *env, pr *progress) *limits {
	l := &limits{}
	pr.printf("redis-benchmark: the limiter's script, unpipelined and pipelined")
	if err := l.redisBench(ctx, o, e); err != nil {
		l.redisErr = err
		l.errs = append(l.errs, err)
	}
	pr.printf("the limiter's commands, bare, at c=1 and c=64")
	l.measureBare(ctx, e, o.rsaFor)
	pr.printf("bare batch insert into ClickHouse")
	if err := l.chInsert(ctx, o, e); err != nil {
		l.insertErr = err
		l.errs = append(l.errs, err)
	}
	pr.printf("bare RSA-2048 PKCS#1 v1.5 verification")
	if err := l.rsaVerify(ctx, o); err != nil {
		l.errs = append(l.errs, err)
	}
	return l
}

// limiterScript reads the sliding-log script from the ratelimit package's
// source: the package does not export it, and a copy kept here could drift.
func limiterScript(src string) (string, string, error) {
	path := filepath.Join(src, "plugins", "ratelimit", "store.go")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("read the limiter's script: %w", err)
	}
	m := regexp.MustCompile("(?s)const decideSrc = `([^`]*)`").FindSubmatch(b)
	if m == nil {
		return "", "", fmt.Errorf("read the limiter's script: no `const decideSrc` raw string in %s", path)
	}
	return string(m[1]), "plugins/ratelimit/store.go (decideSrc)", nil
}

func (l *limits) redisBench(ctx context.Context, o *options, e *env) error {
	script, where, err := limiterScript(o.src)
	if err != nil {
		return err
	}
	l.scriptSource = where
	sum := sha1.Sum([]byte(script))
	l.scriptSHA = hex.EncodeToString(sum[:])
	c := e.rd.Client()
	defer c.Close()
	// The runner loads its script at start: finding this SHA already there
	// proves the text read from the source is byte for byte the one it runs.
	if ex, err := c.ScriptExists(ctx, l.scriptSHA).Result(); err == nil && len(ex) == 1 {
		if ex[0] {
			l.scriptLoaded = "yes: the runner had already loaded a script with this SHA1"
		} else {
			l.scriptLoaded = "NO: the runner had not loaded a script with this SHA1 (the source may differ from the built binary)"
		}
	}
	sha, err := c.ScriptLoad(ctx, script).Result()
	if err != nil {
		return fmt.Errorf("redis-benchmark: script load: %w", err)
	}
	if sha != l.scriptSHA {
		return fmt.Errorf("redis-benchmark: script load gave sha %s, want %s", sha, l.scriptSHA)
	}
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		return fmt.Errorf("redis-benchmark: config resetstat: %w", err)
	}
	// The key has the limiter's layout (prefix, hash tag, kind a:) with a
	// random address; the member is random too, as the runner's are unique.
	// limit 1000 per 1000 ms window: always under the limit, like the
	// runner's healthy scenario. ARGV[1] empty: Redis' own clock (TIME);
	// one sliding_log rule ("l") of cost 1 (its elapsed-time argument 0).
	cmd := []string{"EVALSHA", l.scriptSHA, "1", "edge:rl:{c:bench|a:__rand_int__}", "", "m:__rand_int__", "l", "1000", "1000", "1", "0"}
	l.redisCommand = "redis-benchmark -c 64 -r 1000000 [-P 16] -n N EVALSHA <sha> 1 'edge:rl:{c:bench|a:__rand_int__}' '' 'm:__rand_int__' l 1000 1000 1 0"
	for i, pipe := range []int{1, 16} {
		n := o.rbN
		if pipe > 1 {
			n = o.rbNP
		}
		args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(e.rd.Port())}
		if e.redisSock {
			args = []string{"-s", e.rd.SocketPath()}
		}
		args = append(args, "-c", "64", "-n", strconv.Itoa(n), "-r", "1000000", "-P", strconv.Itoa(pipe), "--csv")
		args = append(args, cmd...)
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		out, err := exec.CommandContext(cctx, "redis-benchmark", args...).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("redis-benchmark -P %d: %w: %s", pipe, err, tail(string(out), 500))
		}
		rb, err := parseRedisBenchCSV(string(out))
		if err != nil {
			return fmt.Errorf("redis-benchmark -P %d: %w", pipe, err)
		}
		rb.pipeline, rb.clients, rb.requests = pipe, 64, n
		l.redis = append(l.redis, rb)
		if i == 0 {
			l.evalUsec = evalshaUsec(ctx, e)
		}
	}
	return nil
}

// parseRedisBenchCSV reads redis-benchmark --csv: a header line, then
// "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
// "p95_latency_ms","p99_latency_ms","max_latency_ms".
func parseRedisBenchCSV(out string) (redisBench, error) {
	var rb redisBench
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		return rb, fmt.Errorf("parse csv: %w: %q", err, tail(out, 300))
	}
	var head []string
	for _, r := range recs {
		if len(r) > 1 && r[0] == "test" {
			head = r
			continue
		}
		if head == nil || len(r) != len(head) {
			continue
		}
		for i, h := range head {
			switch h {
			case "rps":
				rb.rps, _ = strconv.ParseFloat(r[i], 64)
			case "p50_latency_ms":
				rb.p50 = r[i]
			case "p99_latency_ms":
				rb.p99 = r[i]
			}
		}
		if rb.rps > 0 {
			return rb, nil
		}
	}
	return rb, fmt.Errorf("no result line in %q", tail(out, 300))
}

// evalshaUsec reads Redis' own CPU time per EVALSHA from INFO commandstats.
func evalshaUsec(ctx context.Context, e *env) string {
	c := e.rd.Client()
	defer c.Close()
	s, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return "unknown: " + err.Error()
	}
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
					return v
				}
			}
		}
	}
	return "unknown"
}

// chInsert inserts batches of the logger's batch size into a table created
// from the shipped DDL, over the native protocol with lz4, on one
// connection, column by column: the cheapest path the driver has.
func (l *limits) chInsert(ctx context.Context, o *options, e *env) error {
	ddl, err := os.ReadFile(filepath.Join(o.src, "conf", "clickhouse-schema.sql"))
	if err != nil {
		return fmt.Errorf("bare insert: read the table DDL: %w", err)
	}
	const table = "edgeperf_bare"
	stmt := stripSQLComments(string(ddl))
	if !strings.Contains(stmt, "`edge_access_log`") {
		return fmt.Errorf("bare insert: conf/clickhouse-schema.sql does not create `edge_access_log`")
	}
	stmt = strings.Replace(stmt, "`edge_access_log`", "`"+table+"`", 1)
	stmt = strings.TrimSuffix(strings.TrimSpace(stmt), ";")
	if err := e.ch.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("bare insert: create table: %w", err)
	}
	conn, err := bareConn(e)
	if err != nil {
		return fmt.Errorf("bare insert: %w", err)
	}
	defer conn.Close()
	const batch = bareBatch
	ts := make([]time.Time, batch)
	routeID, method, host, path := make([]string, batch), make([]string, batch), make([]string, batch), make([]string, batch)
	status := make([]uint16, batch)
	lat := make([]uint32, batch)
	ip, ua, rid, tenant, consumer := make([]string, batch), make([]string, batch), make([]string, batch), make([]string, batch), make([]string, batch)
	rqn, rqv, rsn, rsv := make([][]string, batch), make([][]string, batch), make([][]string, batch), make([][]string, batch)
	now := time.Now().UTC().Truncate(time.Second)
	for i := 0; i < batch; i++ {
		ts[i] = now
		routeID[i], method[i], host[i] = "r1", "GET", "api.bench.test"
		path[i] = "/api/v1/items/" + strconv.Itoa(i%1000)
		status[i], lat[i] = 200, uint32(i%50)
		ip[i] = distinctIP(i).String()
		ua[i], rid[i], tenant[i], consumer[i] = "edgeperf/1", "req-"+strconv.Itoa(i), "acme", "user-"+strconv.Itoa(i%64)
		rqn[i], rqv[i] = []string{"accept"}, []string{"application/json"}
		rsn[i], rsv[i] = []string{"content-type"}, []string{"application/json"}
	}
	cols := []any{ts, routeID, method, host, path, status, lat, ip, ua, rid, tenant, consumer, rqn, rqv, rsn, rsv}
	names := "ts, route_id, method, host, path, status, latency_ms, client_ip, user_agent, request_id, tenant, consumer, req_header_names, req_header_values, resp_header_names, resp_header_values"
	if l.insertRows, l.insertTime, err = timedInsert(ctx, e, conn, table, names, cols, o.insertFor); err != nil {
		return fmt.Errorf("bare insert: %w", err)
	}
	return e.ch.Exec(ctx, "DROP TABLE default."+table)
}

// insertRowsPerSec is the bare insert's rate, 0 when it was not measured
// (l nil included).
func (l *limits) insertRowsPerSec() float64 {
	if l == nil || l.insertTime <= 0 {
		return 0
	}
	return float64(l.insertRows) / l.insertTime.Seconds()
}

// bareConn opens the bare insert's client: the native protocol with lz4
// on one connection.
func bareConn(e *env) (driver.Conn, error) {
	opts := e.ch.ClientOptions()
	opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	opts.MaxOpenConns = 1
	return clickhouse.Open(opts)
}

// bareBatch is the rows of one bare insert: clickhouse.batch_size's
// default, as the runner's inserts in the scenarios.
const bareBatch = 50000

// timedInsert inserts cols (bareBatch rows each, in the order of the
// comma-separated names) into default.table, one batch at a time on conn:
// one unmeasured batch (the dial and handshake), then batches for at
// least d. It checks that the table then holds every row, and returns the
// rows and the time of the measured batches.
func timedInsert(ctx context.Context, e *env, conn driver.Conn, table, names string, cols []any, d time.Duration) (int, time.Duration, error) {
	query := "INSERT INTO default." + table + " (" + names + ")"
	send := func() error {
		b, err := conn.PrepareBatch(ctx, query)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		for i, c := range cols {
			if err := b.Column(i).Append(c); err != nil {
				_ = b.Abort()
				return fmt.Errorf("column %d: %w", i, err)
			}
		}
		if err := b.Send(); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	}
	if err := send(); err != nil {
		return 0, 0, err
	}
	rows := 0
	start := time.Now()
	for rows == 0 || time.Since(start) < d {
		if err := send(); err != nil {
			return 0, 0, err
		}
		rows += bareBatch
	}
	took := time.Since(start)
	got, err := e.ch.Count(ctx, "default."+table)
	if err != nil {
		return 0, 0, err
	}
	if int(got) != rows+bareBatch {
		return 0, 0, fmt.Errorf("%d rows in the table, want %d", got, rows+bareBatch)
	}
	return rows, took, nil
}

var sqlComment = regexp.MustCompile(`--[^\n]*`)

func stripSQLComments(s string) string { return sqlComment.ReplaceAllString(s, "") }

// rsaVerify counts bare rsa.VerifyPKCS1v15 calls (SHA-256 digest computed
// once beforehand), on one goroutine and on one per core.
func (l *limits) rsaVerify(ctx context.Context, o *options) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("rsa verify: %w", err)
	}
	digest := sha256.Sum256([]byte("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9"))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		return fmt.Errorf("rsa verify: %w", err)
	}
	pub := &key.PublicKey
	runFor := func(workers int) (float64, error) {
		var n atomic.Int64
		var bad atomic.Bool
		var wg sync.WaitGroup
		start := time.Now()
		end := start.Add(o.rsaFor)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && ctx.Err() == nil {
					for k := 0; k < 16; k++ {
						if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
							bad.Store(true)
						}
					}
					n.Add(16)
				}
			}()
		}
		wg.Wait()
		if bad.Load() {
			return 0, fmt.Errorf("rsa verify: a valid signature failed to verify")
		}
		return float64(n.Load()) / time.Since(start).Seconds(), nil
	}
	if l.rsaSingle, err = runFor(1); err != nil {
		return err
	}
	l.rsaNsOp = 1e9 / l.rsaSingle
	l.rsaAll, err = runFor(runtime.NumCPU())
	return err
}
