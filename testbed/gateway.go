package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
)

// GatewayOptions configures a Gateway. Zero values take APISIX's defaults.
type GatewayOptions struct {
	// ConnectTimeout bounds a dial of the runner socket. Default 1 s.
	ConnectTimeout time.Duration
	// SendTimeout bounds each frame write. Default 60 s.
	SendTimeout time.Duration
	// ReadTimeout bounds each frame read. Default 60 s.
	ReadTimeout time.Duration
	// PoolSize is the number of idle keepalive connections kept. Default 32;
	// negative disables keepalive (every call dials).
	PoolSize int
	// IdleTimeout closes idle connections older than this. Default 180 s.
	IdleTimeout time.Duration
	// TokenTTL is get_conf_token_cache_time(): the lrucache TTL; the shared
	// dict keeps tokens for 0.9 × TokenTTL. Default 3600 s.
	TokenTTL time.Duration
	// TokenCacheItems is the lrucache size (PLUGIN_ITEMS_COUNT). Default 8.
	TokenCacheItems int
	// LockTimeout bounds the wait for the "prepare_conf" lock (resty.lock's
	// default timeout). Default 5 s.
	LockTimeout time.Duration
	// WorkerID is the nginx worker id used in request ids (id<<22 + count).
	// Default 0.
	WorkerID int
	// MaxHeaders and MaxArgs bound the header lines and args sent in an
	// HTTPReqCall (ngx.req.get_headers/get_uri_args). Default 100 each.
	MaxHeaders, MaxArgs int
}

func (o *GatewayOptions) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ConnectTimeout, time.Second)
	def(&o.SendTimeout, 60*time.Second)
	def(&o.ReadTimeout, 60*time.Second)
	def(&o.IdleTimeout, 180*time.Second)
	def(&o.TokenTTL, 3600*time.Second)
	def(&o.LockTimeout, 5*time.Second)
	if o.PoolSize == 0 { // negative: no keepalive
		o.PoolSize = 32
	}
	if o.TokenCacheItems == 0 {
		o.TokenCacheItems = 8
	}
	if o.MaxHeaders <= 0 {
		o.MaxHeaders = 100
	}
	if o.MaxArgs <= 0 {
		o.MaxArgs = 100
	}
}

// GatewayStats are cumulative counters of a Gateway.
type GatewayStats struct {
	Prepares      int64 // PrepareConf frames sent
	Calls         int64 // HTTPReqCall frames sent
	RespCalls     int64 // HTTPRespCall frames sent
	ExtraInfo     int64 // ExtraInfo questions answered
	Dials         int64 // connections dialed successfully
	DialErrors    int64 // failed dials
	Reused        int64 // connections taken from the keepalive pool
	TokenRetries  int64 // "conf token not found" answers (each flushes the tokens)
	Flushes       int64 // token cache flushes (retries and FlushTokens calls)
	Failures      int64 // phases that ended in 503 or degradation
	Degraded      int64 // failures ignored because of allow_degradation
	OpenConns     int64 // connections open now (in use or idle)
	PeakOpenConns int64 // highest OpenConns seen
	IdleConns     int64 // connections idle in the pool now
}

type gatewayCounters struct {
	prepares, calls, respCalls, extraInfo atomic.Int64
	dials, dialErrors, reused             atomic.Int64
	tokenRetries, flushes                 atomic.Int64
	failures, degraded                    atomic.Int64
}

// Gateway plays one APISIX nginx worker talking to the runner. It is safe
// for concurrent use; concurrent Do calls behave like concurrent requests
// handled by that worker.
type Gateway struct {
	path     string
	opts     GatewayOptions
	pool     pool
	tokens   *tokenCache
	lock     shLock
	ids      atomic.Uint32
	open     atomic.Int64
	peakOpen atomic.Int64
	stats    gatewayCounters
}

