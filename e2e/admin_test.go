package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	var lastErr error
	for i := 0; i < 100; i++ { // the admin listener binds in the background
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body)
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("get %s: %v", url, lastErr)
	return 0, ""
}

func TestAdminListener(t *testing.T) {
	port, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	// Redis is configured on a port where nothing listens: the runner
	// serves, degraded, and /status still answers 200.
	noRedis, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	startRunner(t, fmt.Sprintf("admin:\n  listen: 127.0.0.1:%d\nredis:\n  addrs: [\"127.0.0.1:%d\"]\n", port, noRedis), testbed.RunnerOptions{})

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: got %d %q, want 200 \"ok\\n\"", code, body)
	}
	code, body := get(t, base+"/metrics")
	for _, want := range []string{"apisix_edge_runner_info", "apisix_edge_process_start_time_seconds"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: got %d, want 200 with %s", code, want)
		}
	}
	var st struct {
		Status   string `json:"status"`
		Backends map[string]struct {
			State     string `json:"state"`
			LastError string `json:"last_error"`
		} `json:"backends"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body = get(t, base+"/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 {
			t.Fatalf("/status: got %d %q (%v), want 200 with JSON", code, body, err)
		}
		if st.Backends["redis"].State == "down" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.Status != "degraded" || st.Backends["redis"].State != "down" || st.Backends["redis"].LastError == "" {
		t.Errorf("/status: got %q, want 200, status degraded, redis down with its last error", body)
	}
}

// TestSIGTERMShutsDownCleanly: the runner exits by itself within its
// shutdown timeout and removes the socket it still owns.
func TestSIGTERMShutsDownCleanly(t *testing.T) {
	r := startRunner(t, "", testbed.RunnerOptions{NoRespawn: true})
	g := newGateway(t, r)
	if res := do(t, g, emptyRoute("1"), nil); res.Status != 200 {
		t.Fatalf("got %d, want 200", res.Status)
	}
	exited := make(chan testbed.ExitInfo, 1)
	r.OnExit(func(e testbed.ExitInfo) { exited <- e })
	if err := r.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case e := <-exited:
		if e.State == nil || e.State.ExitCode() != 0 {
			t.Errorf("got exit %v, want a clean exit 0", e.State)
		}
	case <-ctx.Done():
		t.Fatal("runner did not exit after SIGTERM")
	}
	if _, err := os.Stat(r.SocketPath()); !os.IsNotExist(err) {
		t.Errorf("got socket stat error %v, want the socket removed", err)
	}
}

// TestRuntimeMaxProcs: runtime.max_procs sets the built runner's
// GOMAXPROCS (APISIX passes no GOMAXPROCS of its own), and a GOMAXPROCS
// that nginx_config.envs hands the runner wins over it; the runner's
// /metrics shows the setting (go_sched_gomaxprocs_threads).
func TestRuntimeMaxProcs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		cfg  string
		env  []string
		want string
	}{
		{"field", "runtime:\n  max_procs: 1\n", nil, "1"},
		{"environment wins", "runtime:\n  max_procs: 1\n", []string{"GOMAXPROCS=3"}, "3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := startWithAdmin(t, tt.cfg+"clickhouse:\n  ingest:\n    listen: \"off\"\n", testbed.RunnerOptions{ExtraEnv: tt.env})
			_, body := get(t, env.admin+"/metrics")
			m := regexp.MustCompile(`(?m)^go_sched_gomaxprocs_threads (\d+)$`).FindStringSubmatch(body)
			if m == nil {
				t.Fatal("/metrics: no go_sched_gomaxprocs_threads")
			}
			if m[1] != tt.want {
				t.Errorf("go_sched_gomaxprocs_threads: got %s, want %s", m[1], tt.want)
			}
		})
	}
}
