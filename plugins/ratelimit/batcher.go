package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// The batcher lets concurrent decisions share Redis round trips. A few
// worker goroutines each take whatever decisions are queued right now (up
// to maxBatch; never waiting for more, so a lone decision goes out at
// once) and send them as one pipeline of EVALSHA. Every caller waits for
// its own answer on its own timer, so no decision waits longer than
// redis.timeout whatever its batch does; a late answer is dropped.
//
// Why not go-redis's AutoPipeline (v9.23, experimental): measured here it
// cost latency at low concurrency (p50 269 µs against 162 µs unpipelined
// at c=1) and throughput at every level, and callers were seen waiting
// well past their deadline while Redis was frozen. rueidis would have
// meant a second Redis client for one plugin.
//
// A decision the batcher cannot send (queue full, or still queued at its
// deadline) is a local overload, not evidence about Redis: it does not
// count against the breaker, unless no round trip has come back for a
// whole timeout while one is in flight (Redis frozen or unreachable, the
// workers stuck), when it does.

const (
	reqQueued    int32 = iota // in the queue, no worker has it yet
	reqTaken                  // a worker took it: it is (being) sent
	reqAbandoned              // its caller gave up before a worker took it
)

// reqKind is what one queued request asks of Redis.
type reqKind uint8

const (
	// kindScript is a decision by the script: one EVALSHA.
	kindScript reqKind = iota
	// kindCounter is a decision of one O(1) rule by plain commands:
	// INCRBY of the window's counter, PEXPIRE NX of it, and GET of the
	// previous window's counter for sliding_window (see counterDecide).
	kindCounter
	// kindLog is a decision of one sliding_log rule by plain commands in
	// one MULTI/EXEC (see evalLog).
	kindLog
	// kindRefund gives back what a rejected counter or log decision
	// added: DECRBY, or ZREM of its entries.
	kindRefund
)

// evalReq is one request handed to the batcher.
type evalReq struct {
	kind     reqKind
	keys     []string
	args     []any
	cost     int64 // kindCounter, kindRefund of a counter
	ttl      int64 // kindCounter: the counter's expiry in ms; kindLog: the window in ms
	now      int64 // kindLog: the time in ms (Redis' clock, see redisClock)
	limit    int64 // kindLog
	members  []any // kindLog: the entries to add (score, member pairs); kindRefund of a log: the members
	deadline time.Time
	state    atomic.Int32
	done     chan evalResult // buffered: a worker never blocks on a caller
	cmds     [3]*redis.Cmd   // the commands queued for it in its round trip (go-redis)

	// Through the multiplexed connection (mux.go):
	replies [3]reply // the replies read for it (kindLog: EXEC's only)
	got     uint8    // how many of its replies were read
	eval    bool     // a script to send as EVAL (Redis answered NOSCRIPT)
	sentAt  int64    // when it was written, ns since the batcher's base
}

// evalResult is Redis' answer to one request: the script's reply, or the
// counter's new value and the previous window's counter, or the log's
// entries with this request's and the score of the one at -(limit+1).
type evalResult struct {
	reply       any
	count, prev int64
	score       int64 // kindLog: -1 if there is no such entry
	err         error
}

// Errors of decisions the batcher could not send. errOverloaded marks the
// ones the breaker ignores (see isAvailabilityError).
var (
	errOverloaded = errors.New("local overload")
	errQueueFull  = fmt.Errorf("redis batcher: queue full: %w", errOverloaded)
	errQueueWait  = fmt.Errorf("redis batcher: not sent before the deadline, workers busy: %w", errOverloaded)
	errStalled    = errors.New("redis batcher: not sent before the deadline, no reply from redis for a whole timeout")
)

type batcherStats struct {
	roundTrips   atomic.Int64 // pipelines (or single calls) sent
	queued       atomic.Int64 // decisions handed to the workers (not sent by their caller)
	sent         atomic.Int64 // decisions sent
	queueFull    atomic.Int64
	queueTimeout atomic.Int64
	noscript     atomic.Int64 // round trips that had to retry with EVAL
	refundsLost  atomic.Int64 // refunds that failed: the counter stays over by their cost until its window ends
}

type batcher struct {
	client   redis.UniversalClient
	sha      string
	timeout  time.Duration
	maxBatch int
	queue    chan *evalReq
	// senders holds one token per round trip in flight (at most workers):
	// a worker, or a caller that found the queue empty and a token free
	// and sends itself (see do).
	senders  chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	errLate  error // sent, no answer within timeout (counts against Redis)

	base      time.Time
	lastReply atomic.Int64 // ns since base of the last round trip Redis answered
	busy      atomic.Int32 // workers with a round trip in flight
	stats     batcherStats
	size      prometheus.Observer
	drops     map[string]prometheus.Counter
	mux       *mux // the multiplexed connection, or nil: the workers and go-redis
}

