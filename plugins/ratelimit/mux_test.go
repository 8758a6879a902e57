package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/redis/go-redis/v9"
)

// muxEnv is a plugin on the multiplexed connection (the default in
// standalone mode) with the given call timeout.
func muxEnv(t *testing.T, rd *backing.Redis, timeout time.Duration, edit func(*Config), opts ...Option) *env {
	t.Helper()
	e := newEnv(t, redisCfg(t, rd.Addr(), func(r *Config) {
		r.Timeout = core.Duration(timeout)
		if edit != nil {
			edit(r)
		}
	}), opts...)
	if e.rl.batch == nil || e.rl.batch.mux == nil {
		t.Fatal("got no multiplexed connection, want one by default in standalone mode")
	}
	return e
}

// TestMuxLoneDecisionsOneWriteEach: with nothing else queued, a decision
// is written at once, alone: sequential decisions make one write each.
func TestMuxLoneDecisionsOneWriteEach(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := muxEnv(t, rd, time.Minute, nil)
	startAndSync(t, e)
	c := mustConf(t, `{"limit":100,"window":"1m"}`)
	trips0, sent0 := e.roundTrips()
	for i := 1; i <= 5; i++ {
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 0 || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != strconv.Itoa(100-i) {
			t.Fatalf("decision %d: got status %d headers %v, want allowed by Redis with %d remaining", i, res.status, res.hdr, 100-i)
		}
		trips, sent := e.roundTrips()
		if trips-trips0 != int64(i) || sent-sent0 != int64(i) {
			t.Fatalf("after %d sequential decisions: got %d writes for %d decisions, want %d and %d", i, trips-trips0, sent-sent0, i, i)
		}
	}
}

// TestMuxDoesNotWaitForReplies: decisions are written while earlier ones
// still wait for their replies. With Redis frozen, 51 concurrent decisions
// are all written on the one connection, none answered; after the thaw
// Redis answers every one of them, in order, each to its own caller.
func TestMuxDoesNotWaitForReplies(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	// the test's clock: a window boundary of the wall clock would split a
	// key's count between two windows
	e := muxEnv(t, rd, time.Minute, nil, WithClock(newClock().now))
	startAndSync(t, e)
	c := mustConf(t, `{"limit":1000,"window":"1m","key":"header:X-Key","algorithm":"fixed_window"}`)
	send := func(k string) result {
		r := newReq("192.0.2.1")
		r.hdr.Set("X-Key", k)
		return e.do(c, r)
	}
	send("warm")
	_, sent0 := e.roundTrips()
	freeze(t, rd)
	const n = 51
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// key k<i> gets i+1 decisions in all: see the check below
			for range i + 1 {
				results[i] = send("k" + strconv.Itoa(i))
			}
		}()
	}
	waitFor(t, "the first decision of each key written", func() bool {
		_, sent := e.roundTrips()
		return sent-sent0 >= n
	})
	if err := rd.Thaw(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, res := range results {
		if res.status != 0 || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != strconv.Itoa(1000-(i+1)) {
			t.Fatalf("key k%d after %d decisions: got status %d headers %v, want allowed by Redis with %d remaining", i, i+1, res.status, res.hdr, 1000-(i+1))
		}
	}
	if got, want := e.decisions(outAllowed), n*(n+1)/2+1; got != want {
		t.Fatalf("got %d allowed, want %d", got, want)
	}
}

// TestMuxNoScriptRecovers: after SCRIPT FLUSH a script decision answered
// NOSCRIPT is sent again as EVAL (which caches the script) and succeeds.
func TestMuxNoScriptRecovers(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	cl := rd.Client()
	defer cl.Close()
	e := muxEnv(t, rd, time.Minute, nil)
	startAndSync(t, e)
	if err := cl.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// Two rules: one script decision (EVALSHA over both keys).
	c := mustConf(t, `{"rules":[{"limit":100,"window":"1m"},{"limit":1000,"window":"1h","algorithm":"fixed_window"}]}`)
	for i := 1; i <= 3; i++ {
		res := e.do(c, newReq("192.0.2.1"))
		if res.status != 0 || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != strconv.Itoa(100-i) {
			t.Fatalf("decision %d after SCRIPT FLUSH: got status %d headers %v, want allowed by Redis with %d remaining", i, res.status, res.hdr, 100-i)
		}
	}
	if got := e.rl.batch.stats.noscript.Load(); got != 1 {
		t.Fatalf("got %d NOSCRIPT retries, want 1 (the script is cached after it)", got)
	}
}

