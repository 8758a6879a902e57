package ratelimit

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// waitFor polls cond until it holds; the deadline only bounds a broken
// test, it asserts no timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// freeze stops Redis with SIGSTOP and waits until the kernel reports the
// process stopped: the signal is asynchronous, and a Redis that answers
// one more command would make the tests below flaky.
func freeze(t *testing.T, rd *backing.Redis) {
	t.Helper()
	if err := rd.Freeze(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Thaw() })
	stat := "/proc/" + strconv.Itoa(rd.PID()) + "/stat"
	waitFor(t, "redis-server stopped", func() bool {
		b, err := os.ReadFile(stat)
		if err != nil {
			return false
		}
		_, rest, _ := strings.Cut(string(b), ") ") // after "pid (comm) "
		return strings.HasPrefix(rest, "T") || strings.HasPrefix(rest, "t")
	})
}

// batcherEnv is a plugin whose batcher has one worker and a long timeout:
// the tests look at the structure of round trips, not at speed.
func batcherEnv(t *testing.T, rd *backing.Redis, edit func(*Config)) *env {
	t.Helper()
	return newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.PipelineWorkers = 1
		r.Multiplex = new(bool) // the workers (see mux_test.go)
		r.Timeout = core.Duration(time.Minute)
		if edit != nil {
			edit(r)
		}
	}))
}

func (e *env) roundTrips() (trips, sent int64) {
	s := &e.rl.batch.stats
	return s.roundTrips.Load(), s.sent.Load()
}

// TestBatcherLoneDecisionGoesAlone: a decision with nothing else queued is
// sent at once as a round trip of its own: with a one-minute timeout and a
// batch size of 64 it neither waits for the batch to fill nor for a timer
// (the worker has none; it completes, decided by Redis). Sequential
// decisions therefore make one round trip each.
func TestBatcherLoneDecisionGoesAlone(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := batcherEnv(t, rd, nil)
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	for i := 1; i <= 5; i++ {
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 0 || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != strconv.Itoa(100-i) {
			t.Fatalf("decision %d: got status %d headers %v, want allowed by Redis with %d remaining", i, res.status, res.hdr, 100-i)
		}
		if trips, sent := e.roundTrips(); trips != int64(i) || sent != int64(i) {
			t.Fatalf("after %d sequential decisions: got %d round trips for %d decisions, want %d and %d", i, trips, sent, i, i)
		}
	}
}

// TestBatcherSharesRoundTrips: decisions queued while a round trip is in
// flight (here sent by its own caller, the queue being empty and the
// sender token free) leave together in the next one. Redis is frozen so
// that the first round trip stays in flight while the test queues 50
// more; after the thaw they make exactly one more round trip.
func TestBatcherSharesRoundTrips(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := batcherEnv(t, rd, nil)
	c := mustConf(t, `{"limit":1000,"window":"1m","key":"header:X-Key"}`)
	send := func(k string) result {
		r := newReq("192.0.2.1")
		r.hdr.Set("X-Key", k)
		return e.do(c, r)
	}
	send("warm") // a connection and the script cached
	freeze(t, rd)
	const n = 50
	results := make([]result, n+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); results[n] = send("first") }()
	b := e.rl.batch
	// sent == 2: the worker has taken "first" (the caller of "warm" gets its
	// answer before the worker's busy count drops, so busy alone could
	// still be warm-up's round trip, and "first" would then leave with
	// some of the 50)
	waitFor(t, "the first decision in flight", func() bool {
		return b.stats.sent.Load() == 2 && b.busy.Load() == 1 && len(b.queue) == 0
	})
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = send("k" + strconv.Itoa(i)) }()
	}
	// The worker takes one of them and waits for the caller of "first" to
	// free the one sender token (one worker): 49 stay in the queue.
	waitFor(t, "50 decisions queued", func() bool { return b.stats.queued.Load() == n && len(b.queue) == n-1 })
	if err := rd.Thaw(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, res := range results {
		if res.status != 0 || res.hdr.Get(hdrStatus) != "" {
			t.Fatalf("decision %d: got status %d headers %v, want allowed by Redis", i, res.status, res.hdr)
		}
	}
	if trips, sent := e.roundTrips(); trips != 3 || sent != n+2 {
		t.Fatalf("got %d round trips for %d decisions, want 3 (warm-up, the first, the other %d together) for %d", trips, sent, n, n+2)
	}
	if got := e.decisions(outAllowed); got != n+2 {
		t.Fatalf("got %d allowed, want %d", got, n+2)
	}
}

