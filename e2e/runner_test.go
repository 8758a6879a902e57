package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// startRunner spawns go-runner like APISIX, with a config file holding cfg
// (the admin listener is off unless cfg says otherwise).
func startRunner(t testing.TB, cfg string, opts testbed.RunnerOptions) *testbed.Runner {
	t.Helper()
	if cfg == "" {
		cfg = "admin:\n  listen: \"off\"\n"
	}
	path := filepath.Join(t.TempDir(), "go-runner.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.Path = runnerBin
	opts.Args = []string{"run", "-c", path}
	return testbed.MustStartRunner(t, opts)
}

func newGateway(t testing.TB, r *testbed.Runner) *testbed.Gateway {
	t.Helper()
	g := testbed.NewGateway(r.SocketPath(), testbed.GatewayOptions{})
	t.Cleanup(func() { g.Close() })
	return g
}

// adminEnv is one runner with its gateway and its admin listener.
type adminEnv struct {
	r     *testbed.Runner
	g     *testbed.Gateway
	admin string // http://127.0.0.1:port
}

// startWithAdmin spawns the runner with an admin listener on a free port
// followed by cfg (the rest of the config), and a gateway that flushes its
// tokens on every runner exit, as APISIX does.
func startWithAdmin(t *testing.T, cfg string, opts testbed.RunnerOptions) *adminEnv {
	t.Helper()
	port, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := startRunner(t, fmt.Sprintf("admin:\n  listen: 127.0.0.1:%d\n", port)+cfg, opts)
	g := newGateway(t, r)
	r.OnExit(func(testbed.ExitInfo) { g.FlushTokens() })
	return &adminEnv{r: r, g: g, admin: fmt.Sprintf("http://127.0.0.1:%d", port)}
}

// eventually polls cond every 25 ms until it holds, and fails the test if
// it did not within d; it returns how long cond took to hold.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
	return 0
}

func emptyRoute(id string) *testbed.Route {
	return &testbed.Route{ID: id, PreReq: []testbed.PluginConf{}}
}

