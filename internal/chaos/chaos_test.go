package chaos_test

import (
	"context"
	"fmt"
	"os"
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

// TestShortMatrix runs every scenario of the resilience matrix, shortened,
// against the real binary and real servers, and fails on any failed
// verdict (the full matrix is `make chaos`).
func TestShortMatrix(t *testing.T) {
	backing.MustRequire(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	results, err := chaos.Run(ctx, chaos.Options{Runner: runnerBin, Short: true, Progress: logWriter{t}})
	if err != nil {
		t.Fatalf("chaos.Run: %v", err)
	}
	if want := 13; len(results) != want { // every scenario of issue 7
		t.Errorf("scenarios run: got %d, want %d", len(results), want)
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
