package server

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
)

// rpcMetrics count what happens on the APISIX socket. Every event that a
// client can cause is counted here and logged through the throttle only:
// the first of a kind at once, the rest folded into a summary line per
// interval, so no input can flood APISIX's error.log.
type rpcMetrics struct {
	refused       *prometheus.CounterVec
	frameTimeouts prometheus.Counter
	badFrames     *prometheus.CounterVec
	connErrors    *prometheus.CounterVec
	unknownTokens prometheus.Counter
	rejectedConfs *prometheus.CounterVec
	rejectedCalls prometheus.Counter
	throttle      *core.LogThrottle
}

func newRPCMetrics(reg prometheus.Registerer, throttle *core.LogThrottle) *rpcMetrics {
	m := &rpcMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_refused_total",
			Help: "Connections closed at once: over rpc.max_connections (connections), or a frame that would exceed rpc.max_frame_memory (frame_memory).",
		}, []string{"reason"}),
		frameTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_frame_timeouts_total",
			Help: "Connections closed because a frame did not complete within rpc.frame_timeout (or a new connection sent nothing).",
		}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_bad_frames_total",
			Help: "Frames answered with a bad-request error: an unknown type, or a body that is not the expected FlatBuffers table.",
		}, []string{"reason"}),
		connErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_connection_errors_total",
			Help: "Connections that ended on an error: a reset or a frame cut short (read), a failed answer (write), a failed ExtraInfo exchange (extra_info).",
		}, []string{"op"}),
		unknownTokens: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_unknown_conf_tokens_total",
			Help: "Calls carrying a conf token this runner does not know (APISIX then prepares the conf again); expected after a reload or a respawn.",
		}),
		rejectedConfs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_rejected_confs_total",
			Help: "Prepared confs whose every call is answered 500: it names a plugin this runner does not serve (unknown_plugin), holds too many (too_many_plugins), or a plugin registered without the guard refused its conf (invalid_conf).",
		}, []string{"reason"}),
		rejectedCalls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: core.Namespace, Name: "rpc_rejected_conf_calls_total",
			Help: "Calls answered 500 because their conf was rejected (see rpc_rejected_confs_total).",
		}),
		throttle: throttle,
	}
	reg.MustRegister(m.refused, m.frameTimeouts, m.badFrames, m.connErrors, m.unknownTokens, m.rejectedConfs, m.rejectedCalls)
	return m
}

// event logs a client-caused event, throttled per key.
func (m *rpcMetrics) event(key, msg string, err error) {
	m.throttle.Warn("rpc:"+key, msg, err)
}

// readEnded counts why a connection's read loop ended.
func (m *rpcMetrics) readEnded(err error) {
	switch {
	case errors.Is(err, errLeave), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, errBudget):
		// a clean close between frames, our own close, or counted already
	case errors.Is(err, errFrameTimeout):
		m.frameTimeouts.Inc()
		m.event("frame_timeout", "connection closed: frame not complete within rpc.frame_timeout", nil)
	default:
		m.connError("read", err)
	}
}

func (m *rpcMetrics) connError(op string, err error) {
	m.connErrors.WithLabelValues(op).Inc()
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		m.event("conn:"+op, "connection reset by APISIX", nil)
		return
	}
	m.event("conn:"+op, "connection ended on an error", err)
}
