package ratelimit

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The multiplexed connection (redis.multiplex, standalone and sentinel
// mode): every
// decision of the runner goes over one TCP connection with as many
// requests in flight as there are callers. One writer goroutine takes
// whatever is queued, encodes it and writes it in one write; one reader
// goroutine per connection reads the replies in order and hands each
// caller its answer. Nothing waits for a round trip before sending the
// next one, so batches form by themselves from what arrives while the
// previous write is under way, and Redis reads and answers many commands
// per wake-up.
//
// Why our own and not go-redis: go-redis holds a connection for the whole
// round trip of a pipeline, so decisions in flight need as many
// connections, each with its own write, read and wake-up per round trip.
// Measured here with 64 concurrent fixed_window decisions against one
// redis-server: through the worker batcher over go-redis 17.6 µs of the
// runner's CPU and 4.6 µs of Redis' per decision (72k/s); bare go-redis
// pipelines on 64 connections 16.0 and 9.5 µs (66k/s); one multiplexed
// connection 5.6 and 3.3 µs (177k/s). go-redis still serves everything
// else (start-up checks, overrides, the clock, delayed sync, Cluster),
// and names the master in sentinel mode.
//
// Failure handling keeps the plugin's rules: each caller waits on its own
// timer (redis.timeout); a reply that comes after it is read and dropped.
// A connection whose oldest request has had no reply for muxStall is
// closed and its requests fail; so does one that errs. While there is no
// connection, decisions fail at once (never waiting on a dead Redis) and
// one goroutine redials in the background, backing off from
// muxMinBackoff to muxMaxBackoff; the breaker sees the failures as usual.

const (
	muxMinBackoff = 20 * time.Millisecond
	muxMaxBackoff = time.Second
	// muxReadSize is the reader's first buffer; it grows for a longer
	// reply and shrinks back after it.
	muxReadSize = 32 << 10
	// muxMaxArray and muxMaxBulk bound what one reply may make the reader
	// allocate, whatever the bytes on the wire say.
	muxMaxArray = 1 << 20
	muxMaxBulk  = 64 << 20
)

// errNoConn fails a decision while the connection is down.
var errNoConn = errors.New("redis mux: not connected")

// errProtocol is a reply the reader cannot parse: the connection is closed.
var errProtocol = errors.New("redis mux: protocol error")

// respError is an error reply of Redis. Like go-redis's own, it satisfies
// redis.Error, so answered and redis.HasErrorPrefix treat both alike.
type respError string

func (e respError) Error() string { return string(e) }
func (respError) RedisError()     {}

// reply is one reply read from the connection, with the accessors of
// go-redis's *redis.Cmd that the result functions use (cmdReply). An
// integer is kept unboxed (n) until Result asks for it as a value.
type reply struct {
	v     any // a string or []any
	n     int64
	isInt bool
	err   error
}

func (r *reply) Result() (any, error) { return r.value(), r.err }
func (r *reply) Err() error           { return r.err }

func (r *reply) value() any {
	if r.isInt {
		return r.n
	}
	return r.v
}

// Int64 is the integer reply, or a bulk string holding one (GET).
func (r *reply) Int64() (int64, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.isInt {
		return r.n, nil
	}
	if v, ok := r.v.(string); ok {
		return strconv.ParseInt(v, 10, 64)
	}
	return 0, fmt.Errorf("redis: unexpected reply %T for an integer", r.v)
}

// muxDialer opens and prepares one connection: to addr (standalone), or
// to the master the sentinels name at each dial (sentinel).
type muxDialer struct {
	network   string // of addr: "tcp" or "unix"
	addr      string
	sentinels []*redis.SentinelClient
	master    string
	username  string
	password  string
	db        int
	tls       *tls.Config
	timeout   time.Duration
}

// target is the address to dial: addr, or the master that the first
// sentinel to answer names.
func (d *muxDialer) target(ctx context.Context) (string, error) {
	if d.sentinels == nil {
		return d.addr, nil
	}
	var errs []error
	for _, sc := range d.sentinels {
		a, err := sc.GetMasterAddrByName(ctx, d.master).Result()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		if err == nil {
			err = fmt.Errorf("got %q", a)
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("redis mux: no sentinel names master %q: %w", d.master, errors.Join(errs...))
}

func (d *muxDialer) close() {
	for _, sc := range d.sentinels {
		_ = sc.Close()
	}
}

// dial connects, then sends AUTH (if a password is set), SELECT (if db is
// not 0) and CLIENT SETNAME in one write and reads their replies, all
// within the dial timeout: a Redis that accepts the TCP connection but
// does not answer (frozen) fails here, not on the first decision.
func (d *muxDialer) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addr, err := d.target(ctx)
	if err != nil {
		return nil, err
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, d.network, addr)
	if err != nil {
		return nil, fmt.Errorf("redis mux dial: %w", err)
	}
	if d.tls != nil {
		conf := d.tls
		if conf.ServerName == "" && !conf.InsecureSkipVerify {
			host, _, _ := net.SplitHostPort(addr)
			conf = conf.Clone()
			conf.ServerName = host
		}
		tc := tls.Client(c, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("redis mux dial: tls: %w", err)
		}
		c = tc
	}
	var b []byte
	n := 0
	if d.password != "" {
		if d.username != "" {
			b = appendCommand(b, "auth", d.username, d.password)
		} else {
			b = appendCommand(b, "auth", d.password)
		}
		n++
	}
	if d.db != 0 {
		b = appendCommand(b, "select", int64(d.db))
		n++
	}
	b = appendCommand(b, "client", "setname", "apisix-edge-ratelimit")
	n++
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	err = func() error {
		if _, err := c.Write(b); err != nil {
			return err
		}
		buf := make([]byte, 0, 512)
		for n > 0 {
			rep, used, err := parseReply(buf, 0)
			if err != nil {
				return err
			}
			if used == 0 {
				if len(buf) == cap(buf) {
					return fmt.Errorf("%w: handshake reply too long", errProtocol)
				}
				k, err := c.Read(buf[len(buf):cap(buf)])
				if err != nil {
					return err
				}
				buf = buf[:len(buf)+k]
				continue
			}
			if rep.err != nil {
				return rep.err
			}
			buf = buf[used:]
			n--
		}
		return nil
	}()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("redis mux handshake: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// muxConn is one open connection and the requests written on it whose
// replies have not all been read, oldest first.
type muxConn struct {
	c        net.Conn
	mu       sync.Mutex
	inflight []*evalReq
	head     int // inflight[head:] are waiting
	closed   bool
	closeErr error
}

// mux is the batcher's transport when redis.multiplex is on.
type mux struct {
	b      *batcher
	dialer *muxDialer
	stall  time.Duration

	conn    atomic.Pointer[muxConn] // nil while down
	dialing atomic.Bool
	// inDial is closed when the dial under way ends; nil between dials
	// (while backing off).
	inDial  atomic.Pointer[chan struct{}]
	lastErr atomic.Pointer[error] // why the connection is down
	wbuf    []byte                // the writer's

	life    sync.Mutex // guards closing and the Adds to wg and rwg
	closing bool
	wg      sync.WaitGroup // the writer and the dialer
	rwg     sync.WaitGroup // the readers
}

func newMux(b *batcher, d *muxDialer) *mux {
	m := &mux{b: b, dialer: d, stall: max(4*b.timeout, 100*time.Millisecond)}
	err := errors.New("no dial has ended yet") // read by down, as "not connected: ..."
	m.lastErr.Store(&err)
	return m
}

// start dials in the background and starts the writer.
func (m *mux) start() {
	m.wg.Add(1)
	go m.writer()
	m.redial()
}

// close waits for the writer and the dialer to stop (the batcher's stop
// is closed), then closes the connection and waits for its reader.
func (m *mux) close() {
	m.life.Lock()
	m.closing = true
	m.life.Unlock()
	m.wg.Wait()
	if mc := m.conn.Load(); mc != nil {
		m.fail(mc, errors.New("redis mux: closed"))
	}
	m.rwg.Wait()
	m.dialer.close()
}

// redial starts the dialing goroutine unless one runs already or the
// batcher is closing.
func (m *mux) redial() {
	m.life.Lock()
	defer m.life.Unlock()
	if m.closing || !m.dialing.CompareAndSwap(false, true) {
		return
	}
	m.wg.Add(1)
	// The first attempt is visible before this returns: a decision queued
	// right after (the first ones after start) waits for it.
	ch := m.attempt()
	go func() {
		defer m.wg.Done()
		defer m.dialing.Store(false)
		backoff := muxMinBackoff
		for {
			c, err := m.dialer.dial(context.Background())
			if err == nil {
				select {
				case <-m.b.stop: // closed while dialing
					c.Close()
					return
				default:
				}
				mc := &muxConn{c: c}
				m.conn.Store(mc)
				m.rwg.Add(1) // before close's rwg.Wait: close waits for this goroutine first
				go m.reader(mc)
				m.inDial.Store(nil)
				close(ch)
				return
			}
			m.lastErr.Store(&err)
			m.inDial.Store(nil)
			close(ch)
			t := time.NewTimer(backoff)
			select {
			case <-m.b.stop:
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, muxMaxBackoff)
			ch = m.attempt()
		}
	}()
}

// attempt publishes a new dial attempt: its channel is closed when it ends.
func (m *mux) attempt() chan struct{} {
	ch := make(chan struct{})
	m.inDial.Store(&ch) // a fresh variable each time: waiters read it
	return ch
}

// down is the error of a decision that finds no connection.
func (m *mux) down() error {
	return fmt.Errorf("%w: %w", errNoConn, *m.lastErr.Load())
}

// writer takes the queued requests, as many as are there (up to
// maxBatch), and writes them in one write.
func (m *mux) writer() {
	defer m.wg.Done()
	batch := make([]*evalReq, 0, m.b.maxBatch)
	for {
		var first *evalReq
		select {
		case first = <-m.b.queue:
		case <-m.b.stop:
			return
		}
		if first.state.CompareAndSwap(reqQueued, reqTaken) {
			batch = append(batch, first)
		}
		batch = m.b.drain(batch)
		// Let the goroutines that are ready to run (requests being
		// decoded) queue their decisions before this write rather than
		// after it: one yield, then take what came. Alone (c=1) it costs
		// a few hundred ns; under load it makes batches (e2e at c=64,
		// fixed_window: 3.5-3.8 decisions a write against 1.1-1.2
		// without it, 0.50-0.56x of the no-op chain against 0.45).
		// Callers never write themselves (unlike the workers' "caller
		// runs"): measured, that brought the batches back to 1.2 at c=64
		// and no gain at c=1.
		if n := len(batch); n > 0 && n < m.b.maxBatch {
			runtime.Gosched()
			batch = m.b.drain(batch)
		}
		if len(batch) > 0 {
			m.write(batch)
		}
		clear(batch)
		batch = batch[:0]
	}
}

// write sends batch on the connection, or fails it at once when there is
// none. A dial under way (the first one, or a redial after a lost
// connection) is waited for until the batch's last deadline: a Redis that
// refuses connections fails it at once, a silent one within dial_timeout.
func (m *mux) write(batch []*evalReq) {
	mc := m.conn.Load()
	if mc == nil {
		mc = m.awaitDial(batch)
	}
	if mc == nil {
		failAll(batch, m.down())
		m.redial()
		return
	}
	b := m.wbuf[:0]
	now := m.b.mono()
	for _, r := range batch {
		b = r.appendTo(b, m.b.sha)
		r.sentAt = now
	}
	m.wbuf = b
	if !mc.push(batch, m.stall) {
		// closed under us: its reader failed the others; these never left
		failAll(batch, m.down())
		return
	}
	m.b.stats.roundTrips.Add(1)
	m.b.stats.sent.Add(int64(len(batch)))
	m.b.size.Observe(float64(len(batch)))
	_ = mc.c.SetWriteDeadline(time.Now().Add(m.stall))
	m.b.busy.Add(1) // a write blocked on a Redis that reads nothing is a stall (notSent)
	_, err := mc.c.Write(b)
	m.b.busy.Add(-1)
	if err != nil {
		m.fail(mc, fmt.Errorf("redis mux write: %w", err))
	}
	if cap(m.wbuf) > 1<<20 {
		m.wbuf = nil
	}
}

// awaitDial waits for the dial under way, if any, until the latest
// deadline in batch, and returns the connection it made.
func (m *mux) awaitDial(batch []*evalReq) *muxConn {
	ch := m.inDial.Load()
	if ch == nil {
		return nil
	}
	t := time.NewTimer(time.Until(latestDeadline(batch)))
	defer t.Stop()
	select {
	case <-*ch:
	case <-t.C:
	case <-m.b.stop:
	}
	return m.conn.Load()
}

// push appends batch to the requests waiting for replies; with none
// waiting before, it arms the reader's deadline. False if mc is closed.
func (mc *muxConn) push(batch []*evalReq, stall time.Duration) bool {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.closed {
		return false
	}
	if mc.head == len(mc.inflight) {
		mc.inflight = mc.inflight[:0]
		mc.head = 0
		_ = mc.c.SetReadDeadline(time.Now().Add(stall))
	}
	mc.inflight = append(mc.inflight, batch...)
	return true
}

// fail closes mc once and fails every request still waiting on it.
func (m *mux) fail(mc *muxConn, err error) {
	mc.mu.Lock()
	if mc.closed {
		mc.mu.Unlock()
		return
	}
	mc.closed = true
	mc.closeErr = err
	waiting := mc.inflight[mc.head:]
	mc.inflight, mc.head = nil, 0
	mc.mu.Unlock()
	m.conn.CompareAndSwap(mc, nil)
	m.lastErr.Store(&err)
	_ = mc.c.Close()
	failAll(waiting, err)
	m.redial()
}

// reader reads the replies of mc in order and completes their requests.
func (m *mux) reader(mc *muxConn) {
	defer m.rwg.Done()
	buf := make([]byte, 0, muxReadSize)
	var done []*evalReq
	for {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), 2*cap(buf))
			copy(nb, buf)
			buf = nb
		}
		n, err := mc.c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		used, perr := m.consume(mc, buf, &done)
		if perr != nil {
			m.fail(mc, perr)
			return
		}
		if used > 0 {
			k := copy(buf, buf[used:])
			buf = buf[:k]
			if k == 0 && cap(buf) > muxReadSize {
				buf = make([]byte, 0, muxReadSize)
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !m.overdue(mc) {
				continue
			}
			if errors.As(err, &ne) && ne.Timeout() {
				err = fmt.Errorf("redis mux: no reply for %s", m.stall)
			} else {
				err = fmt.Errorf("redis mux read: %w", err)
			}
			m.fail(mc, err)
			return
		}
	}
}

// overdue tells, after the reader's deadline passed, whether the oldest
// request waiting has waited muxStall; if not, it arms the deadline again
// for that request (or clears it when none waits).
func (m *mux) overdue(mc *muxConn) bool {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.head == len(mc.inflight) {
		_ = mc.c.SetReadDeadline(time.Time{})
		return false
	}
	age := time.Duration(m.b.mono() - mc.inflight[mc.head].sentAt)
	if age >= m.stall {
		return true
	}
	_ = mc.c.SetReadDeadline(time.Now().Add(m.stall - age))
	return false
}

// consume parses the complete replies at the start of buf, hands them to
// the requests waiting on mc, and returns the bytes used. done is the
// reader's own slice for the requests completed, reused from read to
// read.
func (m *mux) consume(mc *muxConn, buf []byte, done *[]*evalReq) (int, error) {
	used, demoted, err := mc.take(buf, done)
	if used > 0 {
		m.b.lastReply.Store(m.b.mono())
	}
	for _, r := range *done {
		m.complete(r)
	}
	clear(*done)
	*done = (*done)[:0]
	if err != nil {
		return used, err
	}
	if demoted {
		// The server is a replica now (a Sentinel failover): redial, which
		// asks the sentinels for the new master.
		return used, errors.New("redis mux: the server answered READONLY (a replica now)")
	}
	return used, nil
}

// take parses the complete replies at the start of buf, with mc's lock
// held once for them all, and records each on the oldest request waiting;
// the requests whose last reply it was are appended to done. demoted: one
// of the replies was READONLY.
func (mc *muxConn) take(buf []byte, done *[]*evalReq) (used int, demoted bool, err error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	for used < len(buf) {
		rep, n, err := parseReply(buf[used:], 0)
		if err != nil {
			return used, demoted, err
		}
		if n == 0 {
			break
		}
		used += n
		if rep.err != nil && redis.HasErrorPrefix(rep.err, "READONLY") {
			demoted = true
		}
		if mc.head == len(mc.inflight) {
			return used, demoted, fmt.Errorf("%w: a reply nobody asked for", errProtocol)
		}
		r := mc.inflight[mc.head]
		if r.take(rep) {
			mc.inflight[mc.head] = nil
			mc.head++
			*done = append(*done, r)
		}
	}
	return used, demoted, nil
}

// complete delivers r's result, or sends a script Redis did not know again
// as EVAL (which loads it).
func (m *mux) complete(r *evalReq) {
	if r.kind == kindScript && !r.eval && redis.HasErrorPrefix(r.replies[0].err, "NOSCRIPT") {
		m.b.stats.noscript.Add(1)
		r.eval, r.got = true, 0
		r.state.Store(reqQueued)
		select {
		case m.b.queue <- r:
			return
		default:
		}
	}
	r.done <- r.result()
}

// need is the number of replies r's commands get.
func (r *evalReq) need() uint8 {
	switch r.kind {
	case kindCounter:
		if len(r.keys) > 1 {
			return 3
		}
		return 2
	case kindLog:
		return 7 // MULTI, five QUEUED, EXEC
	}
	return 1
}

// take records one reply of r and tells whether it was the last.
func (r *evalReq) take(rep reply) bool {
	if r.kind == kindCounter {
		r.replies[r.got] = rep
	} else {
		// One reply, or for a log decision the last one kept: only EXEC's
		// matters (an error queuing a command makes EXEC fail, EXECABORT).
		r.replies[0] = rep
	}
	r.got++
	return r.got == r.need()
}

// appendTo encodes r's commands (see queueOn, their go-redis twin).
func (r *evalReq) appendTo(b []byte, sha string) []byte {
	switch r.kind {
	case kindScript:
		b = appendArrayLen(b, 3+len(r.keys)+len(r.args))
		if r.eval {
			b = appendArg(b, "eval")
			b = appendArg(b, decideSrc)
		} else {
			b = appendArg(b, "evalsha")
			b = appendArg(b, sha)
		}
		b = appendArg(b, int64(len(r.keys)))
		for _, k := range r.keys {
			b = appendArg(b, k)
		}
		for _, a := range r.args {
			b = appendArg(b, a)
		}
	case kindCounter:
		// Typed appends: no boxing of the arguments on the hot path.
		b = appendArrayLen(b, 3)
		b = appendBulk(b, "incrby")
		b = appendBulk(b, r.keys[0])
		b = appendBulkInt(b, r.cost)
		b = appendArrayLen(b, 4)
		b = appendBulk(b, "pexpire")
		b = appendBulk(b, r.keys[0])
		b = appendBulkInt(b, r.ttl)
		b = appendBulk(b, "nx")
		if len(r.keys) > 1 {
			b = appendArrayLen(b, 2)
			b = appendBulk(b, "get")
			b = appendBulk(b, r.keys[1])
		}
	case kindLog:
		k := r.keys[0]
		at := -(r.limit + 1)
		b = appendCommand(b, "multi")
		b = appendCommand(b, "zremrangebyscore", k, "-inf", r.now-r.ttl)
		b = appendArrayLen(b, 2+len(r.members))
		b = appendArg(b, "zadd")
		b = appendArg(b, k)
		for _, a := range r.members {
			b = appendArg(b, a)
		}
		b = appendCommand(b, "zcard", k)
		b = appendCommand(b, "pexpire", k, r.ttl)
		b = appendCommand(b, "zrange", k, at, at, "withscores")
		b = appendCommand(b, "exec")
	case kindRefund:
		if r.members != nil {
			b = appendArrayLen(b, 2+len(r.members))
			b = appendArg(b, "zrem")
			b = appendArg(b, r.keys[0])
			for _, a := range r.members {
				b = appendArg(b, a)
			}
		} else {
			b = appendCommand(b, "decrby", r.keys[0], r.cost)
		}
	}
	return b
}

func appendCommand(b []byte, args ...any) []byte {
	b = appendArrayLen(b, len(args))
	for _, a := range args {
		b = appendArg(b, a)
	}
	return b
}

func appendArrayLen(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

func appendBulk[T string | []byte](b []byte, s T) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

func appendBulkInt(b []byte, n int64) []byte {
	var tmp [20]byte
	return appendBulk(b, strconv.AppendInt(tmp[:0], n, 10))
}

// appendArg encodes one argument as a bulk string, as go-redis would
// write it.
func appendArg(b []byte, a any) []byte {
	var tmp [32]byte
	var s []byte
	switch v := a.(type) {
	case string:
		return appendBulk(b, v)
	case int64:
		return appendBulkInt(b, v)
	case []byte:
		s = v
	case int:
		s = strconv.AppendInt(tmp[:0], int64(v), 10)
	case uint64:
		s = strconv.AppendUint(tmp[:0], v, 10)
	case float64:
		switch {
		case math.IsInf(v, 1):
			s = append(tmp[:0], "+inf"...)
		case math.IsInf(v, -1):
			s = append(tmp[:0], "-inf"...)
		default:
			s = strconv.AppendFloat(tmp[:0], v, 'f', -1, 64)
		}
	default:
		s = fmt.Append(tmp[:0], v)
	}
	return appendBulk(b, s)
}

// parseReply reads one RESP2 reply at the start of b. It returns the bytes
// it used, 0 if b does not hold the whole reply yet, or errProtocol. Error
// replies are values (reply.err), not errors of the parse; a nil bulk
// string or array at the top is redis.Nil, inside an array a nil element,
// as go-redis reports them.
func parseReply(b []byte, depth int) (reply, int, error) {
	line, n := readLine(b)
	if n == 0 {
		return reply{}, 0, nil
	}
	if len(line) == 0 {
		return reply{}, 0, fmt.Errorf("%w: empty line", errProtocol)
	}
	switch line[0] {
	case '+':
		return reply{v: string(line[1:])}, n, nil
	case '-':
		return reply{err: respError(line[1:])}, n, nil
	case ':':
		v, ok := parseInt(line[1:])
		if !ok {
			return reply{}, 0, fmt.Errorf("%w: integer %q", errProtocol, line[1:])
		}
		return reply{n: v, isInt: true}, n, nil
	case '$':
		l64, ok := parseInt(line[1:])
		l := int(l64)
		if !ok || l < -1 || l > muxMaxBulk {
			return reply{}, 0, fmt.Errorf("%w: bulk length %q", errProtocol, line[1:])
		}
		if l == -1 {
			return nilReply(depth), n, nil
		}
		if len(b) < n+l+2 {
			return reply{}, 0, nil
		}
		if b[n+l] != '\r' || b[n+l+1] != '\n' {
			return reply{}, 0, fmt.Errorf("%w: bulk string not ended by CRLF", errProtocol)
		}
		return reply{v: string(b[n : n+l])}, n + l + 2, nil
	case '*':
		l64, ok := parseInt(line[1:])
		l := int(l64)
		if !ok || l < -1 || l > muxMaxArray || depth > 8 {
			return reply{}, 0, fmt.Errorf("%w: array length %q", errProtocol, line[1:])
		}
		if l == -1 {
			return nilReply(depth), n, nil
		}
		if l > len(b)-n { // each element takes at least one byte
			return reply{}, 0, nil
		}
		a := make([]any, l)
		for i := range a {
			e, k, err := parseReply(b[n:], depth+1)
			if err != nil || k == 0 {
				return reply{}, 0, err
			}
			n += k
			if e.err != nil {
				a[i] = e.err
			} else {
				a[i] = e.value()
			}
		}
		return reply{v: a}, n, nil
	}
	return reply{}, 0, fmt.Errorf("%w: reply type %q", errProtocol, line[0])
}

// parseInt reads a RESP integer: an optional '-' and digits, within
// int64 (up to 18 digits without allocating).
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) > 18 {
		v, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil || (len(b) > 0 && (b[0] == '-' || b[0] == '+')) {
			return 0, false
		}
		if neg {
			v = -v
		}
		return v, true
	}
	if len(b) == 0 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}

func nilReply(depth int) reply {
	if depth == 0 {
		return reply{err: redis.Nil}
	}
	return reply{}
}

// readLine returns the line at the start of b without its CRLF, and the
// bytes it takes with it; 0 if b holds no whole line yet.
func readLine(b []byte) ([]byte, int) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, 0
	}
	if i == 0 || b[i-1] != '\r' {
		return b[:0], i + 1 // not CRLF: rejected by the caller as empty
	}
	return b[:i-1], i + 1
}

