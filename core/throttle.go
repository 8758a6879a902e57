package core

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// LogThrottle turns repeated events into one log line per key per interval.
// The first event of a key is logged at once; the ones after it within the
// interval are counted and reported in a summary line ("suppressed": N) when
// the interval has passed, either at the next event or at the next Flush.
// APISIX writes the runner's output into its error.log, so nothing on the
// request path may log per request.
type LogThrottle struct {
	log      *zap.Logger
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*throttled
}

type throttled struct {
	last       time.Time
	suppressed int
	msg        string
	lastErr    error
	warn       bool
}

// NewLogThrottle returns a throttle logging to log at most once per key per
// interval. If interval is zero, 1m.
func NewLogThrottle(log *zap.Logger, interval time.Duration) *LogThrottle {
	if interval <= 0 {
		interval = time.Minute
	}
	return &LogThrottle{log: log, interval: interval, now: time.Now, keys: map[string]*throttled{}}
}

// Warn logs msg at warn level for key, throttled.
func (t *LogThrottle) Warn(key, msg string, err error, fields ...zap.Field) {
	t.event(key, msg, err, true, fields)
}

// Error logs msg at error level for key, throttled.
func (t *LogThrottle) Error(key, msg string, err error, fields ...zap.Field) {
	t.event(key, msg, err, false, fields)
}

func (t *LogThrottle) event(key, msg string, err error, warn bool, fields []zap.Field) {
	now := t.now()
	t.mu.Lock()
	e, ok := t.keys[key]
	if !ok {
		if len(t.keys) >= 1024 { // bounded: keys are plugin/backend names, never request data
			t.mu.Unlock()
			return
		}
		e = &throttled{}
		t.keys[key] = e
	}
	e.msg, e.lastErr, e.warn = msg, err, warn
	if ok && now.Sub(e.last) < t.interval {
		e.suppressed++
		t.mu.Unlock()
		return
	}
	suppressed := e.suppressed
	e.last, e.suppressed = now, 0
	t.mu.Unlock()
	t.write(msg, err, warn, suppressed, fields)
}

func (t *LogThrottle) write(msg string, err error, warn bool, suppressed int, fields []zap.Field) {
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	if suppressed > 0 {
		fields = append(fields, zap.Int("suppressed", suppressed), zap.Duration("over", t.interval))
	}
	if warn {
		t.log.Warn(msg, fields...)
	} else {
		t.log.Error(msg, fields...)
	}
}

// Flush writes a summary for every key with suppressed events whose interval
// has passed. The runner calls it periodically.
func (t *LogThrottle) Flush() {
	now := t.now()
	type line struct {
		msg        string
		err        error
		warn       bool
		suppressed int
	}
	var lines []line
	t.mu.Lock()
	for _, e := range t.keys {
		if e.suppressed > 0 && now.Sub(e.last) >= t.interval {
			lines = append(lines, line{e.msg + " (summary)", e.lastErr, e.warn, e.suppressed})
			e.last, e.suppressed = now, 0
		}
	}
	t.mu.Unlock()
	for _, l := range lines {
		t.write(l.msg, l.err, l.warn, l.suppressed, nil)
	}
}
