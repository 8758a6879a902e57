package core

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// FailPolicy is what a plugin does with a request it cannot judge, because
// its conf is invalid or because it panicked.
type FailPolicy int

const (
	// FailOpen lets the request go on as if the plugin were not configured.
	// For plugins that only observe, such as the request logger.
	FailOpen FailPolicy = iota
	// FailClosed answers the request with 500. For plugins that protect,
	// such as authentication and rate limiting: a typo in a conf must never
	// turn them off.
	FailClosed
)

func (p FailPolicy) String() string {
	if p == FailClosed {
		return "closed"
	}
	return "open"
}

// Deps are the process-wide facilities a plugin gets at construction.
type Deps struct {
	Log      *zap.Logger
	Throttle *LogThrottle
	Metrics  prometheus.Registerer
	Status   *Status
}

// NewDeps returns Deps for a runner other than ours (one built on the
// reference framework's runner.Run): log for every plugin, repeated events
// summarized each minute, metrics on reg, and a fresh Status.
func NewDeps(log *zap.Logger, reg prometheus.Registerer) Deps {
	return Deps{Log: log, Throttle: NewLogThrottle(log, time.Minute), Metrics: reg, Status: NewStatus("", nil)}
}

// Module is a plugin of this runner: the framework's plugin.Plugin plus a
// failure policy and a lifecycle. Connections to backing services belong to
// the module (one per process), never to a conf.
type Module interface {
	plugin.Plugin
	// FailPolicy is applied to requests whose conf is invalid and to
	// requests during which the plugin panicked.
	FailPolicy() FailPolicy
	// Start begins background work (dialing, pre-warming caches). It must
	// return at once: the runner listens before any backing service answers.
	Start(ctx context.Context)
	// Shutdown flushes and closes what the module owns, within ctx.
	Shutdown(ctx context.Context) error
}

// Recoverer is implemented by a module that answers a request after a panic
// in its own way (for example the rate limiter's fail_mode) instead of by its
// FailPolicy.
type Recoverer interface {
	Recovered(conf any, w http.ResponseWriter, r pkgHTTP.Request)
}

// InvalidConf is what a guarded plugin's ParseConf returns for a conf that
// fails validation. The framework silently drops a plugin whose ParseConf
// returns an error, so the guard never returns one: it keeps the plugin in
// the chain with this value, and applies the plugin's FailPolicy.
type InvalidConf struct {
	Err error
}

// InvalidConfBody is the body of the 500 answer to a request on a route
// whose conf is invalid. It says nothing about the conf itself.
const InvalidConfBody = `{"error":"gateway plugin misconfigured"}`

// Inflight counts plugin calls in progress, for a graceful shutdown.
type Inflight struct{ n atomic.Int64 }

// Wait returns when no call is in progress, or when ctx ends.
func (f *Inflight) Wait(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for f.n.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for in-flight calls: %d left: %w", f.n.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// GuardMetrics are the counters shared by all guarded plugins.
type GuardMetrics struct {
	confErrors   *prometheus.CounterVec
	invalidHits  *prometheus.CounterVec
	panics       *prometheus.CounterVec
	inflight     *Inflight
	throttle     *LogThrottle
	logged       sync.Mutex
	loggedHashes map[[32]byte]struct{}
}

// NewGuardMetrics registers the guard's counters on reg.
func NewGuardMetrics(reg prometheus.Registerer, throttle *LogThrottle, inflight *Inflight) *GuardMetrics {
	g := &GuardMetrics{
		confErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "plugin_conf_errors_total",
			Help: "Plugin confs that failed validation, by plugin (counted once per prepared conf).",
		}, []string{"plugin"}),
		invalidHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "plugin_invalid_conf_requests_total",
			Help: "Requests on routes whose plugin conf is invalid, answered by the plugin's failure policy.",
		}, []string{"plugin", "policy"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "plugin_panics_total",
			Help: "Panics recovered at the plugin boundary.",
		}, []string{"plugin", "phase"}),
		inflight:     inflight,
		throttle:     throttle,
		loggedHashes: map[[32]byte]struct{}{},
	}
	reg.MustRegister(g.confErrors, g.invalidHits, g.panics)
	return g
}

// Guard wraps m for registration with the framework: it recovers panics,
// keeps invalid confs in the chain and applies m's FailPolicy.
func (g *GuardMetrics) Guard(m Module) plugin.Plugin {
	return &guarded{m: m, name: m.Name(), g: g}
}

type guarded struct {
	m    Module
	name string
	g    *GuardMetrics
}

