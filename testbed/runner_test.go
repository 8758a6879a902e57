package testbed_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

func TestRunnerNoRespawnAfterStopOrReload(t *testing.T) {
	tests := []struct {
		name        string
		act         func(t *testing.T, r *testbed.Runner)
		wantStarts  int
		wantRunning bool
	}{
		{name: "stop during respawn gap", wantStarts: 1, act: func(t *testing.T, r *testbed.Runner) {
			if err := r.Stop(context.Background()); err != nil {
				t.Fatalf("Stop: %v", err)
			}
		}},
		{name: "reload during respawn gap", wantStarts: 2, wantRunning: true, act: func(t *testing.T, r *testbed.Runner) {
			if err := r.Reload(context.Background()); err != nil {
				t.Fatalf("Reload: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startFixture(t, testbed.RunnerOptions{RespawnDelay: 200 * time.Millisecond})
			if err := r.Kill(); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			tt.act(t, r)
			time.Sleep(400 * time.Millisecond) // past the respawn delay
			if got := r.Starts(); got != tt.wantStarts {
				t.Errorf("starts: got %d, want %d", got, tt.wantStarts)
			}
			if got := r.Restarts(); got != 0 {
				t.Errorf("restarts: got %d, want 0", got)
			}
			if got := r.PID() != 0; got != tt.wantRunning {
				t.Errorf("running: got %v, want %v", got, tt.wantRunning)
			}
		})
	}
}

func TestRunnerSignalTerm(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{})
	pid := r.PID()
	if err := r.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	// an exit on SIGTERM that we did not ask for through Stop is a crash
	// for APISIX: respawned after the delay.
	waitReady(t, r)
	deadline := time.Now().Add(10 * time.Second)
	for r.Restarts() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.Restarts() != 1 || r.PID() == pid {
		t.Errorf("after SIGTERM: got restarts %d pid %d, want 1 and a new pid (old %d)", r.Restarts(), r.PID(), pid)
	}
	if err := r.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := r.Kill(); err == nil {
		t.Errorf("Kill after Stop: got nil error, want one")
	}
}

func TestRunnerWaitRespawn(t *testing.T) {
	r := startFixture(t, testbed.RunnerOptions{RespawnDelay: 200 * time.Millisecond})
	pid := r.PID()
	if err := r.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitRespawn(ctx, 1); err != nil {
		t.Fatalf("WaitRespawn(1): %v", err)
	}
	if r.Restarts() != 1 || r.PID() == 0 || r.PID() == pid {
		t.Errorf("after WaitRespawn: got restarts %d pid %d, want 1 and a new pid (old %d)", r.Restarts(), r.PID(), pid)
	}
	// no exit, no respawn: a second one is never reached
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := r.WaitRespawn(short, 2); err == nil {
		t.Errorf("WaitRespawn(2) without a second exit: got nil error, want the deadline")
	}
}