// newMuxDialer is the dialer of the multiplexed connection: to cfg's one
// standalone address, or to the master named by cfg's sentinels (asked
// at each dial, so a redial after a failover finds the new master), with
// the data nodes' credentials, database and TLS.
func newMuxDialer(cfg Config) (*muxDialer, error) {
	tlsConf, err := cfg.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("redis %w", err)
	}
	d := &muxDialer{
		username: cfg.Username,
		password: cfg.Password,
		db:       cfg.DB,
		tls:      tlsConf,
		timeout:  cfg.DialTimeout.D(),
	}
	if cfg.Mode != "sentinel" {
		d.network, d.addr = cfg.Dial()
		return d, nil
	}
	d.network = "tcp"
	d.master = cfg.MasterName
	for _, a := range cfg.Addrs {
		d.sentinels = append(d.sentinels, redis.NewSentinelClient(&redis.Options{
			Addr:            a,
			Username:        cfg.SentinelUsername,
			Password:        cfg.SentinelPassword,
			TLSConfig:       tlsConf,
			DialTimeout:     cfg.DialTimeout.D(),
			ReadTimeout:     cfg.DialTimeout.D(),
			WriteTimeout:    cfg.DialTimeout.D(),
			MaxRetries:      -1,
			PoolSize:        1,
			Protocol:        2,
			DisableIdentity: true,
		}))
	}
	return d, nil
}
