package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// TestJWTLoadFigures measures, in one runner and one run, the no-op chain
// against jwtcache with the same valid token repeated (cache hits) and with
// a distinct RS256-2048 token on every request (a signature check each).
// It takes about a minute, so it runs only with JWT_LOAD=1:
//
//	JWT_LOAD=1 go test ./e2e/ -run TestJWTLoadFigures -v
func TestJWTLoadFigures(t *testing.T) {
	if os.Getenv("JWT_LOAD") == "" {
		t.Skip("set JWT_LOAD=1 to measure (about a minute)")
	}
	levels := []int{1, 8, 64}
	d := time.Second
	const perLevel = 6000
	idp := jwtNewIdP(t, jwtRS("k1", 0))
	e := jwtStart(t, "  token_cache_size: 100000\n  providers:\n"+jwtProvider("main", idp.URL, ""), testbed.RunnerOptions{})
	jwtWaitFetched(t, idp, 1)

	// Distinct tokens are signed up front: signing costs far more than
	// verifying, and must not share the cores with the measurement.
	tokens := make([]string, perLevel*len(levels))
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(tokens); i += 2 {
				tokens[i] = jwtSign(t, jwtRS("k1", 0), map[string]any{"jti": fmt.Sprint(i)})
			}
		}(w)
	}
	wg.Wait()

	noop := emptyRoute("noop")
	route := jwtRoute("jwt", `{"provider":"main","issuer":"https://idp.test/realms/test","audience":"api","claims_to_headers":{"sub":"X-User-ID"}}`)
	same := jwtBearer(jwtSign(t, jwtRS("k1", 0), nil))
	ctx := context.Background()
	run := func(name string, r *testbed.Route, c int, opts testbed.LoadOptions) *testbed.LoadReport {
		opts.Gateway, opts.Route, opts.Concurrency = e.g, r, c
		if opts.Requests == 0 {
			opts.Duration = d
		}
		// Warm up: PrepareConf and connections.
		if _, err := testbed.Load(ctx, testbed.LoadOptions{Gateway: e.g, Route: r, Concurrency: c, Requests: 2 * c,
			NewRequest: func(int, int) *testbed.Request { return same }}); err != nil {
			t.Fatal(err)
		}
		rep, err := testbed.Load(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Errors > 0 || rep.Status[200] != rep.Requests {
			t.Fatalf("%s c=%d: got %d errors, statuses %v, want all 200", name, c, rep.Errors, rep.Status)
		}
		return rep
	}
	// The machine is shared: no-op and cache-hit runs alternate, 1 s each,
	// and the median of the rounds is reported, so that drift in the
	// background load hits both alike.
	const rounds = 5
	hitReq := func(int, int) *testbed.Request { return same }
	t.Logf("%-10s %4s %10s %10s %10s %7s", "chain", "c", "req/s", "p50", "p99", "ratio")
	for li, c := range levels {
		var bases, hits []*testbed.LoadReport
		for r := 0; r < rounds; r++ {
			bases = append(bases, run("noop", noop, c, testbed.LoadOptions{NewRequest: hitReq}))
			hits = append(hits, run("cached", route, c, testbed.LoadOptions{NewRequest: hitReq}))
		}
		base, hit := jwtMedian(bases), jwtMedian(hits)
		off := li * perLevel
		miss := run("distinct", route, c, testbed.LoadOptions{Requests: perLevel, NewRequest: func(_, i int) *testbed.Request {
			return jwtBearer(tokens[off+i])
		}})
		for _, r := range []struct {
			name string
			rep  *testbed.LoadReport
		}{{"no-op", base}, {"cache hit", hit}, {"distinct", miss}} {
			t.Logf("%-10s %4d %10.0f %10s %10s %7.2f", r.name, c, r.rep.Throughput, r.rep.Latency.P50, r.rep.Latency.P99, r.rep.Throughput/base.Throughput)
		}
	}
	t.Logf("metrics:\n%s", jwtGrep(e.metrics(t), "apisix_edge_jwt_cache_lookups_total{", "apisix_edge_jwt_verifications_total{outcome=\"accepted\""))
}

// jwtMedian returns the report with the median throughput.
func jwtMedian(reps []*testbed.LoadReport) *testbed.LoadReport {
	s := append([]*testbed.LoadReport(nil), reps...)
	sort.Slice(s, func(i, j int) bool { return s[i].Throughput < s[j].Throughput })
	return s[len(s)/2]
}

func jwtGrep(s string, prefixes ...string) string {
	var out strings.Builder
	for _, line := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out.WriteString(line + "\n")
			}
		}
	}
	return out.String()
}