// newBatcher starts the batcher's goroutines: with dialer, the writer of
// one multiplexed connection (mux.go), dialed in the background;
// otherwise workers sending pipelines through client.
func newBatcher(client redis.UniversalClient, dialer *muxDialer, timeout time.Duration, workers, maxBatch, queue int, met *metrics) *batcher {
	b := &batcher{
		client:   client,
		sha:      decideScript.Hash(),
		timeout:  timeout,
		maxBatch: maxBatch,
		queue:    make(chan *evalReq, queue),
		senders:  make(chan struct{}, max(workers, 1)),
		stop:     make(chan struct{}),
		errLate:  fmt.Errorf("redis eval: no reply within %s: %w", timeout, context.DeadlineExceeded),
		base:     time.Now(),
		size:     met.batchSize,
		drops:    met.batcherDrops,
	}
	if dialer != nil {
		b.mux = newMux(b, dialer)
		b.mux.start()
		return b
	}
	for range workers {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

// close stops the workers once their round trips are over (each bounded
// by the timeout). Decisions queued after it fail at their deadline.
func (b *batcher) close() {
	b.stopOnce.Do(func() { close(b.stop) })
	b.wg.Wait()
	if b.mux != nil {
		b.mux.close()
	}
}

func (b *batcher) mono() int64 { return int64(time.Since(b.base)) }

// callerRuns lets a caller send its own decision when it can (see do);
// the benchmarks turn it off to measure the hand-off it saves.
var callerRuns = true

// do queues one decision and waits for its reply until the timeout.
//
// Caller runs: when nothing is queued and a sender token is free (fewer
// round trips in flight than workers), the caller makes the round trip
// itself, taking along whatever was queued meanwhile, instead of handing
// its decision to a worker and waiting to be woken: at low concurrency
// that saves two goroutine hand-offs per decision (measured at c=1: p50
// 257-284 µs through a worker, 219-228 µs sent by the caller). Under load
// the tokens are taken and decisions queue for the workers as before. The
// caller's round trip is bounded by its own deadline (the latest of its
// batch: the others queued before it).
func (b *batcher) do(keys []string, args []any) (any, error) {
	res := b.wait(&evalReq{kind: kindScript, keys: keys, args: args})
	return res.reply, res.err
}

// wait sends req (see do) and waits for its answer. The decisions by
// plain commands and their refunds come here directly (RateLimit.sendPlain).
func (b *batcher) wait(req *evalReq) evalResult {
	req.deadline = time.Now().Add(b.timeout)
	req.done = make(chan evalResult, 1)
	if callerRuns && b.mux == nil && len(b.queue) == 0 {
		select {
		case b.senders <- struct{}{}:
			req.state.Store(reqTaken)
			batch := b.drain(append(make([]*evalReq, 0, 4), req))
			b.send(batch)
			<-b.senders
			return <-req.done
		default:
		}
	}
	select {
	case b.queue <- req:
		b.stats.queued.Add(1)
	default:
		b.stats.queueFull.Add(1)
		b.drops[dropQueueFull].Inc()
		return evalResult{err: b.notSent(errQueueFull)}
	}
	t := getTimer(b.timeout)
	defer putTimer(t)
	select {
	case res := <-req.done:
		return res
	case <-t.C:
	}
	if req.state.CompareAndSwap(reqQueued, reqAbandoned) {
		// No worker took it: it will never be sent.
		b.stats.queueTimeout.Add(1)
		b.drops[dropQueueTimeout].Inc()
		return evalResult{err: b.notSent(errQueueWait)}
	}
	select { // an answer that arrived with the timer
	case res := <-req.done:
		return res
	default:
		return evalResult{err: b.errLate}
	}
}

// timers are the callers' deadline timers, reused: since Go 1.23 a
// stopped timer that is Reset delivers no stale tick.
var timers sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// notSent tells a local overload (the breaker ignores it) from workers
// stuck on a Redis that does not answer (it counts).
func (b *batcher) notSent(err error) error {
	if b.busy.Load() > 0 && time.Duration(b.mono()-b.lastReply.Load()) > b.timeout {
		return errStalled
	}
	return err
}

func (b *batcher) run() {
	defer b.wg.Done()
	batch := make([]*evalReq, 0, b.maxBatch)
	for {
		var first *evalReq
		select {
		case first = <-b.queue:
		case <-b.stop:
			return
		}
		select { // a round trip of its own may start now
		case b.senders <- struct{}{}:
		case <-b.stop:
			return
		}
		if first.state.CompareAndSwap(reqQueued, reqTaken) {
			batch = append(batch, first)
		}
		batch = b.drain(batch)
		if len(batch) > 0 {
			b.send(batch)
		}
		<-b.senders
		clear(batch)
		batch = batch[:0]
	}
}

// drain adds whatever else is queued right now to batch, up to maxBatch;
// it never waits for more.
func (b *batcher) drain(batch []*evalReq) []*evalReq {
	for len(batch) < b.maxBatch {
		select {
		case req := <-b.queue:
			if req.state.CompareAndSwap(reqQueued, reqTaken) {
				batch = append(batch, req)
			}
		default:
			return batch
		}
	}
	return batch
}

// send makes one round trip for batch (a plain EVALSHA for a lone script
// decision, a pipeline otherwise; go-redis splits a Cluster pipeline by
// node), retries the NOSCRIPT ones with EVAL, which also loads the script,
// and hands each caller its answer.
func (b *batcher) send(batch []*evalReq) {
	ctx, cancel := context.WithDeadline(context.Background(), latestDeadline(batch))
	defer cancel()
	b.busy.Add(1)
	defer b.busy.Add(-1)
	b.stats.roundTrips.Add(1)
	b.stats.sent.Add(int64(len(batch)))
	b.size.Observe(float64(len(batch)))
	b.exec(ctx, batch, false)
	var retry []*evalReq
	for _, r := range batch {
		if r.kind == kindScript && redis.HasErrorPrefix(r.cmds[0].Err(), "NOSCRIPT") {
			retry = append(retry, r)
		}
	}
	if len(retry) > 0 {
		b.stats.noscript.Add(1)
		b.exec(ctx, retry, true)
	}
	for _, r := range batch {
		if r.done != nil {
			r.done <- r.result()
		}
	}
}

// latestDeadline is the latest of the deadlines of batch (not empty): the
// bound of a round trip made for all of them.
func latestDeadline(batch []*evalReq) time.Time {
	deadline := batch[0].deadline
	for _, r := range batch[1:] {
		if r.deadline.After(deadline) {
			deadline = r.deadline
		}
	}
	return deadline
}

// failAll answers every request of batch with err.
func failAll(batch []*evalReq, err error) {
	for _, r := range batch {
		r.done <- evalResult{err: err}
	}
}

// exec sends batch in one round trip and notes whether Redis answered.
// With eval, scripts go as EVAL (batch then holds scripts only).
func (b *batcher) exec(ctx context.Context, batch []*evalReq, eval bool) {
	if len(batch) == 1 && batch[0].kind == kindScript {
		r := batch[0]
		if eval {
			r.cmds[0] = b.client.Eval(ctx, decideSrc, r.keys, r.args...)
		} else {
			r.cmds[0] = b.client.EvalSha(ctx, b.sha, r.keys, r.args...)
		}
	} else {
		pipe := b.client.Pipeline()
		for _, r := range batch {
			r.queueOn(ctx, pipe, b.sha, eval)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
	}
	for _, r := range batch {
		if answered(r.cmds[0].Err()) {
			b.lastReply.Store(b.mono())
			break
		}
	}
}

// queueOn adds the commands of r to pipe.
func (r *evalReq) queueOn(ctx context.Context, pipe redis.Pipeliner, sha string, eval bool) {
	switch r.kind {
	case kindScript:
		if eval {
			r.cmds[0] = pipe.Eval(ctx, decideSrc, r.keys, r.args...)
		} else {
			r.cmds[0] = pipe.EvalSha(ctx, sha, r.keys, r.args...)
		}
	case kindCounter:
		// The arguments of all commands share one array.
		a := make([]any, 0, 12)
		a = append(a, "incrby", r.keys[0], r.cost, "pexpire", r.keys[0], r.ttl, "nx")
		r.cmds[0] = pipe.Do(ctx, a[0:3:3]...)
		r.cmds[1] = pipe.Do(ctx, a[3:7:7]...)
		if len(r.keys) > 1 {
			a = append(a, "get", r.keys[1])
			r.cmds[2] = pipe.Do(ctx, a[7:9:9]...)
		}
	case kindLog:
		// The commands of one decision run together: no other client's
		// entries come between its ZADD and its ZCARD. ZRANGE at
		// -(limit+1), counted from the newest with this request's entries
		// in, is the entry whose expiry makes room for the request (the
		// script's ZRANGE at c+cost-limit-1 from the oldest). The
		// arguments of all commands share one array.
		k := r.keys[0]
		at := -(r.limit + 1)
		a := make([]any, 0, 20+len(r.members))
		a = append(a, "multi", "zremrangebyscore", k, "-inf", r.now-r.ttl, "zcard", k, "pexpire", k, r.ttl,
			"zrange", k, at, at, "withscores", "exec", "zadd", k)
		a = append(a, r.members...)
		pipe.Do(ctx, a[0:1:1]...)
		pipe.Do(ctx, a[1:5:5]...)
		pipe.Do(ctx, a[16:]...)
		pipe.Do(ctx, a[5:7:7]...)
		pipe.Do(ctx, a[7:10:10]...)
		pipe.Do(ctx, a[10:15:15]...)
		r.cmds[0] = pipe.Do(ctx, a[15:16:16]...)
	case kindRefund:
		if r.members != nil {
			r.cmds[0] = pipe.Do(ctx, append([]any{"zrem", r.keys[0]}, r.members...)...)
		} else {
			r.cmds[0] = pipe.Do(ctx, "decrby", r.keys[0], r.cost)
		}
	}
}

// cmdReply is one command's reply: a go-redis *redis.Cmd, or a reply read
// from the multiplexed connection.
type cmdReply interface {
	Result() (any, error)
	Int64() (int64, error)
	Err() error
}

// result reads r's answer from its commands' replies.
func (r *evalReq) result() evalResult {
	var c [3]cmdReply
	if r.cmds[0] != nil {
		for i, x := range r.cmds {
			if x != nil {
				c[i] = x
			}
		}
	} else {
		for i := range r.replies {
			c[i] = &r.replies[i] // a pointer: no copy boxed per reply
		}
	}
	switch r.kind {
	case kindCounter:
		return counterResult(c[0], c[1], c[2], len(r.keys) > 1)
	case kindLog:
		return logResult(c[0])
	}
	reply, err := c[0].Result()
	return evalResult{reply: reply, err: err}
}

// logResult reads the EXEC reply of a log decision: ZREMRANGEBYSCORE,
// ZADD, ZCARD, PEXPIRE and ZRANGE ... WITHSCORES, in order.
func logResult(exec cmdReply) evalResult {
	v, err := exec.Result()
	if err != nil {
		return evalResult{err: fmt.Errorf("redis exec: %w", err)}
	}
	a, ok := v.([]any)
	if !ok || len(a) != 5 {
		return evalResult{err: fmt.Errorf("redis exec: want 5 replies, got %T %.100v", v, v)}
	}
	for _, x := range a {
		if e, isErr := x.(error); isErr {
			return evalResult{err: fmt.Errorf("redis exec: %w", e)}
		}
	}
	n, ok := a[2].(int64)
	if !ok {
		return evalResult{err: fmt.Errorf("redis exec: zcard reply %T", a[2])}
	}
	res := evalResult{count: n, score: -1}
	if z, ok := a[4].([]any); ok && len(z) == 2 {
		if s, ok := z[1].(string); ok {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return evalResult{err: fmt.Errorf("redis exec: zrange score %q: %w", s, err)}
			}
			res.score = int64(f)
		}
	}
	return res
}

// errPExpireNX marks a counter decision whose PEXPIRE NX Redis refused
// (a Redis older than 7.0): see RateLimit.evalCounter.
var errPExpireNX = errors.New("redis pexpire nx")

// counterResult reads the replies of a counter decision: INCRBY's value,
// PEXPIRE's (an error reply there, e.g. a Redis older than 7.0 that has no
// NX, fails the decision), and, with prev, the previous counter (nil: 0).
func counterResult(incr, exp, get cmdReply, prev bool) evalResult {
	n, err := incr.Int64()
	if err != nil {
		return evalResult{err: fmt.Errorf("redis incrby: %w", err)}
	}
	if err := exp.Err(); err != nil {
		var re redis.Error
		if errors.As(err, &re) { // Redis answered: it refuses the command
			return evalResult{err: fmt.Errorf("%w: %w", errPExpireNX, err)}
		}
		return evalResult{err: fmt.Errorf("redis pexpire nx: %w", err)}
	}
	res := evalResult{count: n}
	if prev {
		p, err := get.Int64()
		switch {
		case err == redis.Nil:
		case err != nil:
			return evalResult{err: fmt.Errorf("redis get previous window: %w", err)}
		default:
			res.prev = p
		}
	}
	return res
}

// answered tells whether err (of one command) came back from Redis: a
// reply, or an error reply such as NOSCRIPT or OOM.
func answered(err error) bool {
	var re redis.Error
	return err == nil || err == redis.Nil || errors.As(err, &re)
}