// TestMuxRedisKilledFailsAtOnceAndRecovers: with Redis gone, a decision
// fails with errNoConn (it was never written, so it did not wait for a
// reply: the timeout here is a minute); once Redis is back, the
// connection is redialed in the background and decisions succeed again.
func TestMuxRedisKilledFailsAtOnceAndRecovers(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := muxEnv(t, rd, time.Minute, nil)
	startAndSync(t, e)
	if err := evalOne(e.rl, "edge:rl:{t||a:k}"); err != nil {
		t.Fatalf("healthy: got %v", err)
	}
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection seen lost", func() bool { return e.rl.batch.mux.conn.Load() == nil })
	err := evalOne(e.rl, "edge:rl:{t||a:k}")
	if !errors.Is(err, errNoConn) || !isAvailabilityError(err) {
		t.Fatalf("killed: got %v, want %v, counted against Redis", err, errNoConn)
	}
	if err := rd.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "decisions by Redis again", func() bool { return evalOne(e.rl, "edge:rl:{t||a:k}") == nil })
}

// TestMuxStalledConnectionIsReplaced: a connection with no reply for
// 4×timeout (here the 100 ms floor) is closed, its waiting requests fail,
// and a new one is dialed once Redis answers again.
func TestMuxStalledConnectionIsReplaced(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{})
	e := muxEnv(t, rd, 20*time.Millisecond, func(r *Config) {
		r.Breaker.OpenTimeout = core.Duration(time.Minute) // evalOne goes around it anyway
	})
	startAndSync(t, e)
	m := e.rl.batch.mux
	first := m.conn.Load()
	if first == nil {
		t.Fatal("got no connection after start")
	}
	freeze(t, rd)
	if err := evalOne(e.rl, "edge:rl:{t||a:k}"); err == nil || !isAvailabilityError(err) {
		t.Fatalf("frozen: got %v, want a timeout counted against Redis", err)
	}
	waitFor(t, "the stalled connection closed", func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return first.closed
	})
	if err := first.closeErr; err == nil || !strings.Contains(err.Error(), "no reply for 100ms") {
		t.Fatalf("got close error %v, want no reply for 100ms", err)
	}
	if err := rd.Thaw(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "decisions by Redis again", func() bool { return evalOne(e.rl, "edge:rl:{t||a:k}") == nil })
	if m.conn.Load() == first {
		t.Fatal("got the stalled connection still in use, want a new one")
	}
}

