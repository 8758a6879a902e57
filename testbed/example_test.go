package testbed_test

import (
	"context"
	"fmt"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// Example spawns a runner like APISIX does, then sends a request through a
// route whose ext-plugin-pre-req answers Stop.
func Example() {
	r, err := testbed.StartRunner(testbed.RunnerOptions{Path: fixtureBin})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer r.Stop(ctx)
	if err := r.WaitReady(ctx); err != nil {
		fmt.Println(err)
		return
	}

	g := testbed.NewGateway(r.SocketPath(), testbed.GatewayOptions{})
	defer g.Close()
	r.OnExit(func(testbed.ExitInfo) { g.FlushTokens() }) // APISIX's runner_exit event

	route := &testbed.Route{ID: "1", PreReq: []testbed.PluginConf{
		{Name: "fx-stop", Value: `{"status":403,"headers":{"X-Reason":"demo"},"body":"denied"}`},
	}}
	res, err := g.Do(ctx, route, &testbed.Request{Method: "GET", Path: "/hello"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Status, res.Headers.Get("X-Reason"), string(res.Body), res.UpstreamCalled)
	fmt.Println(res.Phases, "round trips:", res.RoundTrips)
	// Output:
	// 403 demo denied false
	// [ext-plugin-pre-req] round trips: 2
}
