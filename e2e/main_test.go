// Package e2e drives the built go-runner binary through the testbed, the way
// APISIX does, against real backing services.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/apisix-edge/edge-runner/testbed"
)

// runnerBin is the go-runner binary built once for the package's tests.
var runnerBin string

func TestMain(m *testing.M) {
	var args []string
	if os.Getenv("E2E_RACE") != "" {
		args = append(args, "-race")
	}
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/cmd/go-runner", args...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runnerBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}
