package clickhouselogger_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/plugins/clickhouselogger"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// ExampleLogger_IngestAddr: the log-phase path. APISIX's http-logger posts
// its batches to the ingest listener (here an entry of the documented
// log_format, a 429 answered by ratelimit), and the row lands in
// ClickHouse with the rate-limit state.
func ExampleLogger_IngestAddr() {
	ch, err := backing.StartClickHouse(backing.ClickHouseOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ch.Close()
	var cfg clickhouselogger.Config
	cfg.Addrs = []string{ch.NativeAddr()}
	cfg.CreateTable = true
	cfg.FlushInterval = core.Duration(50 * time.Millisecond)
	cfg.Ingest.Listen = "127.0.0.1:0" // production: the default, 127.0.0.1:9543
	cfg.ApplyDefaults()
	if err := errors.Join(cfg.Validate()...); err != nil {
		fmt.Println(err)
		return
	}
	l := clickhouselogger.New(cfg, core.NewDeps(zap.NewNop(), prometheus.NewRegistry()))
	l.Start(context.Background())
	for l.IngestAddr() == "" { // bound in the background
		time.Sleep(10 * time.Millisecond)
	}
	entry := `{"route_id":"r1","status":"429","x_request_id":"ex-1","rl_limit":"3","rl_remaining":"0","retry_after":"60","request_time":"0.001"}`
	resp, err := http.Post("http://"+l.IngestAddr()+clickhouselogger.IngestPath+"?", "text/plain", strings.NewReader(entry))
	if err != nil {
		fmt.Println(err)
		return
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(resp.StatusCode, " ", string(answer))
	for l.Snapshot().Inserted < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.Shutdown(ctx)
	conn, err := ch.Conn()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	var route, source string
	var status uint16
	var limit, remaining, retry int64
	if err := conn.QueryRow(ctx, "SELECT route_id, status, rl_limit, rl_remaining, retry_after, source FROM edge_access_log WHERE request_id = 'ex-1'").
		Scan(&route, &status, &limit, &remaining, &retry, &source); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(route, status, limit, remaining, retry, source)
	// Output:
	// 200 {"accepted":1,"rejected":0,"dropped":0}
	// r1 429 3 0 60 http_logger
}