// NewGateway returns a Gateway for the runner listening on socketPath (a
// file path, without APISIX's "unix:" prefix; the prefix is stripped if
// present).
func NewGateway(socketPath string, opts GatewayOptions) *Gateway {
	opts.setDefaults()
	g := &Gateway{
		path:   strings.TrimPrefix(socketPath, "unix:"),
		opts:   opts,
		tokens: newTokenCache(opts.TokenCacheItems, opts.TokenTTL),
		lock:   make(shLock, 1),
	}
	g.pool.g = g
	return g
}

// SocketPath returns the runner socket path.
func (g *Gateway) SocketPath() string { return g.path }

// FlushTokens drops every cached conf token, as APISIX does when the runner
// exits (the runner_exit event) or answers "conf token not found".
func (g *Gateway) FlushTokens() {
	g.stats.flushes.Add(1)
	g.tokens.flush()
}

// CachedTokens returns the number of tokens in the shared-dict cache.
func (g *Gateway) CachedTokens() int { return g.tokens.len() }

// Close closes the idle connections. The Gateway stays usable.
func (g *Gateway) Close() error {
	g.pool.closeIdle()
	return nil
}

// Stats returns a snapshot of the counters.
func (g *Gateway) Stats() GatewayStats {
	s := &g.stats
	return GatewayStats{
		Prepares:      s.prepares.Load(),
		Calls:         s.calls.Load(),
		RespCalls:     s.respCalls.Load(),
		ExtraInfo:     s.extraInfo.Load(),
		Dials:         s.dials.Load(),
		DialErrors:    s.dialErrors.Load(),
		Reused:        s.reused.Load(),
		TokenRetries:  s.tokenRetries.Load(),
		Flushes:       s.flushes.Load(),
		Failures:      s.failures.Load(),
		Degraded:      s.degraded.Load(),
		OpenConns:     g.open.Load(),
		PeakOpenConns: g.peakOpen.Load(),
		IdleConns:     int64(g.pool.idleCount()),
	}
}

// ResetPeakOpenConns sets PeakOpenConns to the current OpenConns.
func (g *Gateway) ResetPeakOpenConns() { g.peakOpen.Store(g.open.Load()) }

// nextID is APISIX's generate_id: worker_id<<22 + a counter wrapping at 1<<22.
func (g *Gateway) nextID() uint32 {
	n := g.ids.Add(1) - 1
	return uint32(g.opts.WorkerID)<<22 + n%(1<<22)
}

// Do runs one request through the route's ext-plugins, the upstream and back,
// and returns what the client gets. Runner failures are not errors: they show
// as a 503 (or a degradation) with Result.Err set. Do returns an error only
// for invalid arguments or when ctx ends; the Result is then still filled in
// as far as it got.
func (g *Gateway) Do(ctx context.Context, route *Route, req *Request) (*Result, error) {
	if route == nil || req == nil {
		return nil, errors.New("do: nil route or request")
	}
	start := time.Now()
	x := newExchange(ctx, g, route, req)
	x.run()
	x.res.Latency = time.Since(start)
	if err := ctx.Err(); err != nil {
		return x.res, fmt.Errorf("do: %w", err)
	}
	return x.res, nil
}

// exchange is one request's trip through APISIX.
type exchange struct {
	ctx   context.Context
	g     *Gateway
	route *Route
	req   *Request
	res   *Result

	// The upstream request as modified so far (nginx's request state).
	method  string
	path    string
	args    url.Values
	headers http.Header
	host    string // $upstream_host
	body    []byte
	srcIP   []byte

	// Response headers set through ngx.header by the ext-plugins.
	clientHdr http.Header

	// Post-resp state: ctx.runner_ext_response and how often its body was read.
	upResp        *UpstreamResponse
	respBodyReads int
}

