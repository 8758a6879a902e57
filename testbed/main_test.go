package testbed_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// fixtureBin is the fixture runner, built once per test binary.
var fixtureBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tbfx")
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdir:", err)
		os.Exit(1)
	}
	fixtureBin = filepath.Join(dir, "fixturerunner")
	cmd := exec.Command(goTool(), "build", "-o", fixtureBin,
		"github.com/apisix-edge/edge-runner/testbed/internal/fixturerunner")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fixture runner: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// startFixture starts the fixture runner and waits for its socket. The
// respawn delay defaults to 300 ms here.
func startFixture(t *testing.T, opts testbed.RunnerOptions) *testbed.Runner {
	t.Helper()
	opts.Path = fixtureBin
	if opts.RespawnDelay == 0 {
		opts.RespawnDelay = 300 * time.Millisecond
	}
	r, err := testbed.StartRunner(opts)
	if err != nil {
		t.Fatalf("StartRunner: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
		if t.Failed() {
			t.Logf("runner output:\n%s", r.Output())
		}
	})
	waitReady(t, r)
	return r
}

func waitReady(t *testing.T, r *testbed.Runner) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v\noutput:\n%s", err, r.Output())
	}
}

func newGateway(t *testing.T, r *testbed.Runner, opts testbed.GatewayOptions) *testbed.Gateway {
	t.Helper()
	g := testbed.NewGateway(r.SocketPath(), opts)
	t.Cleanup(func() { _ = g.Close() })
	return g
}

func do(t *testing.T, g *testbed.Gateway, route *testbed.Route, req *testbed.Request) *testbed.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := g.Do(ctx, route, req)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	return res
}

func conf(name, value string) testbed.PluginConf {
	return testbed.PluginConf{Name: name, Value: value}
}