func do(t *testing.T, g *testbed.Gateway, route *testbed.Route, req *testbed.Request) *testbed.Result {
	t.Helper()
	if req == nil {
		req = &testbed.Request{Method: "GET", Path: "/"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := g.Do(ctx, route, req)
	if err != nil {
		t.Fatalf("do: %v", err)
	}
	return res
}

func TestEmptyChainProxies(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	res := do(t, g, emptyRoute("1"), nil)
	if res.Status != 200 || !res.UpstreamCalled {
		t.Fatalf("got status %d upstream called %v (%v), want 200 and true", res.Status, res.UpstreamCalled, res.Err)
	}
}

// TestJWTMisspelledPluginNameFailsClosed: the reference framework skips a
// plugin name it does not know, so a typo in "jwtcache" let requests pass
// without a token. Here the route gets 500 and the upstream is never
// called; the conf is logged once and counted.
func TestJWTMisspelledPluginNameFailsClosed(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	for i, name := range []string{"JWTCache", "jwtcache ", "jwt-cache", "no-such-plugin"} {
		route := &testbed.Route{ID: fmt.Sprint(i + 1), PreReq: []testbed.PluginConf{{Name: name, Value: `{"provider":"kc"}`}}}
		for range 3 {
			res := do(t, g, route, nil)
			if res.Status != 500 || res.UpstreamCalled {
				t.Fatalf("plugin %q: got status %d upstream called %v, want 500 and false", name, res.Status, res.UpstreamCalled)
			}
		}
	}
	// one line per conf, not per request (stderr reaches the test bed
	// through a pipe: wait for the first)
	eventually(t, 5*time.Second, "the rejected conf's log line", func() bool {
		return strings.Contains(r.Output(), "conf names a plugin this runner does not serve")
	})
	if n := strings.Count(r.Output(), "conf names a plugin this runner does not serve"); n < 1 || n > 4 {
		t.Errorf("log lines for 4 rejected confs and 12 requests: got %d, want 1 to 4\n%s", n, r.Output())
	}
}

// TestReloadKeepsSocket reproduces `apisix reload` (APISIX issue 11347): a
// new runner starts on the same socket path, then the old one gets SIGTERM.
// The reference framework deletes the new runner's socket on its way out; we
// must not.
func TestReloadKeepsSocket(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
		t.Fatalf("before reload: got %d, want 200", res.Status)
	}
	oldPID := r.PID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Reload(ctx); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// Wait for the old process to be gone, then check the socket survived.
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(oldPID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if processAlive(oldPID) {
		t.Fatalf("old runner %d still alive", oldPID)
	}
	if _, err := os.Stat(r.SocketPath()); err != nil {
		t.Fatalf("socket after reload: %v, want it to exist", err)
	}
	g.FlushTokens()
	for i := 0; i < 5; i++ {
		if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
			t.Fatalf("after reload, request %d: got %d (%v), want 200", i, res.Status, res.Err)
		}
	}
}

// TestReloadUnderLoadCostsNothing reloads while the gateway keeps calling
// the runner on its pooled connections, as nginx's workers do. The old
// runner must answer each call in progress and close each connection
// right after an answer, so the next call connects to the new runner: no
// call may fail.
func TestReloadUnderLoadCostsNothing(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stop := make(chan struct{})
	reported := make(chan *testbed.LoadReport, 1)
	go func() {
		rep, err := testbed.Load(ctx, testbed.LoadOptions{Gateway: g, Route: emptyRoute("1"), Concurrency: 8, Duration: time.Minute, Stop: stop})
		if err != nil {
			t.Errorf("load: %v", err)
		}
		reported <- rep
	}()
	time.Sleep(200 * time.Millisecond) // every worker has a pooled connection
	oldPID := r.PID()
	if err := r.Reload(ctx); err != nil {
		t.Fatalf("reload: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	rep := <-reported
	if processAlive(oldPID) {
		t.Errorf("old runner %d still alive after Reload returned", oldPID)
	}
	if rep == nil {
		t.Fatalf("load: no report")
	}
	if rep.Status[200] == 0 || len(rep.Status) != 1 || rep.Errors > 0 {
		t.Errorf("statuses across the reload: got %v, errors %d %v, want only 200", rep.Status, rep.Errors, rep.ErrorKinds)
	}
	if f := g.Stats().Failures; f != 0 {
		t.Errorf("gateway failures: got %d, want 0", f)
	}
	// The old runner must have moved its connections, not closed them
	// (closing is a race with APISIX's next call that this test can miss).
	m := regexp.MustCompile(`runner drained.*"handed_over": (\d+), "closed_idle": (\d+)`).FindStringSubmatch(r.Output())
	if m == nil || m[1] == "0" || m[2] != "0" {
		t.Errorf("old runner's drain: got %q, want connections handed over and none closed\n%s", m, r.Output())
	}
}

// TestReloadStaleTokenNamesNoOtherConf: APISIX sends the conf tokens it
// holds on whatever connection it has, so after a reload a worker can send
// a token the old runner issued to the new one (on a handed-over
// connection, or a new one). The new runner must not read it as one of its
// own tokens, which could run another route's plugins (a protected route
// without its auth or limit): it must answer "conf token not found", so
// that APISIX prepares the conf again.
func TestReloadStaleTokenNamesNoOtherConf(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	old := newGateway(t, r) // keeps its tokens across the reload
	protected := &testbed.Route{ID: "protected", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":0,"window":"1s"}`}}}
	if res := do(t, old, protected, nil); res.Status != 500 {
		t.Fatalf("protected route before the reload: got %d, want 500 (invalid conf fails closed)", res.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Reload(ctx); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// A new worker prepares an open route on the new runner first.
	fresh := newGateway(t, r)
	if res := do(t, fresh, emptyRoute("open"), nil); res.Status != 200 {
		t.Fatalf("open route on the new runner: got %d, want 200", res.Status)
	}
	res := do(t, old, protected, nil)
	if res.Status != 500 || res.UpstreamCalled || string(res.Body) != core.InvalidConfBody {
		t.Errorf("protected route with the old runner's token: got %d, upstream called %v, body %q; want 500 %s", res.Status, res.UpstreamCalled, res.Body, core.InvalidConfBody)
	}
	if got := old.Stats().TokenRetries; got != 1 {
		t.Errorf("conf token not found answers: got %d, want 1 (the stale token refused once)", got)
	}
}

func processAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited.
	fields := strings.Fields(string(data))
	return len(fields) > 2 && fields[2] != "Z"
}

func TestKillAndRespawn(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	r.OnExit(func(testbed.ExitInfo) { g.FlushTokens() }) // APISIX flushes tokens when the runner exits
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
		t.Fatalf("before kill: got %d, want 200", res.Status)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 503 {
		t.Fatalf("during the respawn gap: got %d, want 503 (APISIX without allow_degradation)", res.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.WaitRespawn(ctx, 1); err != nil {
		t.Fatalf("respawned runner not ready: %v", err)
	}
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
		t.Fatalf("after respawn: got %d (%v), want 200", res.Status, res.Err)
	}
}

func TestConfTokenExpiry(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{ConfExpireTime: 1}) // framework TTL: 1 s
	g := newGateway(t, r)
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
		t.Fatalf("first: got %d, want 200", res.Status)
	}
	time.Sleep(1500 * time.Millisecond) // real expiry in the runner; the gateway still holds the token
	res := do(t, g, emptyRoute("1"), nil)
	if res.Status != 200 || res.TokenRetries < 1 {
		t.Fatalf("after expiry: got status %d with %d token retries, want 200 after >= 1 retry", res.Status, res.TokenRetries)
	}
}

// TestColdStartTwoConnectionsPerRequest: APISIX sends PrepareConf on a second
// connection while the request's own connection waits; a runner serving
// connections one at a time would deadlock.
func TestColdStartTwoConnectionsPerRequest(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{})
	g := newGateway(t, r)
	const c = 8
	var wg sync.WaitGroup
	statuses := make([]int, c)
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := g.Do(ctx, emptyRoute("cold-"+strconv.Itoa(i)), &testbed.Request{Method: "GET", Path: "/"})
			if err == nil {
				statuses[i] = res.Status
			}
		}(i)
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 200 {
			t.Errorf("request %d: got %d, want 200", i, s)
		}
	}
	// Each cold request holds its own connection while its PrepareConf goes
	// over a second one, so at least two are open at once whatever the
	// scheduling; how many more overlap depends on timing, so it is logged.
	st := g.Stats()
	if st.Prepares != c {
		t.Errorf("got %d prepares, want %d (one per cold route)", st.Prepares, c)
	}
	if st.PeakOpenConns < 2 {
		t.Errorf("got peak %d open connections, want >= 2 (PrepareConf on a second connection)", st.PeakOpenConns)
	}
	t.Logf("peak open connections: %d for %d cold requests", st.PeakOpenConns, c)
}

func TestConfigUnknownKeyIsAClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("log:\n  levle: warn\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(runnerBin, "run", "-c", path)
	cmd.Env = []string{"APISIX_LISTEN_ADDRESS=unix:" + filepath.Join(t.TempDir(), "x.sock"), "APISIX_CONF_EXPIRE_TIME=3600"}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("got exit 0, want an error")
	}
	if !strings.Contains(string(out), "levle") || !strings.Contains(string(out), "unknown key") {
		t.Fatalf("got output %q, want it to name the key \"levle\" and the rule", out)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad-route.json")
	os.WriteFile(bad, []byte(`{"uri":"/x","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"ratelimt","value":"{}"}]}}}`), 0o644)
	badConf := filepath.Join(dir, "bad-conf.json")
	os.WriteFile(badConf, []byte(`{"name":"ratelimit","value":"{\"limit\":0,\"window\":\"1s\",\"fail_mode\":\"maybe\"}"}`), 0o644)
	noProvider := filepath.Join(dir, "no-provider.json")
	os.WriteFile(noProvider, []byte(`{"name":"jwtcache","value":"{\"provider\":\"keycloak\"}"}`), 0o644)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"shipped config", []string{"validate", "-c", "../conf/config.yaml"}, 0, "ok"},
		{"misspelled plugin", []string{"validate", bad}, 1, `unknown plugin "ratelimt"`},
		// A route with all three plugins in their phases, against the
		// runner config that declares the keycloak provider.
		{"good route", []string{"validate", "-c", "../apisix/go-runner.yaml", "../apisix/routes/all.json"}, 0, "all.json: ok"},
		{"bad conf values", []string{"validate", badConf}, 1, "limit"},
		{"bad conf values name each rule", []string{"validate", badConf}, 1, "fail_mode"},
		{"provider not in the runner config", []string{"validate", noProvider}, 1, "provider"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(runnerBin, tt.args...)
			cmd.Env = append(os.Environ(), "REDIS_PASSWORD=x", "CLICKHOUSE_PASSWORD=x")
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || !strings.Contains(string(out), tt.wantOut) {
				t.Fatalf("got exit %d output %q, want exit %d containing %q", code, out, tt.wantCode, tt.wantOut)
			}
		})
	}
}