var _ plugin.Plugin = (*guarded)(nil)

func (p *guarded) Name() string { return p.name }

func (p *guarded) ParseConf(in []byte) (conf any, err error) {
	defer func() {
		if r := recover(); r != nil {
			p.g.panics.WithLabelValues(p.name, "parse_conf").Inc()
			p.g.throttle.Error("panic:"+p.name, "plugin panicked in ParseConf", fmt.Errorf("%v", r),
				zap.String("plugin", p.name), zap.ByteString("stack", debug.Stack()))
			conf, err = &InvalidConf{Err: fmt.Errorf("parse conf: internal error")}, nil
		}
	}()
	c, perr := p.m.ParseConf(in)
	if perr == nil {
		return c, nil
	}
	p.g.confErrors.WithLabelValues(p.name).Inc()
	p.logOnce(in, perr)
	return &InvalidConf{Err: perr}, nil
}

// logOnce logs a conf error once per distinct conf (bounded), naming each
// problem but never echoing the conf, which may hold secrets.
func (p *guarded) logOnce(in []byte, err error) {
	h := sha256.Sum256(append([]byte(p.name+"\x00"), in...))
	p.g.logged.Lock()
	_, seen := p.g.loggedHashes[h]
	if !seen && len(p.g.loggedHashes) < 4096 {
		p.g.loggedHashes[h] = struct{}{}
	}
	p.g.logged.Unlock()
	if seen {
		return
	}
	p.g.throttle.log.Error("invalid plugin conf: requests on this route get the plugin's failure policy",
		zap.String("plugin", p.name), zap.String("policy", p.m.FailPolicy().String()),
		zap.Strings("problems", Problems(err)), zap.String("conf_sha256", fmt.Sprintf("%x", h[:6])))
}

func (p *guarded) RequestFilter(conf any, w http.ResponseWriter, r pkgHTTP.Request) {
	if ic, ok := conf.(*InvalidConf); ok {
		p.invalid(ic, w)
		return
	}
	p.g.inflight.n.Add(1)
	defer p.g.inflight.n.Add(-1)
	defer func() {
		if rec := recover(); rec != nil {
			p.recovered("request", rec)
			p.afterPanic(conf, w, r)
		}
	}()
	p.m.RequestFilter(conf, w, r)
}

func (p *guarded) ResponseFilter(conf any, w pkgHTTP.Response) {
	if _, ok := conf.(*InvalidConf); ok {
		// An invalid conf in the response phase: nothing is changed. A
		// protecting plugin has no business there.
		p.g.invalidHits.WithLabelValues(p.name, FailOpen.String()).Inc()
		return
	}
	p.g.inflight.n.Add(1)
	defer p.g.inflight.n.Add(-1)
	defer func() {
		if rec := recover(); rec != nil {
			p.recovered("response", rec)
		}
	}()
	p.m.ResponseFilter(conf, w)
}

func (p *guarded) invalid(_ *InvalidConf, w http.ResponseWriter) {
	pol := p.m.FailPolicy()
	p.g.invalidHits.WithLabelValues(p.name, pol.String()).Inc()
	if pol == FailClosed {
		AnswerInvalidConf(w)
	}
}

// AnswerInvalidConf answers a request whose conf cannot be served (an
// invalid conf of a protecting plugin, or a plugin name the runner does not
// serve): a Stop with 500 and InvalidConfBody.
func AnswerInvalidConf(w http.ResponseWriter) { answer500(w, InvalidConfBody) }

// answer500 is the FailClosed answer: a Stop with 500 and a JSON body that
// says nothing about the plugin's internals.
func answer500(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write([]byte(body))
}

func (p *guarded) recovered(phase string, rec any) {
	p.g.panics.WithLabelValues(p.name, phase).Inc()
	p.g.throttle.Error("panic:"+p.name, "plugin panicked: request answered by its failure policy",
		fmt.Errorf("%v", rec), zap.String("plugin", p.name), zap.String("phase", phase),
		zap.ByteString("stack", debug.Stack()))
}

func (p *guarded) afterPanic(conf any, w http.ResponseWriter, r pkgHTTP.Request) {
	defer func() {
		if rec := recover(); rec != nil {
			p.recovered("recover", rec)
		}
	}()
	if rc, ok := p.m.(Recoverer); ok {
		rc.Recovered(conf, w, r)
		return
	}
	if p.m.FailPolicy() == FailClosed {
		answer500(w, `{"error":"gateway plugin error"}`)
	}
}