// TestBatcherDeadlineWhileFrozen: with Redis frozen, every decision comes
// back at its own deadline with an error (sent: deadline exceeded; still
// queued: not sent) and is answered degraded; the breaker then opens
// (timeouts of sent decisions count against Redis).
func TestBatcherDeadlineWhileFrozen(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.PipelineWorkers = 1
		r.Timeout = core.Duration(50 * time.Millisecond)
		r.Breaker.OpenTimeout = core.Duration(time.Minute) // no probe during the test
	}))
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	if res := e.do(c, newReq("192.0.2.1")); res.hdr.Get(hdrStatus) != "" {
		t.Fatalf("healthy: got %v, want a Redis decision", res.hdr)
	}
	freeze(t, rd)

	// One decision alone: sent, no answer by its deadline.
	err := evalOne(e.rl, "edge:rl:{t||a:lone}")
	if err == nil || !isAvailabilityError(err) {
		t.Fatalf("frozen, lone decision: got error %v, want a timeout that counts against Redis", err)
	}
	// Many at once: each returns an error (none hangs past its deadline).
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = evalOne(e.rl, "edge:rl:{t||a:"+strconv.Itoa(i)+"}")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			t.Fatalf("frozen, decision %d: got no error", i)
		}
	}
	// Through the plugin: degraded, until the breaker opens.
	before := e.decisions(outDegradedOpen)
	waitFor(t, "the breaker to open", func() bool {
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 0 || res.hdr.Get(hdrStatus) != statusDegrade {
			t.Fatalf("frozen: got status %d headers %v, want allowed, degraded", res.status, res.hdr)
		}
		return e.rl.brk.Load() == 2
	})
	if e.decisions(outDegradedOpen) <= before {
		t.Fatalf("got no degraded_open decisions counted")
	}
}

// TestBatcherOverloadIsNotRedisFailure: a decision the batcher could not
// send while its workers are getting answers is a local overload, which
// the breaker ignores; with a round trip in flight and no answer for a
// whole timeout it counts against Redis. The batcher's state is set by
// hand (no workers run).
func TestBatcherOverloadIsNotRedisFailure(t *testing.T) {
	b := newBatcher(nil, nil, 20*time.Millisecond, 0, 1, 1, newMetrics(prometheus.NewRegistry()))
	ms := int64(time.Millisecond)
	tests := []struct {
		name      string
		busy      int32
		lastReply func() int64
		want      error
		counts    bool
	}{
		{"idle", 0, func() int64 { return b.mono() - 3600*1000*ms }, errQueueFull, false},
		{"in flight, answers coming", 1, func() int64 { return b.mono() - 1*ms }, errQueueFull, false},
		{"in flight, no answer for a timeout", 1, func() int64 { return b.mono() - 21*ms }, errStalled, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.busy.Store(tt.busy)
			b.lastReply.Store(tt.lastReply())
			err := b.notSent(errQueueFull)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if got := isAvailabilityError(err); got != tt.counts {
				t.Fatalf("got counted against Redis %v, want %v", got, tt.counts)
			}
		})
	}
	// A full queue fails at once.
	b.busy.Store(0)
	b.queue <- &evalReq{} // fill it (size 1, nobody takes it)
	if _, err := b.do([]string{"k"}, nil); !errors.Is(err, errQueueFull) {
		t.Fatalf("queue full: got %v, want %v", err, errQueueFull)
	}
	if got := b.stats.queueFull.Load(); got != 1 {
		t.Fatalf("got %d queue_full counted, want 1", got)
	}
}

// TestBatcherNoScriptRecovers: after SCRIPT FLUSH the EVALSHA of a lone
// decision and of a pipelined batch fail with NOSCRIPT, are retried with
// EVAL (which caches the script again) and succeed.
func TestBatcherNoScriptRecovers(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	ctx := context.Background()
	e := batcherEnv(t, rd, nil)
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	if res := e.do(c, newReq("192.0.2.1")); res.hdr.Get(hdrStatus) != "" {
		t.Fatalf("healthy: got %v, want a Redis decision", res.hdr)
	}
	// Lone decision through the plugin (the first decision above loaded
	// the script the same way: Start, which loads it, was not called).
	retried := e.rl.batch.stats.noscript.Load()
	if err := cl.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if res := e.do(c, newReq("192.0.2.1")); res.status != 0 || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != "98" {
		t.Fatalf("after SCRIPT FLUSH: got status %d headers %v, want allowed by Redis, 98 remaining", res.status, res.hdr)
	}
	if got := e.rl.batch.stats.noscript.Load() - retried; got != 1 {
		t.Fatalf("got %d NOSCRIPT retries, want 1", got)
	}
	// A pipelined batch, sent directly (no workers: deterministic).
	if err := cl.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	b := newBatcher(e.rl.client, nil, time.Minute, 0, 64, 64, newMetrics(prometheus.NewRegistry()))
	reqs := make([]*evalReq, 10)
	for i := range reqs {
		reqs[i] = &evalReq{
			keys:     []string{"edge:rl:{noscript||a:" + strconv.Itoa(i) + "}"},
			args:     []any{"", "m" + strconv.Itoa(i), "l", 5, int64(60000), 1, 0},
			deadline: time.Now().Add(time.Minute),
			done:     make(chan evalResult, 1),
		}
	}
	b.send(reqs)
	for i, r := range reqs {
		res := <-r.done
		if res.err != nil {
			t.Fatalf("batch decision %d: got error %v", i, res.err)
		}
		v := make([]ruleVerdict, 1)
		allowed, err := parseVerdict(res.reply, v)
		if err != nil || !allowed || v[0].remaining != 4 {
			t.Fatalf("batch decision %d: got %v %+v (%v), want allowed, 4 remaining", i, allowed, v, err)
		}
	}
	if got := b.stats.noscript.Load(); got != 1 {
		t.Fatalf("got %d NOSCRIPT round trips retried, want 1", got)
	}
	if ok, err := cl.ScriptExists(ctx, decideScript.Hash()).Result(); err != nil || !ok[0] {
		t.Fatalf("got script cached %v (%v), want cached again by EVAL", ok, err)
	}
}