func newExchange(ctx context.Context, g *Gateway, route *Route, req *Request) *exchange {
	x := &exchange{
		ctx: ctx, g: g, route: route, req: req,
		res:       &Result{},
		method:    req.Method,
		path:      req.Path,
		args:      url.Values{},
		headers:   http.Header{},
		body:      req.Body,
		clientHdr: http.Header{},
	}
	if x.method == "" {
		x.method = http.MethodGet
	}
	if x.path == "" {
		x.path = "/"
	}
	for k, vs := range req.Args {
		x.args[k] = append([]string(nil), vs...)
	}
	for k, vs := range req.Headers {
		for _, v := range vs {
			x.headers.Add(k, v)
		}
	}
	x.host = req.UpstreamHost
	if x.host == "" {
		x.host = x.headers.Get("Host")
	}
	ip := req.SrcIP
	if ip == nil {
		ip = net.IPv4(127, 0, 0, 1)
	}
	if v4 := ip.To4(); v4 != nil {
		x.srcIP = v4
	} else {
		x.srcIP = ip.To16()
	}
	return x
}

// callOut is what a phase handler hands back to communicate: a status code
// (0: none) and an optional body, as the Lua handlers' code and body.
type callOut struct {
	status int
	body   []byte
}

func (x *exchange) run() {
	for _, p := range []struct {
		phase Phase
		confs []PluginConf
	}{{PhasePreReq, x.route.PreReq}, {PhasePostReq, x.route.PostReq}} {
		if p.confs == nil {
			continue
		}
		out := x.communicate(p.phase, p.confs, TypeHTTPReqCall)
		if out.status != 0 {
			// Stop, or 503: nginx answers the client itself.
			x.res.Status, x.res.Body, x.res.Headers = out.status, out.body, x.clientHdr
			return
		}
	}
	if x.route.PostResp != nil {
		x.postResp()
		return
	}
	up := x.callUpstream(false)
	hdr := up.Headers.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	for k, vs := range x.clientHdr {
		hdr[k] = vs
	}
	x.res.Status, x.res.Headers, x.res.Body = up.Status, hdr, up.Body
}

// postResp is ext-plugin-post-resp's before_proxy: APISIX calls the upstream
// itself (lua-resty-http), then sends HTTPRespCall.
func (x *exchange) postResp() {
	up := x.callUpstream(true)
	x.upResp = &up
	out := x.communicate(PhasePostResp, x.route.PostResp, TypeHTTPRespCall)
	if out.body != nil {
		x.res.Status, x.res.Body, x.res.Headers = out.status, out.body, x.clientHdr
		return
	}
	// send_response: status maybe changed, original body (or the chunks
	// read through ExtraInfo RespBody; a second read leaves none).
	status := up.Status
	if out.status != 0 {
		status = out.status
	}
	body := up.Body
	if x.respBodyReads > 1 {
		body = nil
	}
	x.res.Status, x.res.Body, x.res.Headers = status, body, x.clientHdr
}

// callUpstream calls Request.Upstream with the current request state.
// viaLua is the post-resp path: lua-resty-http sends core.request.headers
// (at most MaxHeaders lines, Host as the client sent it).
func (x *exchange) callUpstream(viaLua bool) UpstreamResponse {
	up := &UpstreamRequest{
		Method: x.method,
		Path:   x.path,
		Args:   cloneValues(x.args),
		Host:   x.host,
		Body:   x.body,
	}
	if viaLua {
		up.Headers = http.Header{}
		for _, e := range x.headerEntries(false) {
			up.Headers.Add(e.name, e.value)
		}
		up.Host = up.Headers.Get("Host")
	} else {
		up.Headers = x.headers.Clone()
		if x.host != "" {
			up.Headers.Set("Host", x.host)
		}
	}
	x.res.UpstreamCalled = true
	x.res.Upstream = up
	resp := UpstreamResponse{Status: http.StatusOK}
	if x.req.Upstream != nil {
		resp = x.req.Upstream(up)
	}
	if resp.Status == 0 {
		resp.Status = http.StatusOK
	}
	return resp
}

