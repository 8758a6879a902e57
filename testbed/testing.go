package testbed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BuildBinary builds the Go main package pkg into a new temporary directory
// and returns the binary's path and a function that removes the directory.
// It is meant for TestMain functions that drive a real runner binary.
func BuildBinary(pkg string, buildArgs ...string) (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "testbed-bin-")
	if err != nil {
		return "", nil, fmt.Errorf("build %s: %w", pkg, err)
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	path = filepath.Join(dir, filepath.Base(pkg))
	goBin, err := exec.LookPath("go")
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build %s: the go command must be on PATH: %w", pkg, err)
	}
	args := append([]string{"build", "-o", path}, buildArgs...)
	out, err := exec.Command(goBin, append(args, pkg)...).CombinedOutput()
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	return path, cleanup, nil
}

// MustStartRunner starts a Runner for a test and waits until it accepts
// connections. RespawnDelay defaults to 300 ms here (not APISIX's 3 s) unless
// opts sets it. At cleanup the runner is stopped, and its output is logged if
// the test failed. Any error fails the test.
func MustStartRunner(t testing.TB, opts RunnerOptions) *Runner {
	t.Helper()
	if opts.RespawnDelay == 0 {
		opts.RespawnDelay = 300 * time.Millisecond
	}
	r, err := StartRunner(opts)
	if err != nil {
		t.Fatalf("start runner: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
		if t.Failed() {
			t.Logf("runner output:\n%s", r.Output())
		}
	})
	MustWaitReady(t, r)
	return r
}

// MustWaitReady waits up to 15 s for r to accept connections, failing the
// test with the runner's output otherwise.
func MustWaitReady(t testing.TB, r *Runner) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatalf("runner not ready: %v\noutput:\n%s", err, r.Output())
	}
}