// TestBatcherCluster: one batch with keys on every master goes through
// go-redis' cluster pipeline (split by slot) and each decision gets its
// own answer.
func TestBatcherCluster(t *testing.T) {
	cl := backing.MustCluster(t, backing.ClusterOptions{})
	client := redis.NewClusterClient(cl.ClientOptions())
	defer client.Close()
	b := newBatcher(client, nil, 5*time.Second, 0, 64, 64, newMetrics(prometheus.NewRegistry()))
	reqs := make([]*evalReq, 30)
	for i := range reqs {
		reqs[i] = &evalReq{
			keys:     []string{"edge:rl:{cluster||a:" + strconv.Itoa(i) + "}"},
			args:     []any{"", "m", "l", 1, int64(60000), 1, 0},
			deadline: time.Now().Add(5 * time.Second),
			done:     make(chan evalResult, 1),
		}
	}
	for round, wantAllowed := range []bool{true, false} { // the limit is 1
		for _, r := range reqs {
			r.done = make(chan evalResult, 1)
			r.args[1] = "m" + strconv.Itoa(round)
		}
		b.send(reqs)
		for i, r := range reqs {
			res := <-r.done
			allowed, err := parseVerdict(res.reply, make([]ruleVerdict, 1))
			if res.err != nil || err != nil || allowed != wantAllowed {
				t.Fatalf("round %d, decision %d: got %v (%v, %v), want allowed=%v", round, i, allowed, res.err, err, wantAllowed)
			}
		}
	}
	if trips := b.stats.roundTrips.Load(); trips != 2 {
		t.Fatalf("got %d batches sent, want 2", trips)
	}
}

// TestBatcherClusterCounters: counter decisions (INCRBY, PEXPIRE NX, GET of
// the previous window) on keys over every master go through go-redis'
// cluster pipeline in one batch, each answered with its own counter; the
// refunds too.
func TestBatcherClusterCounters(t *testing.T) {
	cl := backing.MustCluster(t, backing.ClusterOptions{})
	client := redis.NewClusterClient(cl.ClientOptions())
	defer client.Close()
	b := newBatcher(client, nil, 5*time.Second, 0, 64, 64, newMetrics(prometheus.NewRegistry()))
	reqs := make([]*evalReq, 30)
	mk := func(i int, kind reqKind) *evalReq {
		tag := "edge:rl:{cluster||a:" + strconv.Itoa(i) + "}:s1000:"
		return &evalReq{kind: kind, keys: []string{tag + "7", tag + "6"}, cost: 2, ttl: 60000,
			deadline: time.Now().Add(5 * time.Second), done: make(chan evalResult, 1)}
	}
	for round, want := range []int64{2, 4} {
		for i := range reqs {
			reqs[i] = mk(i, kindCounter)
		}
		b.send(reqs)
		for i, r := range reqs {
			if res := <-r.done; res.err != nil || res.count != want || res.prev != 0 {
				t.Fatalf("round %d, decision %d: got count %d prev %d (%v), want %d, 0", round, i, res.count, res.prev, res.err, want)
			}
		}
	}
	for i := range reqs {
		reqs[i] = mk(i, kindRefund)
	}
	b.send(reqs)
	for i, r := range reqs {
		if res := <-r.done; res.err != nil || res.reply != int64(2) {
			t.Fatalf("refund %d: got %v (%v), want the counter back at 2", i, res.reply, res.err)
		}
	}
}