// communicate is init.lua's _M.communicate: up to 3 tries, flushing every
// cached token after each "conf token not found"; any other failure gives 503
// or, with allow_degradation, nothing.
func (x *exchange) communicate(phase Phase, confs []PluginConf, ty byte) callOut {
	x.res.Phases = append(x.res.Phases, phase)
	var err error
	for tries := 0; tries < 3; {
		tries++
		var out callOut
		out, err = x.rpcCall(phase, confs, ty)
		if err == nil {
			return out
		}
		if !IsConfTokenNotFound(err) {
			break
		}
		x.res.TokenRetries++
		x.g.stats.tokenRetries.Add(1)
		x.g.FlushTokens()
	}
	x.g.stats.failures.Add(1)
	if x.res.Err == nil {
		x.res.Err = fmt.Errorf("%s: %w", phase, err)
		x.res.ErrPhase = phase
	}
	if x.route.AllowDegradation {
		x.g.stats.degraded.Add(1)
		x.res.Degraded = true
		return callOut{}
	}
	return callOut{status: http.StatusServiceUnavailable}
}

// withConn is rpc_call: take a connection (pool or dial), run fn on it, close
// the connection on error, else put it back into the keepalive pool.
func (x *exchange) withConn(fn func(c *rconn) error) error {
	c, err := x.g.pool.get(x.ctx)
	if err != nil {
		return err
	}
	stop := func() bool { return true }
	if x.ctx.Done() != nil {
		stop = context.AfterFunc(x.ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	}
	err = fn(c)
	if !stop() || err != nil {
		c.close()
		return err
	}
	x.g.pool.put(c)
	return nil
}

func (x *exchange) rpcCall(phase Phase, confs []PluginConf, ty byte) (callOut, error) {
	var out callOut
	err := x.withConn(func(c *rconn) error {
		var err error
		if ty == TypeHTTPRespCall {
			out, err = x.respCall(c, phase, confs)
		} else {
			out, err = x.reqCall(c, phase, confs)
		}
		return err
	})
	return out, err
}

// token looks the conf token up in the lrucache and, on a miss, prepares it
// on a second connection while the request's own connection stays held.
func (x *exchange) token(phase Phase, confs []PluginConf) (uint32, error) {
	key := "route#" + x.route.ID + "#" + string(phase)
	tok, ok, gen := x.g.tokens.lruGet(key, x.route.Version)
	if ok {
		return tok, nil
	}
	uniqueKey := key + "#" + strconv.Itoa(x.route.Version)
	err := x.withConn(func(c *rconn) error {
		var err error
		tok, err = x.prepare(c, uniqueKey, confs)
		return err
	})
	if err != nil {
		return 0, err
	}
	x.g.tokens.lruSet(gen, key, x.route.Version, tok)
	return tok, nil
}

// prepare is the RPC_PREPARE_CONF handler: shared dict, then the global
// "prepare_conf" lock, shared dict again, then PrepareConf on the wire.
func (x *exchange) prepare(c *rconn, uniqueKey string, confs []PluginConf) (uint32, error) {
	g := x.g
	if tok, ok := g.tokens.shGet(uniqueKey); ok {
		return tok, nil
	}
	if err := g.lock.lock(x.ctx, g.opts.LockTimeout); err != nil {
		return 0, fmt.Errorf("failed to acquire the lock: %w", err)
	}
	defer g.lock.unlock()
	if tok, ok := g.tokens.shGet(uniqueKey); ok {
		return tok, nil
	}
	b := getBuilder()
	payload := encodePrepareConf(b, uniqueKey, confs)
	err := c.send(x.ctx, TypePrepareConf, payload)
	putBuilder(b)
	if err != nil {
		return 0, fmt.Errorf("failed to send RPC_PREPARE_CONF: %w", err)
	}
	g.stats.prepares.Add(1)
	x.res.Prepares++
	x.res.RoundTrips++
	ty, resp, err := c.recv(x.ctx)
	if err != nil {
		return 0, fmt.Errorf("failed to receive RPC_PREPARE_CONF: %w", err)
	}
	if ty == TypeError {
		return 0, fmt.Errorf("failed to receive RPC_PREPARE_CONF: %w", errFrame(resp))
	}
	if ty != TypePrepareConf {
		return 0, fmt.Errorf("failed to receive RPC_PREPARE_CONF: unexpected type %d: %w", ty, ErrBadFrame)
	}
	tok, err := DecodePrepareConfAnswer(resp)
	if err != nil {
		return 0, fmt.Errorf("failed to receive RPC_PREPARE_CONF: %w", err)
	}
	g.tokens.shSet(uniqueKey, tok)
	return tok, nil
}

// errFrame turns an Err frame payload into its error.
func errFrame(payload []byte) error {
	re, err := DecodeError(payload)
	if err != nil {
		return err
	}
	return re
}

// exchangeFrames sends a call and answers ExtraInfo questions until the
// answer of type ty arrives.
func (x *exchange) exchangeFrames(c *rconn, ty byte, name string, payload []byte) ([]byte, error) {
	if err := c.send(x.ctx, ty, payload); err != nil {
		return nil, fmt.Errorf("failed to send %s: %w", name, err)
	}
	x.res.RoundTrips++
	for {
		rty, resp, err := c.recv(x.ctx)
		if err != nil {
			return nil, fmt.Errorf("failed to receive %s: %w", name, err)
		}
		if rty == TypeError {
			return nil, fmt.Errorf("failed to receive %s: %w", name, errFrame(resp))
		}
		if rty != TypeExtraInfo {
			if rty != ty {
				return nil, fmt.Errorf("failed to receive %s: unexpected type %d: %w", name, rty, ErrBadFrame)
			}
			return resp, nil
		}
		out, err := x.extraInfo(resp)
		if err != nil {
			return nil, fmt.Errorf("failed to handle RPC_EXTRA_INFO: %w", err)
		}
		if err := c.send(x.ctx, TypeExtraInfo, out); err != nil {
			return nil, fmt.Errorf("failed to reply RPC_EXTRA_INFO: %w", err)
		}
		x.res.RoundTrips++
	}
}

type hdrEntry struct{ name, value string }

// headerEntries lists the request headers as ngx.req.get_headers would:
// lower-cased names, at most MaxHeaders lines (sorted by name, as we have no
// wire order). With upstreamHost, "host" carries $upstream_host.
func (x *exchange) headerEntries(upstreamHost bool) []hdrEntry {
	names := make([]string, 0, len(x.headers))
	for k := range x.headers {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []hdrEntry
	for _, k := range names {
		lk := strings.ToLower(k)
		for _, v := range x.headers[k] {
			if len(out) >= x.g.opts.MaxHeaders {
				return out
			}
			if upstreamHost && lk == "host" && x.host != "" {
				v = x.host
			}
			out = append(out, hdrEntry{lk, v})
		}
	}
	return out
}

// limitedArgs returns the args as ngx.req.get_uri_args would (at most MaxArgs).
func (x *exchange) limitedArgs() url.Values {
	n := 0
	for _, vs := range x.args {
		n += len(vs)
	}
	if n <= x.g.opts.MaxArgs {
		return x.args
	}
	keys := make([]string, 0, len(x.args))
	for k := range x.args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := url.Values{}
	n = 0
	for _, k := range keys {
		for _, v := range x.args[k] {
			if n >= x.g.opts.MaxArgs {
				return out
			}
			out[k] = append(out[k], v)
			n++
		}
	}
	return out
}

func (x *exchange) reqCall(c *rconn, phase Phase, confs []PluginConf) (callOut, error) {
	tok, err := x.token(phase, confs)
	if err != nil {
		return callOut{}, err
	}
	f := reqCallFields{
		id:    x.g.nextID(),
		token: tok,
		srcIP: x.srcIP,
		path:  x.path,
	}
	f.method, f.hasMeth = methods[x.method]
	args := x.limitedArgs()
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range args[k] {
			f.args = append(f.args, kv{name: k, value: v})
		}
	}
	for _, h := range x.headerEntries(true) {
		f.headers = append(f.headers, kv{name: h.name, value: h.value})
	}
	b := getBuilder()
	payload := encodeHTTPReqCall(b, &f)
	x.g.stats.calls.Add(1)
	resp, err := x.exchangeFrames(c, TypeHTTPReqCall, "RPC_HTTP_REQ_CALL", payload)
	putBuilder(b)
	if err != nil {
		return callOut{}, err
	}
	ans, err := DecodeReqCallAnswer(resp)
	if err != nil {
		return callOut{}, fmt.Errorf("failed to receive RPC_HTTP_REQ_CALL: %w", err)
	}
	switch {
	case ans.Stop != nil:
		x.res.StoppedBy = phase
		x.setRespHeaders(ans.Stop.Headers, false)
		status := ans.Stop.Status
		if status == 0 {
			status = http.StatusOK
		}
		return callOut{status: status, body: ans.Stop.Body}, nil
	case ans.Rewrite != nil:
		x.applyRewrite(ans.Rewrite, args)
	}
	return callOut{}, nil
}

// excludedRespHeaders are dropped from a Rewrite's resp_headers (and from the
// upstream headers copied in post-resp when the runner sets none).
var excludedRespHeaders = map[string]bool{
	"connection": true, "content-length": true, "transfer-encoding": true,
	"location": true, "server": true, "www-authenticate": true,
	"content-encoding": true, "content-type": true, "content-location": true,
	"content-language": true,
}

// setRespHeaders applies header entries to the client response like
// init.lua: names lower-cased; the first entry of a name replaces what is
// set (core.response.set_header), later ones add.
func (x *exchange) setRespHeaders(entries []Entry, filter bool) {
	seen := map[string]bool{}
	for _, e := range entries {
		name := strings.ToLower(e.Name)
		if filter && excludedRespHeaders[name] {
			continue
		}
		if !seen[name] {
			seen[name] = true
			if e.HasValue {
				x.clientHdr.Set(name, e.Value)
			} else {
				x.clientHdr.Del(name)
			}
			continue
		}
		if e.HasValue {
			x.clientHdr.Add(name, e.Value)
		}
	}
}

// applyRewrite applies a Rewrite answer like init.lua. args is the table
// core.request.get_uri_args returned when the call was built.
func (x *exchange) applyRewrite(rw *RewriteAction, args url.Values) {
	if rw.HasPath && rw.Path != "" {
		x.path = uriSafeEncode(rw.Path)
	}
	for _, h := range rw.Headers {
		// core.request.set_header: replaces every value; nil (or an
		// empty value, for nginx) removes the header.
		if !h.HasValue || h.Value == "" {
			x.headers.Del(h.Name)
		} else {
			x.headers.Set(h.Name, h.Value)
		}
		if strings.EqualFold(h.Name, "host") && h.HasValue {
			x.host = h.Value
		}
	}
	if len(rw.Body) > 0 {
		x.body = rw.Body
	}
	x.setRespHeaders(rw.RespHeaders, true)
	if len(rw.Args) > 0 {
		na := cloneValues(args)
		changed := map[string]bool{}
		for _, a := range rw.Args {
			if !a.HasValue {
				delete(na, a.Name)
				continue
			}
			if changed[a.Name] {
				na[a.Name] = append(na[a.Name], a.Value)
			} else {
				na[a.Name] = []string{a.Value}
			}
			changed[a.Name] = true
		}
		x.args = na
	}
}

func (x *exchange) respCall(c *rconn, phase Phase, confs []PluginConf) (callOut, error) {
	tok, err := x.token(phase, confs)
	if err != nil {
		return callOut{}, err
	}
	up := x.upResp
	names := make([]string, 0, len(up.Headers))
	for k := range up.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	var hdrs []kv
	for _, k := range names {
		for _, v := range up.Headers[k] {
			hdrs = append(hdrs, kv{name: k, value: v})
		}
	}
	b := getBuilder()
	payload := encodeHTTPRespCall(b, x.g.nextID(), up.Status, tok, hdrs)
	x.g.stats.respCalls.Add(1)
	resp, err := x.exchangeFrames(c, TypeHTTPRespCall, "RPC_HTTP_RESP_CALL", payload)
	putBuilder(b)
	if err != nil {
		return callOut{}, err
	}
	ans, err := DecodeRespCallAnswer(resp)
	if err != nil {
		return callOut{}, fmt.Errorf("failed to receive RPC_HTTP_RESP_CALL: %w", err)
	}
	if len(ans.Headers) > 0 {
		x.setRespHeaders(ans.Headers, false)
	} else {
		for k, vs := range up.Headers {
			if !excludedRespHeaders[strings.ToLower(k)] {
				x.clientHdr[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
			}
		}
	}
	status := ans.Status
	if status == 0 && ans.Body != nil {
		// runner changes body only: keep the upstream status
		status = up.Status
	}
	return callOut{status: status, body: ans.Body}, nil
}

// extraInfo answers one ExtraInfo question (handle_extra_info).
func (x *exchange) extraInfo(payload []byte) ([]byte, error) {
	q, err := DecodeExtraInfoQuestion(payload)
	if err != nil {
		return nil, err
	}
	x.res.ExtraInfo++
	x.g.stats.extraInfo.Add(1)
	var res []byte
	switch q.Type {
	case ei.InfoVar:
		if v, ok := x.lookupVar(q.VarName); ok {
			res = []byte(v)
		}
	case ei.InfoReqBody:
		if len(x.body) > 0 {
			res = x.body
		}
	case ei.InfoRespBody:
		if x.upResp != nil {
			x.respBodyReads++
			res = []byte{}
			if x.respBodyReads == 1 {
				res = append(res, x.upResp.Body...)
			}
		}
	default:
		return nil, fmt.Errorf("unsupported info type: %d", q.Type)
	}
	b := getBuilder()
	out := append([]byte(nil), encodeExtraInfoAnswer(b, res)...)
	putBuilder(b)
	return out, nil
}

// lookupVar resolves ctx.var[name]: Request.Vars first, then a few variables
// computed from the request: remote_addr, binary_remote_addr,
// request_method, uri, request_uri, args, query_string, is_args, host,
// upstream_host, route_id, scheme, server_protocol, http_<name> and
// arg_<name> (both reflecting rewrites so far).
func (x *exchange) lookupVar(name string) (string, bool) {
	if v, ok := x.req.Vars[name]; ok {
		return v, true
	}
	switch name {
	case "remote_addr":
		return net.IP(x.srcIP).String(), true
	case "binary_remote_addr":
		return string(x.srcIP), true
	case "request_method":
		return x.method, true
	case "uri":
		if x.req.Path == "" {
			return "/", true
		}
		return x.req.Path, true
	case "request_uri":
		p := x.req.Path
		if p == "" {
			p = "/"
		}
		if len(x.req.Args) > 0 {
			p += "?" + x.req.Args.Encode()
		}
		return p, true
	case "args", "query_string":
		if len(x.args) == 0 {
			return "", false
		}
		return x.args.Encode(), true
	case "is_args":
		if len(x.args) == 0 {
			return "", true
		}
		return "?", true
	case "host":
		h := x.headers.Get("Host")
		if hh, _, err := net.SplitHostPort(h); err == nil {
			h = hh
		}
		if h == "" {
			h = "localhost"
		}
		return strings.ToLower(h), true
	case "upstream_host":
		return x.host, x.host != ""
	case "route_id":
		return x.route.ID, true
	case "scheme":
		return "http", true
	case "server_protocol":
		return "HTTP/1.1", true
	}
	if h, ok := strings.CutPrefix(name, "http_"); ok {
		vs := x.headers.Values(strings.ReplaceAll(h, "_", "-"))
		if len(vs) == 0 {
			return "", false
		}
		return strings.Join(vs, ", "), true
	}
	if a, ok := strings.CutPrefix(name, "arg_"); ok {
		vs, found := x.args[a]
		if !found || len(vs) == 0 {
			return "", false
		}
		return vs[0], true
	}
	return "", false
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
