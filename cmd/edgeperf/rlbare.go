package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The limiter's commands, bare: what a lone rule's decision asks of Redis
// (see docs/ratelimit.md, "A lone rule: plain commands, no script"), sent
// by a minimal RESP client over plain TCP with nothing else around it.
// Its c=1 p50 is the physical limit of one decision's round trip on this
// machine, the figure issue 14 compares the runner's added latency with;
// its c=64 throughput and Redis' CPU per decision are the ceiling Redis
// alone sets. Keys have the limiter's layout, a random address each,
// always under the limit.

// bareAlg is one algorithm's commands for one decision.
type bareAlg struct {
	name  string
	build func(b []byte, rng *rand.Rand, nowMs int64) ([]byte, int) // the commands, and how many replies they get
}

var bareAlgs = []bareAlg{
	{"sliding_log", func(b []byte, rng *rand.Rand, now int64) ([]byte, int) {
		k := "edge:rl:{c:bench|a:" + strconv.Itoa(rng.IntN(1<<16)) + "}"
		m := "m:" + strconv.FormatUint(rng.Uint64(), 36)
		b = resp(b, "MULTI")
		b = resp(b, "ZREMRANGEBYSCORE", k, "-inf", strconv.FormatInt(now-1000, 10))
		b = resp(b, "ZADD", k, strconv.FormatInt(now, 10), m)
		b = resp(b, "ZCARD", k)
		b = resp(b, "PEXPIRE", k, "1000")
		b = resp(b, "ZRANGE", k, "-1001", "-1001", "WITHSCORES")
		b = resp(b, "EXEC")
		return b, 7
	}},
	{"sliding_window", func(b []byte, rng *rand.Rand, now int64) ([]byte, int) {
		tag := "edge:rl:{c:bench|a:" + strconv.Itoa(rng.IntN(1<<16)) + "}:s1000:"
		idx := now / 1000
		k := tag + strconv.FormatInt(idx, 10)
		b = resp(b, "INCRBY", k, "1")
		b = resp(b, "PEXPIRE", k, strconv.FormatInt(2000-now%1000, 10), "NX")
		b = resp(b, "GET", tag+strconv.FormatInt(idx-1, 10))
		return b, 3
	}},
	{"fixed_window", func(b []byte, rng *rand.Rand, now int64) ([]byte, int) {
		k := "edge:rl:{c:bench|a:" + strconv.Itoa(rng.IntN(1<<16)) + "}:f1000:" + strconv.FormatInt(now/1000, 10)
		b = resp(b, "INCRBY", k, "1")
		b = resp(b, "PEXPIRE", k, strconv.FormatInt(1000-now%1000, 10), "NX")
		return b, 2
	}},
}

