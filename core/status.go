package core

import (
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// State is the health of a backing service as the runner sees it.
type State string

// The states of a backing service. The runner keeps serving in all of them;
// each plugin documents what it does in each.
const (
	StateUnknown  State = "unknown"  // not contacted yet
	StateOK       State = "ok"       // answering within its deadlines
	StateDegraded State = "degraded" // answering, but with errors or a stale cache
	StateDown     State = "down"     // not answering: the plugin applies its failure policy
)

// Backend tracks one backing service's state. It is safe for concurrent use;
// Set is cheap when the state does not change.
type Backend struct {
	name     string
	onChange func(name string, from, to State, err error)

	state atomic.Value // State: read without the lock, written under it

	mu      sync.Mutex
	since   time.Time
	lastErr string
	errAt   time.Time
	detail  map[string]any
}

// Set records the state and, when err is not nil, the last error. It calls
// the status's change hook when the state changes.
func (b *Backend) Set(s State, err error) {
	if err == nil && b.State() == s {
		return // nothing to record: every successful call of a plugin gets here
	}
	b.mu.Lock()
	from := b.State()
	if from != s {
		b.state.Store(s)
		b.since = time.Now()
	}
	if err != nil {
		b.lastErr = err.Error()
		b.errAt = time.Now()
	}
	hook := b.onChange
	b.mu.Unlock()
	if from != s && hook != nil {
		hook(b.name, from, s, err)
	}
}

// SetError records err as the last error without changing the state.
func (b *Backend) SetError(err error) {
	b.mu.Lock()
	b.lastErr = err.Error()
	b.errAt = time.Now()
	b.mu.Unlock()
}

// SetDetail attaches extra JSON-able facts shown in /status (such as the spool
// size or the key age).
func (b *Backend) SetDetail(key string, v any) {
	b.mu.Lock()
	if b.detail == nil {
		b.detail = map[string]any{}
	}
	b.detail[key] = v
	b.mu.Unlock()
}

// State returns the current state.
func (b *Backend) State() State {
	return b.state.Load().(State)
}

// BackendSnapshot is one backing service in /status.
type BackendSnapshot struct {
	State     State          `json:"state"`
	Since     time.Time      `json:"since"`
	LastError string         `json:"last_error,omitempty"`
	ErrorAt   *time.Time     `json:"last_error_at,omitempty"`
	Detail    map[string]any `json:"detail,omitempty"`
}

func (b *Backend) snapshot() BackendSnapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BackendSnapshot{State: b.State(), Since: b.since, LastError: b.lastErr}
	if !b.errAt.IsZero() {
		t := b.errAt
		s.ErrorAt = &t
	}
	if len(b.detail) > 0 {
		s.Detail = make(map[string]any, len(b.detail))
		for k, v := range b.detail {
			s.Detail[k] = v
		}
	}
	return s
}

// Status is the runner's view of its backing services and plugins, served as
// JSON on the admin listener's /status.
type Status struct {
	started time.Time
	version string

	mu       sync.Mutex
	backends map[string]*Backend
	plugins  map[string]func() any
	onChange func(name string, from, to State, err error)
}

// NewStatus returns an empty Status. onChange, if not nil, is called on every
// backend state change (the runner logs it and updates a gauge).
func NewStatus(version string, onChange func(name string, from, to State, err error)) *Status {
	return &Status{
		started:  time.Now(),
		version:  version,
		backends: map[string]*Backend{},
		plugins:  map[string]func() any{},
		onChange: onChange,
	}
}

// Backend returns the tracker for name, creating it in StateUnknown.
func (s *Status) Backend(name string) *Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.backends[name]; ok {
		return b
	}
	b := &Backend{name: name, since: time.Now(), onChange: s.onChange}
	b.state.Store(StateUnknown)
	s.backends[name] = b
	return b
}

// Plugin registers a function returning the plugin's counters for /status.
func (s *Status) Plugin(name string, counters func() any) {
	s.mu.Lock()
	s.plugins[name] = counters
	s.mu.Unlock()
}

// Snapshot is the /status document.
type Snapshot struct {
	Status   string                     `json:"status"`
	Version  string                     `json:"version"`
	Started  time.Time                  `json:"started"`
	Backends map[string]BackendSnapshot `json:"backends"`
	Plugins  map[string]any             `json:"plugins"`
}

// Snapshot returns the current status. The overall status is "ok" when every
// backend is ok or not yet contacted, else "degraded": the runner serves in
// both.
func (s *Status) Snapshot() Snapshot {
	s.mu.Lock()
	names := make([]string, 0, len(s.backends))
	for n := range s.backends {
		names = append(names, n)
	}
	plugins := make(map[string]func() any, len(s.plugins))
	for n, f := range s.plugins {
		plugins[n] = f
	}
	s.mu.Unlock()
	sort.Strings(names)
	out := Snapshot{Status: "ok", Version: s.version, Started: s.started,
		Backends: map[string]BackendSnapshot{}, Plugins: map[string]any{}}
	for _, n := range names {
		b := s.Backend(n).snapshot()
		if b.State == StateDegraded || b.State == StateDown {
			out.Status = "degraded"
		}
		out.Backends[n] = b
	}
	for n, f := range plugins {
		out.Plugins[n] = f()
	}
	return out
}

// MarshalJSON renders the snapshot.
func (s *Status) MarshalJSON() ([]byte, error) { return json.Marshal(s.Snapshot()) }
