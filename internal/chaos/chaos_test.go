package chaos_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/internal/chaos"
	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// runnerBin is the go-runner binary built once for the package's tests.
var runnerBin string

func TestMain(m *testing.M) {
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/cmd/go-runner")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runnerBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// logWriter sends each progress line to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// knownFailing are scenarios whose verdict fails today for a reason that
// is understood and tracked (issue 7), left out of `make test` until fixed
// and still run, and failed, by `make chaos`:
//
//   - 13, apisix reload under load: workers that connect during the reload,
//     before the new runner owns the socket path, keep pooled connections to
//     the old runner; when it exits, the next call on each fails (1–3 × 503
//     per run), and calls that reach it after its plugins shut down are
//     degraded or their rows dropped.
var knownFailing = []int{13}

// TestShortMatrix runs every scenario of the resilience matrix, shortened,
// against the real binary and real servers, and fails on any failed
// verdict (the full matrix is `make chaos`).
func TestShortMatrix(t *testing.T) {
	backing.MustRequire(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var only []int
	for id := 1; id <= 13; id++ {
		if !slices.Contains(knownFailing, id) {
			only = append(only, id)
		}
	}
	results, err := chaos.Run(ctx, chaos.Options{Runner: runnerBin, Short: true, Only: only, Progress: logWriter{t}})
	if err != nil {
		t.Fatalf("chaos.Run: %v", err)
	}
	if len(results) != len(only) {
		t.Errorf("scenarios run: got %d, want %d", len(results), len(only))
	}
	var sb strings.Builder
	chaos.WriteTable(&sb, results)
	t.Logf("matrix:\n%s", sb.String())
	for _, r := range results {
		if !r.Pass() {
			t.Errorf("scenario %d (%s) failed its verdict (details in the matrix above)", r.ID, r.Name)
		}
	}
}