// TestMuxAuthAndDB: the connection authenticates as the ACL user and
// selects redis.db; a wrong password fails each decision at once with the
// handshake's error.
func TestMuxAuthAndDB(t *testing.T) {
	rd := backing.MustRedis(t, backing.RedisOptions{Username: "edge", Password: "s3cret"})
	e := muxEnv(t, rd, time.Minute, func(r *Config) { r.Username, r.Password, r.DB = "edge", "s3cret", 3 })
	startAndSync(t, e)
	if err := evalOne(e.rl, "edge:rl:{t||a:db3}"); err != nil {
		t.Fatalf("got %v, want a decision", err)
	}
	cl := redis.NewClient(&redis.Options{Addr: rd.Addr(), Username: "edge", Password: "s3cret", DB: 3})
	defer cl.Close()
	n, err := cl.Exists(context.Background(), "edge:rl:{t||a:db3}").Result()
	if err != nil || n != 1 {
		t.Fatalf("key in db 3: got %d, %v, want 1", n, err)
	}

	bad := muxEnv(t, rd, time.Minute, func(r *Config) { r.Username, r.Password = "edge", "wrong" })
	waitFor(t, "a failed handshake", func() bool {
		return strings.Contains((*bad.rl.batch.mux.lastErr.Load()).Error(), "handshake")
	})
	err = evalOne(bad.rl, "edge:rl:{t||a:x}")
	if !errors.Is(err, errNoConn) || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: got %v, want %v with Redis' WRONGPASS", err, errNoConn)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in      string
		want    any
		wantErr error // a reply error (reply.err), compared by text
		used    int
		proto   bool // a protocol error
	}{
		{in: "+OK\r\n", want: "OK", used: 5},
		{in: ":42\r\n", want: int64(42), used: 5},
		{in: ":-7\r\nrest", want: int64(-7), used: 5},
		{in: "$3\r\nabc\r\n", want: "abc", used: 9},
		{in: "$0\r\n\r\n", want: "", used: 6},
		{in: "$-1\r\n", wantErr: redis.Nil, used: 5},
		{in: "*-1\r\n", wantErr: redis.Nil, used: 5},
		{in: "-NOSCRIPT No matching script\r\n", wantErr: respError("NOSCRIPT No matching script"), used: 30},
		{in: "*3\r\n:1\r\n$-1\r\n*2\r\n$1\r\na\r\n$2\r\n10\r\n", want: []any{int64(1), nil, []any{"a", "10"}}, used: 32},
		{in: "*2\r\n-ERR x\r\n:1\r\n", want: []any{respError("ERR x"), int64(1)}, used: 16},
		// incomplete: nothing used, no error
		{in: "", used: 0},
		{in: "+OK\r", used: 0},
		{in: "$3\r\nab", used: 0},
		{in: "$3\r\nabc\r", used: 0},
		{in: "*2\r\n:1\r\n", used: 0},
		{in: "*1000000\r\n", used: 0},
		// protocol errors
		{in: "?x\r\n", proto: true},
		{in: ":x\r\n", proto: true},
		{in: "$-2\r\n", proto: true},
		{in: "$3\r\nabcde", proto: true},
		{in: "*2000000\r\n", proto: true},
		{in: "+OK\n", proto: true},
		{in: ":92233720368547758070\r\n", proto: true}, // beyond int64
		{in: ":-\r\n", proto: true},
		{in: ":123456789012345678\r\n", want: int64(123456789012345678), used: 21},
		{in: ":-9223372036854775807\r\n", want: int64(-9223372036854775807), used: 23},
		{in: "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", proto: true},
	}
	for _, tt := range tests {
		rep, used, err := parseReply([]byte(tt.in), 0)
		if tt.proto {
			if !errors.Is(err, errProtocol) {
				t.Errorf("%q: got %v, %d, want a protocol error", tt.in, err, used)
			}
			continue
		}
		if err != nil || used != tt.used {
			t.Errorf("%q: got used %d, error %v, want %d, nil", tt.in, used, err, tt.used)
			continue
		}
		if used == 0 {
			continue
		}
		if !reflect.DeepEqual(rep.value(), tt.want) || (rep.err == nil) != (tt.wantErr == nil) ||
			(rep.err != nil && rep.err.Error() != tt.wantErr.Error()) {
			t.Errorf("%q: got %#v, %v, want %#v, %v", tt.in, rep.value(), rep.err, tt.want, tt.wantErr)
		}
	}
	// An error reply is a redis.Error, as go-redis's own: answered and
	// HasErrorPrefix treat both alike.
	rep, _, _ := parseReply([]byte("-NOSCRIPT x\r\n"), 0)
	if !answered(rep.err) || !redis.HasErrorPrefix(rep.err, "NOSCRIPT") {
		t.Errorf("got answered %v, NOSCRIPT prefix %v for an error reply, want both true", answered(rep.err), redis.HasErrorPrefix(rep.err, "NOSCRIPT"))
	}
}

// TestAppendCommand: every command the connection writes, read back as
// Redis would read it (an array of bulk strings), gives its arguments.
func TestAppendCommand(t *testing.T) {
	tests := []struct {
		args []any
		want []any
	}{
		{[]any{"incrby", "edge:rl:{k}", int64(3)}, []any{"incrby", "edge:rl:{k}", "3"}},
		{[]any{"pexpire", "k", int64(60000), "nx"}, []any{"pexpire", "k", "60000", "nx"}},
		{[]any{"zremrangebyscore", "k", "-inf", int64(-5)}, []any{"zremrangebyscore", "k", "-inf", "-5"}},
		{[]any{"x", 7, uint64(8), 1.5, []byte("b"), ""}, []any{"x", "7", "8", "1.5", "b", ""}},
	}
	for _, tt := range tests {
		b := appendCommand(nil, tt.args...)
		rep, used, err := parseReply(b, 0)
		if err != nil || used != len(b) || !reflect.DeepEqual(rep.value(), tt.want) {
			t.Errorf("%v: got %q read back as %#v (used %d of %d, %v), want %#v", tt.args, b, rep.value(), used, len(b), err, tt.want)
		}
	}
}

