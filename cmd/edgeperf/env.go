package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/apisix-edge/edge-runner/testbed/idp"
)

// Bench settings that differ from the runner's defaults, and why.
const (
	// tokenCacheSize is jwks.token_cache_size: small, so that a pool of
	// missPool distinct tokens used in turn misses the LRU every time.
	tokenCacheSize = 256
	missPool       = 4 * tokenCacheSize
	// consumers is the number of distinct subjects of the all-three
	// scenario: fewer than tokenCacheSize, so their tokens stay cached.
	consumers = 64
	// maxPending is clickhouse.max_pending, small (batch_size then defaults
	// to half of it, 10000) so that the ClickHouse-down scenario reaches
	// the cap within its run and shows memory flat at it.
	maxPending = 20000
	issuerAud  = "edge-bench"
	tableName  = "edge_access_log"
)

// env is everything a run talks to.
type env struct {
	dir          string
	rd           *backing.Redis
	ch           *backing.ClickHouse
	idp          *idp.Server
	key          *idp.Key
	runner       *testbed.Runner
	gw           *testbed.Gateway
	admin        string // http://127.0.0.1:port
	cfgText      string
	redisVersion string
	redisSock    bool // see options.redisSock

	hitToken    string
	missTokens  []string
	consTokens  []string // one per consumer subject
	consSubject []string

	accounting string // rows in ClickHouse against the logger's counters

	closeOnce sync.Once
}

// redisAddr is the runner's redis.addrs entry: the socket with
// -redis-socket, else host:port.
func (e *env) redisAddr() string {
	if network, addr := e.redisDial(); network == "unix" {
		return "unix:" + addr
	}
	return e.rd.Addr()
}

// redisDial is what the bare Redis clients dial.
func (e *env) redisDial() (network, addr string) {
	if e.redisSock {
		return "unix", e.rd.SocketPath()
	}
	return "tcp", e.rd.Addr()
}

// startEnv starts the servers and the runner, and waits until the runner
// has Redis and the JWKS provider ready.
func startEnv(ctx context.Context, o *options, pr *progress) (*env, error) {
	if err := backing.Require(backing.RedisServer, backing.ClickHouseServer); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return nil, fmt.Errorf("redis-benchmark not found (Debian package redis-tools): %w", err)
	}
	dir, err := os.MkdirTemp("", "edgeperf-")
	if err != nil {
		return nil, fmt.Errorf("start env: %w", err)
	}
	e := &env{dir: dir, redisSock: o.redisSock}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if e.rd, err = backing.StartRedis(backing.RedisOptions{UnixSocket: true}); err != nil {
		return nil, err
	}
	if e.ch, err = backing.StartClickHouse(backing.ClickHouseOptions{}); err != nil {
		return nil, err
	}
	e.redisVersion = commandLine(ctx, "redis-server", "--version")
	if e.key, err = idp.NewRSA("bench-rs256", 2048); err != nil {
		return nil, err
	}
	if e.idp, err = idp.Start(e.key); err != nil {
		return nil, err
	}
	pr.printf("signing %d RS256-2048 tokens", 1+missPool+consumers)
	if err := e.signTokens(); err != nil {
		return nil, err
	}
	port, err := backing.FreePort()
	if err != nil {
		return nil, err
	}
	e.admin = fmt.Sprintf("http://127.0.0.1:%d", port)
	e.cfgText = fmt.Sprintf(`# written by edgeperf; every key not set here has its documented default
log:
  level: warn
admin:
  listen: 127.0.0.1:%d
  pprof: %v
redis:
  addrs: [%q]
clickhouse:
  addrs: [%q]
  create_table: true
  max_pending: %d
jwks:
  token_cache_size: %d
  providers:
    - name: idp
      url: %q
`, port, o.profile != "", e.redisAddr(), e.ch.NativeAddr(), maxPending, tokenCacheSize, e.idp.URL())
	cfgPath := filepath.Join(dir, "go-runner.yaml")
	if err := os.WriteFile(cfgPath, []byte(e.cfgText), 0o644); err != nil {
		return nil, fmt.Errorf("write runner config: %w", err)
	}
	if e.runner, err = testbed.StartRunner(testbed.RunnerOptions{
		Path: o.runner, Args: []string{"run", "-c", cfgPath},
	}); err != nil {
		return nil, err
	}
	// APISIX's defaults except the socket timeouts (60 s): 10 s per frame
	// bounds a wedged runner without a per-request context in the loop.
	e.gw = testbed.NewGateway(e.runner.SocketPath(), testbed.GatewayOptions{SendTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second})
	e.runner.OnExit(func(testbed.ExitInfo) { e.gw.FlushTokens() }) // APISIX's runner_exit event
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := e.runner.WaitReady(wctx); err != nil {
		return nil, fmt.Errorf("runner: %w\n%s", err, tail(e.runner.Output(), 2000))
	}
	if err := e.waitBackends(wctx, map[string]string{"redis": "ok", "jwks:idp": "ok"}); err != nil {
		return nil, fmt.Errorf("runner not ready: %w\n%s", err, tail(e.runner.Output(), 2000))
	}
	ok = true
	return e, nil
}

