// Package server runs the plugin runner: it listens on APISIX's socket path
// (claimed by rename, socket.go) and speaks the ext-plugin protocol itself
// on api7/ext-plugin-proto (conns.go reads and writes frames within the
// bounds of Limits, dispatch.go answers PrepareConf, HTTPReqCall and
// HTTPRespCall from the conf cache, request.go and response.go implement
// the reference framework's public pkg/http interfaces, which stay the
// plugin contract). It serves the admin listener, starts the plugins
// without waiting for their backing services, and on SIGTERM drains or
// hands its connections over (handoff.go) before it shuts down.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options configure Run. cmd/go-runner fills them from the runner config.
type Options struct {
	Version string
	// LogLevel is the least level logged; SummaryInterval how often
	// repeated events are folded into one summary line.
	LogLevel        zapcore.Level
	SummaryInterval time.Duration
	// AdminListen is the admin listener's host:port, or "off"; AdminPprof
	// serves /debug/pprof/ there.
	AdminListen string
	AdminPprof  bool
	// ShutdownTimeout bounds the whole shutdown; DrainTimeout its first
	// part, while connections are handed over (see drain).
	ShutdownTimeout, DrainTimeout time.Duration
	// Limits bound what clients of the socket can make the runner hold.
	Limits Limits
	// MaxConfs caps the prepared confs kept (see confCache).
	MaxConfs int
	// Build constructs the plugins to serve with the Deps that Run passes.
	Build func(core.Deps) ([]core.Module, error)
	// Output receives the runner's logs. If nil, stderr.
	Output zapcore.WriteSyncer
}

// NewLogger returns the runner's logger: one line per event with an
// ISO-8601 UTC timestamp, at level or above, never a stack trace.
func NewLogger(out zapcore.WriteSyncer, level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = func(t time.Time, e zapcore.PrimitiveArrayEncoder) {
		e.AppendString(t.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	enc.EncodeLevel = zapcore.LowercaseLevelEncoder
	enc.EncodeDuration = zapcore.StringDurationEncoder
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), out, level))
}

// Run serves until SIGTERM or SIGINT, then shuts down within the configured
// timeout. It returns the error that stopped it, if any.
func Run(opts Options) error {
	out := opts.Output
	if out == nil {
		out = zapcore.Lock(os.Stderr)
	}
	log := NewLogger(out, opts.LogLevel)
	defer func() { _ = log.Sync() }()

	addr := os.Getenv("APISIX_LISTEN_ADDRESS")
	public, ok := strings.CutPrefix(addr, "unix:")
	if !ok || public == "" {
		return fmt.Errorf("run: APISIX_LISTEN_ADDRESS must be unix:<path>, got %q (APISIX sets it when it spawns the runner)", addr)
	}
	ttl, err := confCacheTTL()
	if err != nil {
		return err
	}

	reg := core.NewRegistry()
	throttle := core.NewLogThrottle(log, opts.SummaryInterval)
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: core.Namespace, Name: "runner_info", Help: "Always 1; the runner's version.",
	}, []string{"version"})
	info.WithLabelValues(opts.Version).Set(1)
	reg.MustRegister(info)
	status := core.NewStatus(opts.Version, newStateLog(reg, log, throttle).changed)
	inflight := &core.Inflight{}
	guards := core.NewGuardMetrics(reg, throttle, inflight)
	deps := core.Deps{Log: log, Throttle: throttle, Metrics: reg, Status: status}

	var modules []core.Module
	if opts.Build != nil {
		if modules, err = opts.Build(deps); err != nil {
			return fmt.Errorf("run: build plugins: %w", err)
		}
	}
	plugins := make(map[string]plugin.Plugin, len(modules))
	for _, m := range modules {
		if _, dup := plugins[m.Name()]; dup {
			return fmt.Errorf("run: register plugin %s: registered twice", m.Name())
		}
		plugins[m.Name()] = guards.Guard(m)
	}
	rpcm := newRPCMetrics(reg, throttle)
	cache := newConfCache(ttl, opts.MaxConfs, tokenBase())
	d := &dispatcher{plugins: plugins, cache: cache, m: rpcm}

	quit := make(chan os.Signal, 1)
	signal.Notify(quit, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(quit)
	// The handoff socket first: once an older runner sees APISIX's path
	// taken, it sends its connections there (handoff.go).
	hln, handoffOwned, herr := listenRenamed("unixpacket", handoffPath(public), os.Getpid(), 0o600)
	if herr != nil {
		log.Warn("handoff socket unavailable: an older runner will close its connections instead of handing them over", zap.Error(herr))
	}
	ln, owned, err := listenSocket(public, os.Getpid())
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	conns := newConnServer(ln, d, opts.Limits, rpcm)
	if hln != nil {
		go serveHandoff(hln, conns)
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: core.Namespace, Name: "rpc_connections",
			Help: "APISIX connections open to the runner.",
		}, func() float64 { return float64(conns.open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: core.Namespace, Name: "rpc_frame_memory_bytes",
			Help: "Bytes of large frames held or kept for reuse (bounded by rpc.max_frame_memory).",
		}, func() float64 { return float64(conns.budget.inUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: core.Namespace, Name: "rpc_confs",
			Help: "Prepared confs held (bounded by rpc.max_confs).",
		}, func() float64 { return float64(cache.len()) }),
	)
	go conns.serve()
	log.Warn("runner listening", zap.String("socket", public), zap.String("version", opts.Version), zap.Int("plugins", len(modules)))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, m := range modules {
		m.Start(ctx) // must not block: backing services are dialed in the background
	}
	admin := startAdmin(ctx, opts.AdminListen, opts.AdminPprof, reg, status, log)
	go func() {
		t := time.NewTicker(opts.SummaryInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				throttle.Flush()
				cache.sweep()
			}
		}
	}()

	sig := <-quit
	log.Warn("runner draining", zap.String("signal", sig.String()), zap.Int("connections", conns.open()))
	sctx, scancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
	defer scancel()
	if hln != nil {
		// take no more connections: a runner on its way out must never
		// dial its own handoff socket (a new runner that failed to claim
		// the handoff path leaves ours in place)
		_ = hln.Close()
		_, _ = handoffOwned.release()
	}
	drain(conns, owned, opts.DrainTimeout, log)
	if removed, err := owned.release(); err != nil {
		log.Error("release socket", zap.Error(err))
	} else if !removed {
		log.Warn("socket path now belongs to a newer runner: left in place", zap.String("socket", public))
	}
	if err := inflight.Wait(sctx); err != nil {
		log.Error("shutdown", zap.Error(err))
	}
	var wg sync.WaitGroup
	for _, m := range modules {
		wg.Add(1)
		go func(m core.Module) {
			defer wg.Done()
			if err := m.Shutdown(sctx); err != nil {
				log.Error("shutdown plugin", zap.String("plugin", m.Name()), zap.Error(err))
			}
		}(m)
	}
	wg.Wait()
	cancel()
	admin.stop()
	throttle.Flush()
	return nil
}