// TestAppendToMatchesReplies: each request kind writes as many commands as
// need says replies come back.
func TestAppendToMatchesReplies(t *testing.T) {
	reqs := []*evalReq{
		{kind: kindScript, keys: []string{"a", "b"}, args: []any{int64(1), int64(2)}},
		{kind: kindScript, keys: []string{"a"}, eval: true},
		{kind: kindCounter, keys: []string{"a"}, cost: 1, ttl: 1000},
		{kind: kindCounter, keys: []string{"a", "b"}, cost: 1, ttl: 1000},
		{kind: kindLog, keys: []string{"a"}, now: 5, ttl: 1000, limit: 10, members: []any{int64(5), "m1", int64(5), "m2"}},
		{kind: kindRefund, keys: []string{"a"}, cost: 2},
		{kind: kindRefund, keys: []string{"a"}, members: []any{"m1", "m2"}},
	}
	for _, r := range reqs {
		b := r.appendTo(nil, "sha")
		n := 0
		for len(b) > 0 {
			_, used, err := parseReply(b, 0)
			if err != nil || used == 0 {
				t.Fatalf("kind %d: command %d unreadable: %v", r.kind, n, err)
			}
			b = b[used:]
			n++
		}
		if n != int(r.need()) {
			t.Errorf("kind %d with %d keys: got %d commands, want %d", r.kind, len(r.keys), n, r.need())
		}
	}
}

// FuzzParseReply: whatever bytes come from the connection, the reader
// neither panics nor reads past them, a reply it accepts is read the same
// from exactly its bytes, and every shorter prefix of it is incomplete.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"+OK\r\n", ":1\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*2\r\n:1\r\n$1\r\na\r\n", "-ERR x\r\n",
		"*5\r\n:0\r\n:1\r\n:1\r\n:1\r\n*2\r\n$2\r\nm1\r\n$13\r\n1700000000000\r\n", "*3\r\n$-1\r\n*-1\r\n*0\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, used, err := parseReply(b, 0)
		if err != nil || used == 0 {
			return
		}
		if used > len(b) {
			t.Fatalf("used %d of %d bytes", used, len(b))
		}
		again, used2, err := parseReply(bytes.Clone(b[:used]), 0)
		if err != nil || used2 != used || !reflect.DeepEqual(again, rep) {
			t.Fatalf("read again from its %d bytes: got %#v, %d, %v, want %#v", used, again, used2, err, rep)
		}
		for k := range used {
			if _, u, err := parseReply(b[:k], 0); u != 0 || err != nil {
				t.Fatalf("prefix of %d of %d bytes: got used %d, %v, want incomplete", k, used, u, err)
			}
		}
	})
}

// TestMuxSentinelFailover: in sentinel mode the connection goes to the
// master the sentinels name; after the master is killed and another
// elected, it is redialed to the new one and decisions are Redis' again.
func TestMuxSentinelFailover(t *testing.T) {
	backing.MustRequire(t, backing.RedisServer, backing.RedisSentinel)
	sg := backing.MustSentinel(t, backing.SentinelOptions{Password: "s3cret"})
	e := newEnv(t, redisCfg(t, sg.SentinelAddrs()[0], func(r *Config) {
		r.Mode, r.Addrs, r.MasterName, r.Password = "sentinel", sg.SentinelAddrs(), sg.MasterName(), "s3cret"
		r.Timeout = core.Duration(time.Second)
	}))
	if e.rl.batch == nil || e.rl.batch.mux == nil {
		t.Fatal("got no multiplexed connection in sentinel mode, want one by default")
	}
	m := e.rl.batch.mux
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	master, err := sg.MasterAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a decision by Redis", func() bool { return evalOne(e.rl, "edge:rl:{t||a:s}") == nil })
	if got := m.conn.Load().c.RemoteAddr().String(); got != master {
		t.Fatalf("got a connection to %s, want the master %s", got, master)
	}
	old, err := sg.KillMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next, err := sg.WaitNewMaster(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a decision by the new master", func() bool {
		if evalOne(e.rl, "edge:rl:{t||a:s}") != nil {
			return false
		}
		mc := m.conn.Load()
		return mc != nil && mc.c.RemoteAddr().String() == next
	})
}
