package server

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
)

// TestOutageLogsItsStartAndEnd: a breaker probing a dead Redis flips the
// state between degraded and down every few hundred milliseconds. The log
// gets one line when the outage begins, one when it ends, and the
// throttle's summary in between, not a line per change.
func TestOutageLogsItsStartAndEnd(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(lockedBuffer{&sync.Mutex{}, &buf}, zapcore.WarnLevel)
	s := newStateLog(prometheus.NewRegistry(), log, core.NewLogThrottle(log, time.Hour))
	down := errors.New("dial tcp: connection refused")
	s.changed("redis", core.StateOK, core.StateDown, down)
	for range 200 {
		s.changed("redis", core.StateDown, core.StateDegraded, nil)
		s.changed("redis", core.StateDegraded, core.StateDown, down)
	}
	s.changed("redis", core.StateDown, core.StateOK, nil)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("log lines for one outage with 400 state changes: got %d, want 3 (began, first change, recovered):\n%s", len(lines), buf.String())
	}
	for i, want := range []string{"backend outage began", "backend state changed during the outage", "backend recovered"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: got %q, want %q", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[2], `"state_changes": 400`) {
		t.Errorf("recovery line: got %q, want state_changes 400", lines[2])
	}
}