// confCacheTTL is how long a prepared conf lives after its last use:
// APISIX's APISIX_CONF_EXPIRE_TIME (seconds, default 3600) times 1.2, so a
// conf outlives APISIX's own token by a margin.
func confCacheTTL() (time.Duration, error) {
	v := os.Getenv("APISIX_CONF_EXPIRE_TIME")
	if v == "" {
		v = "3600"
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("run: APISIX_CONF_EXPIRE_TIME must be a positive number of seconds, got %q", v)
	}
	return time.Duration(n) * 1200 * time.Millisecond, nil
}

// drain keeps serving after SIGTERM, with every plugin working, until no
// connection is left or timeout. While the socket path is still ours (stop,
// or a reload whose new runner has not claimed it yet) new connections are
// accepted as before. Once a newer runner owns it, each connection is
// handed over to it at its next frame boundary (handoff.go), or, if that
// runner cannot take them, closed right after its next answer, so that
// APISIX's pool drops it. At timeout the idle ones are closed too.
func drain(conns *connServer, owned *ownedSocket, timeout time.Duration, log *zap.Logger) {
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	defer conns.stopHandoff()
	counts := func() []zap.Field {
		return []zap.Field{zap.Int64("handed_over", conns.handedOver.Load()), zap.Int64("closed_idle", conns.closedIdle.Load())}
	}
	var done <-chan struct{}
	for {
		select {
		case <-done:
			log.Warn("runner drained", append(counts(), zap.Duration("took", time.Since(start)))...)
			return
		case <-deadline.C:
			left := conns.open()
			done = conns.closeIdle()
			select {
			case <-done:
			case <-time.After(20 * time.Millisecond): // the idle ones go at once
			}
			// calls still in progress finish during the plugins' shutdown
			log.Warn("runner drain timed out: idle connections closed", append(counts(), zap.Duration("drain_timeout", timeout),
				zap.Int("connections", left), zap.Int("in_call", conns.open()))...)
			return
		case <-tick.C:
			if done != nil || owned.ours() {
				continue
			}
			var err error
			if done, err = conns.handOver(handoffPath(owned.public)); err != nil {
				log.Warn("cannot hand connections to the new runner: closing each after its next answer", zap.Error(err))
				done = conns.closeAfterCalls()
			}
		}
	}
}

type adminServer struct {
	srv *http.Server
}

func (a *adminServer) stop() {
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

// AdminHandler serves /metrics, /healthz and /status, and /debug/pprof/
// if withPprof.
func AdminHandler(reg *prometheus.Registry, status *core.Status, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(status.Snapshot()) // 200 also when degraded: the runner serves
	})
	return mux
}

// startAdmin binds the admin listener in the background. During `apisix
// reload` the old runner still holds the port for a moment, so binding is
// retried until it succeeds or ctx ends; the socket never waits for it.
func startAdmin(ctx context.Context, addr string, withPprof bool, reg *prometheus.Registry, status *core.Status, log *zap.Logger) *adminServer {
	if addr == "off" {
		return nil
	}
	a := &adminServer{srv: &http.Server{Handler: AdminHandler(reg, status, withPprof), ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		logged := false
		for {
			ln, err := net.Listen("tcp", addr)
			if err == nil {
				log.Info("admin listening", zap.String("addr", addr))
				if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					log.Error("admin listener", zap.Error(err))
				}
				return
			}
			if !logged {
				log.Warn("admin listener: bind failed, retrying", zap.String("addr", addr), zap.Error(err))
				logged = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return a
}