// resp appends one command in RESP.
func resp(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// skipReply reads one RESP2 reply; an error reply is returned as an error.
func skipReply(r *bufio.Reader) error {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 3 {
		return fmt.Errorf("short reply %q", line)
	}
	switch line[0] {
	case '+', ':':
		return nil
	case '-':
		return fmt.Errorf("redis: %s", strings.TrimSpace(string(line[1:])))
	case '$':
		n, err := strconv.Atoi(string(line[1 : len(line)-2]))
		if err != nil || n < 0 {
			return err
		}
		_, err = r.Discard(n + 2)
		return err
	case '*':
		n, err := strconv.Atoi(string(line[1 : len(line)-2]))
		if err != nil {
			return err
		}
		for range max(n, 0) {
			if err := skipReply(r); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown reply %q", line)
}

// bareResult is one algorithm's bare figures.
type bareResult struct {
	alg       string
	p50, p99  time.Duration // c=1
	tput64    float64       // decisions/s at c=64
	redisUsec float64       // Redis CPU per decision (INFO commandstats, the c=64 run)
	err       error
}

// bareDecisions runs clients closed-loop clients for d, each on its own
// connection, and returns decisions/s and the latencies of one client.
func bareDecisions(ctx context.Context, network, addr string, alg bareAlg, clients int, d time.Duration) (float64, []time.Duration, error) {
	var done atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
			var dl net.Dialer
			c, err := dl.DialContext(ctx, network, addr)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(stop.Add(10 * time.Second))
			r := bufio.NewReader(c)
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			var buf []byte
			var mine []time.Duration
			for time.Now().Before(stop) && ctx.Err() == nil {
				t0 := time.Now()
				var n int
				buf, n = alg.build(buf[:0], rng, t0.UnixMilli())
				if _, err := c.Write(buf); err != nil {
					fail(err)
					return
				}
				for range n {
					if err := skipReply(r); err != nil {
						fail(err)
						return
					}
				}
				done.Add(1)
				if i == 0 {
					mine = append(mine, time.Since(t0))
				}
			}
			if i == 0 {
				mu.Lock()
				lat = mine
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, nil, firstErr
	}
	return float64(done.Load()) / d.Seconds(), lat, nil
}

// measureBare measures every algorithm's commands at c=1 and c=64, d each.
func (l *limits) measureBare(ctx context.Context, e *env, d time.Duration) {
	c := e.rd.Client()
	defer c.Close()
	network, addr := e.redisDial()
	for _, alg := range bareAlgs {
		res := bareResult{alg: alg.name}
		var err error
		res.p50, res.p99, err = bareOne(ctx, network, addr, alg, d)
		if err == nil {
			err = c.ConfigResetStat(ctx).Err()
		}
		var n float64
		if err == nil {
			n, _, err = bareDecisions(ctx, network, addr, alg, 64, d)
			res.tput64 = n
		}
		if err == nil {
			var usec float64
			usec, err = allCommandUsec(ctx, e)
			if decisions := n * d.Seconds(); decisions > 0 {
				res.redisUsec = usec / decisions
			}
		}
		res.err = err
		l.bare = append(l.bare, res)
	}
}

// allCommandUsec sums usec over INFO commandstats, but for INFO and CONFIG.
func allCommandUsec(ctx context.Context, e *env) (float64, error) {
	c := e.rd.Client()
	defer c.Close()
	s, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, fmt.Errorf("info commandstats: %w", err)
	}
	var sum float64
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || strings.HasPrefix(name, "cmdstat_info") || strings.HasPrefix(name, "cmdstat_config") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				x, _ := strconv.ParseFloat(v, 64)
				sum += x
			}
		}
	}
	return sum, nil
}

// bare finds an algorithm's bare figures.
func (l *limits) bareOf(alg string) *bareResult {
	if l == nil {
		return nil
	}
	for i := range l.bare {
		if l.bare[i].alg == alg && l.bare[i].err == nil {
			return &l.bare[i]
		}
	}
	return nil
}

// bareOne runs alg's commands on one connection for d and returns the p50
// and p99 of its round trips.
func bareOne(ctx context.Context, network, addr string, alg bareAlg, d time.Duration) (p50, p99 time.Duration, err error) {
	_, lat, err := bareDecisions(ctx, network, addr, alg, 1, d)
	if err != nil {
		return 0, 0, err
	}
	if len(lat) == 0 {
		return 0, 0, errors.New("no decision at c=1")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// bareSlice runs alg's commands bare on one connection for d and returns
// the p50 of its round trips (the slices between a scenario's c=1 rounds).
func bareSlice(ctx context.Context, e *env, alg string, d time.Duration) (time.Duration, error) {
	a, err := bareAlgNamed(alg)
	if err != nil {
		return 0, err
	}
	network, addr := e.redisDial()
	p50, _, err := bareOne(ctx, network, addr, a, d)
	return p50, err
}

// bareTputSlice measures alg's bare commands on clients connections for d
// (the slices between a scenario's c=64 rounds) and returns decisions/s.
func bareTputSlice(ctx context.Context, e *env, alg string, clients int, d time.Duration) (float64, error) {
	a, err := bareAlgNamed(alg)
	if err != nil {
		return 0, err
	}
	network, addr := e.redisDial()
	tput, _, err := bareDecisions(ctx, network, addr, a, clients, d)
	return tput, err
}

func bareAlgNamed(name string) (bareAlg, error) {
	for _, a := range bareAlgs {
		if a.name == name {
			return a, nil
		}
	}
	return bareAlg{}, fmt.Errorf("unknown algorithm %q", name)
}
