package testbed_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// fixtureBin is the fixture runner, built once per test binary.
var fixtureBin string

func TestMain(m *testing.M) {
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/testbed/internal/fixturerunner")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// startFixture starts the fixture runner and waits for its socket. The
// respawn delay defaults to 300 ms here.
func startFixture(t *testing.T, opts testbed.RunnerOptions) *testbed.Runner {
	t.Helper()
	opts.Path = fixtureBin
	return testbed.MustStartRunner(t, opts)
}

func waitReady(t *testing.T, r *testbed.Runner) {
	t.Helper()
	testbed.MustWaitReady(t, r)
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
