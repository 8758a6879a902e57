package backing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Names of the toxics managed by Proxy.
const (
	toxicLatency      = "backing_latency"
	toxicBlackholeUp  = "backing_blackhole_up"
	toxicBlackholeDn  = "backing_blackhole_down"
	toxicResetPeer    = "backing_reset_peer"
	proxyStopDeadline = 10 * time.Second
)

// proxySeq numbers proxies so that their names are unique.
var proxySeq atomic.Int64

// Proxy is an in-process TCP proxy (toxiproxy used as a library, silent) on
// a free 127.0.0.1 port in front of an upstream address. Point clients at
// Addr and inject network faults with its methods. All methods are safe for
// concurrent use.
type Proxy struct {
	upstream string

	mu      sync.Mutex
	p       *toxiproxy.Proxy
	addr    string
	enabled bool
	closed  bool
}

// NewProxy starts a proxy listening on a free 127.0.0.1 port that forwards
// every accepted connection to upstream.
func NewProxy(upstream string) (*Proxy, error) {
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	name := fmt.Sprintf("backing-%d", proxySeq.Add(1))
	p := toxiproxy.NewProxy(server, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("new proxy to %s: %w", upstream, err)
	}
	p.Lock()
	addr := p.Listen
	p.Unlock()
	return &Proxy{upstream: upstream, p: p, addr: addr, enabled: true}, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (x *Proxy) Addr() string { return x.addr }

// Upstream returns the address the proxy forwards to.
func (x *Proxy) Upstream() string { return x.upstream }

// usable fails when the proxy is closed.
func (x *Proxy) usable(op string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("%s: proxy %s is closed", op, x.addr)
	}
	return nil
}

// addToxic replaces the named toxic with a new one.
func (x *Proxy) addToxic(op, name, typ, stream string, attrs string) error {
	if err := x.usable(op); err != nil {
		return err
	}
	x.removeToxic(name)
	body := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":%s}`,
		name, typ, stream, attrs)
	if _, err := x.p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// removeToxic removes the named toxic if present.
func (x *Proxy) removeToxic(name string) {
	if x.p.Toxics.GetToxic(name) != nil {
		_ = x.p.Toxics.RemoveToxic(context.Background(), name)
	}
}

// SetLatency delays every chunk of data coming back from the upstream by d,
// so each request/response round trip takes at least d longer. It applies
// to existing and new connections and replaces any previous latency.
func (x *Proxy) SetLatency(d time.Duration) error {
	return x.SetLatencyJitter(d, 0)
}

// SetLatencyJitter is SetLatency with a random jitter of +/- jitter.
func (x *Proxy) SetLatencyJitter(d, jitter time.Duration) error {
	if d < 0 || jitter < 0 {
		return fmt.Errorf("set latency: negative duration")
	}
	return x.addToxic("set latency", toxicLatency, "latency", "downstream",
		fmt.Sprintf(`{"latency":%d,"jitter":%d}`, d.Milliseconds(), jitter.Milliseconds()))
}

// ClearLatency removes the latency added by SetLatency.
func (x *Proxy) ClearLatency() error {
	if err := x.usable("clear latency"); err != nil {
		return err
	}
	x.removeToxic(toxicLatency)
	return nil
}

// Blackhole makes the proxy accept connections but silently drop all data in
// both directions and never close them (toxiproxy's timeout toxic with
// timeout 0), like a network partition. Clients only notice through their
// own deadlines.
func (x *Proxy) Blackhole() error {
	if err := x.addToxic("blackhole", toxicBlackholeUp, "timeout", "upstream", `{"timeout":0}`); err != nil {
		return err
	}
	return x.addToxic("blackhole", toxicBlackholeDn, "timeout", "downstream", `{"timeout":0}`)
}

// ClearBlackhole ends Blackhole. Connections that were blackholed are
// closed; new connections work again.
func (x *Proxy) ClearBlackhole() error {
	if err := x.usable("clear blackhole"); err != nil {
		return err
	}
	x.removeToxic(toxicBlackholeUp)
	x.removeToxic(toxicBlackholeDn)
	return nil
}

// ResetPeer makes the proxy reset (TCP RST) every connection as soon as the
// client sends data.
func (x *Proxy) ResetPeer() error {
	return x.addToxic("reset peer", toxicResetPeer, "reset_peer", "upstream", `{"timeout":0}`)
}

// ClearResetPeer ends ResetPeer.
func (x *Proxy) ClearResetPeer() error {
	if err := x.usable("clear reset peer"); err != nil {
		return err
	}
	x.removeToxic(toxicResetPeer)
	return nil
}

// Disable closes the listener and every proxied connection: new
// connections are refused until Enable.
func (x *Proxy) Disable() error {
	if err := x.usable("disable proxy"); err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.enabled {
		x.p.Stop()
		x.enabled = false
	}
	return nil
}

// Enable listens again on the same address after Disable.
func (x *Proxy) Enable() error {
	if err := x.usable("enable proxy"); err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.enabled {
		return nil
	}
	if err := x.p.Start(); err != nil {
		return fmt.Errorf("enable proxy %s: %w", x.addr, err)
	}
	x.enabled = true
	return nil
}

// Reset removes every toxic and enables the proxy.
func (x *Proxy) Reset() error {
	if err := x.usable("reset proxy"); err != nil {
		return err
	}
	x.p.Toxics.ResetToxics(context.Background())
	return x.Enable()
}

// Close removes the toxics, stops listening and closes every proxied
// connection. It is idempotent.
func (x *Proxy) Close() error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil
	}
	x.closed = true
	enabled := x.enabled
	x.enabled = false
	x.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		x.p.Toxics.ResetToxics(context.Background())
		if enabled {
			x.p.Stop()
		}
	}()
	select {
	case <-done:
		return nil
	case <-time.After(proxyStopDeadline):
		return errors.New("close proxy: toxiproxy did not stop in time")
	}
}