func (e *env) signTokens() error {
	now := time.Now()
	sign := func(sub string) (string, error) {
		return e.key.Sign(idp.Claims(sub, e.idp.Issuer(), issuerAud, now, nil))
	}
	var err error
	if e.hitToken, err = sign("user-hit"); err != nil {
		return err
	}
	for i := 0; i < missPool; i++ {
		t, err := sign("user-miss-" + strconv.Itoa(i))
		if err != nil {
			return err
		}
		e.missTokens = append(e.missTokens, t)
	}
	for i := 0; i < consumers; i++ {
		sub := "user-" + strconv.Itoa(i)
		t, err := sign(sub)
		if err != nil {
			return err
		}
		e.consTokens = append(e.consTokens, t)
		e.consSubject = append(e.consSubject, sub)
	}
	return nil
}

// close stops the runner and the servers; it may be called more than once.
func (e *env) close() {
	e.closeOnce.Do(func() {
		if e.runner != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = e.runner.Stop(ctx)
			cancel()
		}
		if e.gw != nil {
			_ = e.gw.Close()
		}
		if e.idp != nil {
			_ = e.idp.Close()
		}
		if e.rd != nil {
			_ = e.rd.Close()
		}
		if e.ch != nil {
			_ = e.ch.Close()
		}
		_ = os.RemoveAll(e.dir)
	})
}

var adminClient = &http.Client{Timeout: 3 * time.Second}

func (e *env) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.admin+path, nil)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", path, err)
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s: HTTP %d", path, resp.StatusCode)
	}
	return b, nil
}

// backendStates returns /status backends → state.
func (e *env) backendStates(ctx context.Context) (map[string]string, error) {
	b, err := e.get(ctx, "/status")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Backends map[string]struct {
			State string `json:"state"`
		} `json:"backends"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("admin /status: %w", err)
	}
	out := map[string]string{}
	for k, v := range doc.Backends {
		out[k] = v.State
	}
	return out, nil
}

// waitBackends polls /status until every named backend is in its state.
func (e *env) waitBackends(ctx context.Context, want map[string]string) error {
	var last string
	for {
		st, err := e.backendStates(ctx)
		if err == nil {
			var miss []string
			for k, v := range want {
				if st[k] != v {
					miss = append(miss, fmt.Sprintf("%s=%q (want %s)", k, st[k], v))
				}
			}
			if len(miss) == 0 {
				return nil
			}
			last = strings.Join(miss, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for backends: %w (last: %s)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// scrape reads /metrics into series → value (series as printed, e.g.
// `apisix_edge_ratelimit_decisions_total{outcome="allowed"}`).
func (e *env) scrape(ctx context.Context) (map[string]float64, error) {
	b, err := e.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	return testbed.ParseMetrics(string(b)), nil
}

// runnerRSS returns the runner process's resident memory in bytes, or 0.
func (e *env) runnerRSS() int64 {
	pid := e.runner.PID()
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// drainLog waits until the logger has no row pending, then compares the
// rows in ClickHouse with its counters (the logger's accounting identity).
func (e *env) drainLog(ctx context.Context) string {
	deadline := time.Now().Add(8 * time.Second)
	var m map[string]float64
	var err error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err = e.scrape(ctx)
		if err == nil && m["apisix_edge_log_queue_rows"] == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return "not checked: " + err.Error()
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, cerr := e.ch.Count(cctx, "default."+tableName)
	if cerr != nil {
		return "not checked: " + cerr.Error()
	}
	var dropped float64
	for k, v := range m {
		if strings.HasPrefix(k, "apisix_edge_log_rows_dropped_total") {
			dropped += v
		}
	}
	enq, ins, pend := m["apisix_edge_log_rows_enqueued_total"], m["apisix_edge_log_rows_inserted_total"], m["apisix_edge_log_queue_rows"]
	verdict := "holds"
	if enq != ins+dropped+pend || float64(n) != ins {
		verdict = "DOES NOT hold"
	}
	return fmt.Sprintf("before ClickHouse was killed: enqueued %.0f = inserted %.0f + dropped %.0f + pending %.0f; rows in ClickHouse %d (%s)",
		enq, ins, dropped, pend, n, verdict)
}

// machine describes the host, read from the host itself.
type machine struct {
	cpu, os, kernel, goVersion, goRuntime string
	cores                                 int
	memory                                string
	redisVersion, clickhouseVersion       string
	redisBenchmark                        string
	runnerVersion, commit                 string
	hypervisor                            string
}

func describeMachine(ctx context.Context, o *options) machine {
	m := machine{cores: runtime.NumCPU(), goRuntime: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "model name":
				if m.cpu == "" {
					m.cpu = strings.TrimSpace(v)
				}
			case "flags":
				if m.hypervisor == "" && strings.Contains(v, " hypervisor") {
					m.hypervisor = "virtual machine (cpuinfo flag hypervisor)"
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.os = strings.Trim(v, `"`)
			}
		}
	}
	m.goVersion = commandLine(ctx, o.goBin, "version")
	m.redisBenchmark = commandLine(ctx, "redis-benchmark", "--version")
	m.runnerVersion = commandLine(ctx, o.runner, "version")
	m.commit = commandLine(ctx, "git", "-C", o.src, "describe", "--always", "--dirty")
	return m
}

// commandLine runs a short command and returns its first output line, or
// "unknown (error)".
func commandLine(ctx context.Context, name string, args ...string) string {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", name, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
