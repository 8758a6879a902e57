package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read rss: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("read rss: %v", err)
			}
			return kb << 10
		}
	}
	t.Fatalf("read rss: no VmRSS line")
	return 0
}

// TestStalledHalfFramesReleaseMemory: 32 connections each announce a frame
// of 16 MiB - 1 and send all of it but one byte. On the reference framework
// this held 545 MB of RSS for good. Here the frames grow with the bytes
// received under rpc.max_frame_memory (64 MiB in this test), the ones past
// it are refused, the others are closed at rpc.frame_timeout, and the
// memory goes back to the OS once they are gone.
func TestStalledHalfFramesReleaseMemory(t *testing.T) {
	const budget = 64 << 20
	env := startWithAdmin(t, fmt.Sprintf("rpc:\n  frame_timeout: 2s\n  max_frame_memory: %d\n", budget), testbed.RunnerOptions{})
	pid := env.r.PID()
	base := rssBytes(t, pid)
	var peak int64
	var mu sync.Mutex
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if r := rssBytes(t, pid); r > peak {
				mu.Lock()
				peak = r
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	body := make([]byte, 1<<24-2)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", env.r.SocketPath())
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			_, _ = c.Write([]byte{2, 0xff, 0xff, 0xff})
			_, _ = c.Write(body) // fails once the runner closes the connection
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var b [1]byte
			if _, err := c.Read(b[:]); err == nil {
				t.Errorf("a stalled frame got an answer, want the connection closed")
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	m := chlMetrics(t, env.admin)
	refused, timedOut := m[`apisix_edge_rpc_refused_total{reason="frame_memory"}`], m["apisix_edge_rpc_frame_timeouts_total"]
	if refused < 1 || timedOut < 1 || refused+timedOut != 32 {
		t.Errorf("refused %v + timed out %v: want each at least 1, 32 in all", refused, timedOut)
	}
	if limit := base + budget + 48<<20; peak > limit {
		t.Errorf("peak RSS: got %d MiB, want at most %d MiB (start %d MiB + the %d MiB bound + 48 MiB)", peak>>20, limit>>20, base>>20, budget>>20)
	}
	var after int64
	eventually(t, 20*time.Second, "RSS back near its start", func() bool {
		after = rssBytes(t, pid)
		return after < base+24<<20
	})
	t.Logf("RSS: start %d MiB, peak %d MiB, after %d MiB", base>>20, peak>>20, after>>20)
}

// TestRunnerNeverEchoesItsEnvironment: APISIX hands the runner every
// variable its config.yaml reads (APISIX_ADMIN_KEY among them) besides
// nginx_config.envs. Nothing the runner writes may show them, even when the
// backends those secrets are for fail.
func TestRunnerNeverEchoesItsEnvironment(t *testing.T) {
	const secret = "s3cret-7f0d9a-never-logged"
	env := startWithAdmin(t, "redis:\n  addrs: [\"127.0.0.1:1\"]\n  password: ${REDIS_PASSWORD}\nclickhouse:\n  addrs: [\"127.0.0.1:1\"]\n  password: ${CLICKHOUSE_PASSWORD}\n",
		testbed.RunnerOptions{ExtraEnv: []string{"APISIX_ADMIN_KEY=" + secret, "REDIS_PASSWORD=" + secret, "CLICKHOUSE_PASSWORD=" + secret}})
	route := &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{{Name: "ratelimit", Value: `{"limit":1,"window":"1s"}`}},
		PostResp: []testbed.PluginConf{{Name: "clickhouselogger", Value: `{}`}}}
	for range 5 {
		do(t, env.g, route, nil)
	}
	_, status := get(t, env.admin+"/status")
	_, metrics := get(t, env.admin+"/metrics")
	time.Sleep(200 * time.Millisecond) // let the background dials fail and log
	for what, s := range map[string]string{"log": env.r.Output(), "/status": status, "/metrics": metrics} {
		if strings.Contains(s, secret) {
			t.Errorf("%s shows a secret from the environment", what)
		}
	}
}
