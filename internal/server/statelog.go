package server

import (
	"sync"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// stateLog turns backing-service state changes into the state gauge and
// into few log lines: one when an outage begins (ok to degraded or down),
// one when it ends (back to ok) with how long it lasted and how often the
// state changed meanwhile, and in between only the throttle's periodic
// summary of the changes (a half-open breaker probe flips degraded and
// down every few hundred milliseconds).
type stateLog struct {
	gauge    *prometheus.GaugeVec
	changes  *prometheus.CounterVec
	log      *zap.Logger
	throttle *core.LogThrottle

	mu     sync.Mutex
	outage map[string]outage
}

type outage struct {
	since time.Time
	flaps int
}

func newStateLog(reg prometheus.Registerer, log *zap.Logger, throttle *core.LogThrottle) *stateLog {
	s := &stateLog{
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: core.Namespace, Name: "backend_state",
			Help: "1 for the current state of each backing service (ok, degraded, down, unknown).",
		}, []string{"backend", "state"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "backend_state_changes_total",
			Help: "State changes of each backing service, by the state entered.",
		}, []string{"backend", "to"}),
		log: log, throttle: throttle, outage: map[string]outage{},
	}
	reg.MustRegister(s.gauge, s.changes)
	return s
}

func (s *stateLog) changed(name string, from, to core.State, err error) {
	for _, st := range []core.State{core.StateUnknown, core.StateOK, core.StateDegraded, core.StateDown} {
		v := 0.0
		if st == to {
			v = 1
		}
		s.gauge.WithLabelValues(name, string(st)).Set(v)
	}
	s.changes.WithLabelValues(name, string(to)).Inc()
	bad := to == core.StateDegraded || to == core.StateDown
	s.mu.Lock()
	o, in := s.outage[name]
	switch {
	case bad && !in:
		s.outage[name] = outage{since: time.Now()}
	case bad:
		o.flaps++
		s.outage[name] = o
	case in:
		delete(s.outage, name)
	}
	s.mu.Unlock()
	fields := []zap.Field{zap.String("backend", name), zap.String("from", string(from)), zap.String("to", string(to))}
	switch {
	case bad && !in:
		if err != nil {
			fields = append(fields, zap.Error(err))
		}
		s.log.Error("backend outage began", fields...)
	case bad:
		s.throttle.Warn("backend-flap:"+name, "backend state changed during the outage", err, fields...)
	case in:
		s.log.Warn("backend recovered", append(fields, zap.Duration("outage", time.Since(o.since).Round(time.Millisecond)), zap.Int("state_changes", o.flaps))...)
	}
}
