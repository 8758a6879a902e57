package backing

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// timedPing returns how long one PING took.
func timedPing(ctx context.Context, t *testing.T, c *redis.Client) time.Duration {
	t.Helper()
	start := time.Now()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING through proxy: %v", err)
	}
	return time.Since(start)
}

func TestProxyRedisFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := MustRedis(t, RedisOptions{})
	p := MustProxy(t, r.Addr())
	if p.Upstream() != r.Addr() || !strings.HasPrefix(p.Addr(), "127.0.0.1:") || p.Addr() == r.Addr() {
		t.Fatalf("proxy %s -> %s, redis %s", p.Addr(), p.Upstream(), r.Addr())
	}
	o := r.ClientOptions()
	o.Addr = p.Addr()
	c := redis.NewClient(o)
	defer c.Close()
	timedPing(ctx, t, c)

	// Latency: a round trip takes at least the configured latency (lower
	// bound only).
	const latency = 150 * time.Millisecond
	if err := p.SetLatency(latency); err != nil {
		t.Fatal(err)
	}
	if d := timedPing(ctx, t, c); d < latency {
		t.Fatalf("PING with %v latency took %v", latency, d)
	}
	// A fresh connection is delayed too.
	fresh := redis.NewClient(o)
	if d := timedPing(ctx, t, fresh); d < latency {
		t.Fatalf("PING on a new connection with %v latency took %v", latency, d)
	}
	fresh.Close()
	if err := p.ClearLatency(); err != nil {
		t.Fatal(err)
	}
	timedPing(ctx, t, c)

	// Blackhole: connections are accepted, nothing comes back.
	sopts := r.ClientOptions()
	sopts.Addr = p.Addr()
	bh := shortClient(sopts, 300*time.Millisecond)
	defer bh.Close()
	if err := bh.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING before blackhole: %v", err)
	}
	if err := p.Blackhole(); err != nil {
		t.Fatal(err)
	}
	if err := bh.Ping(ctx).Err(); err == nil || !isTimeout(err) {
		t.Fatalf("PING on a blackholed established connection = %v, want timeout", err)
	}
	bh2 := shortClient(sopts, 300*time.Millisecond)
	if err := bh2.Ping(ctx).Err(); err == nil || !isTimeout(err) {
		t.Fatalf("PING on a new blackholed connection = %v, want timeout", err)
	}
	bh2.Close()
	if err := p.ClearBlackhole(); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error { return bh.Ping(ctx).Err() })

	// Disable: connections are refused.
	if err := p.Disable(); err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("dial to a disabled proxy succeeded")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a disabled proxy = %v, want connection refused", err)
	}
	if err := bh.Ping(ctx).Err(); err == nil {
		t.Fatal("PING through a disabled proxy succeeded")
	}
	if err := p.Enable(); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error { return bh.Ping(ctx).Err() })

	// ResetPeer: the connection is reset as soon as the client sends.
	if err := p.ResetPeer(); err != nil {
		t.Fatal(err)
	}
	rp := shortClient(sopts, time.Second)
	if err := rp.Ping(ctx).Err(); err == nil {
		t.Fatal("PING through a resetting proxy succeeded")
	} else {
		t.Logf("reset peer: %v", err)
	}
	rp.Close()
	if err := p.Reset(); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error { return bh.Ping(ctx).Err() })

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.SetLatency(time.Second); err == nil {
		t.Fatal("SetLatency after Close succeeded")
	}
}

func TestProxyClickHouseBlackhole(t *testing.T) {
	t.Parallel()
	ch := MustClickHouse(t, ClickHouseOptions{})
	p := MustProxy(t, ch.NativeAddr())
	o := ch.ClientOptions()
	o.Addr = []string{p.Addr()}
	o.DialTimeout = 300 * time.Millisecond
	conn, err := openCH(o)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping through proxy: %v", err)
	}
	if err := p.SetLatency(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("ping with 100ms latency took %v", d)
	}
	if err := p.Blackhole(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := conn.Ping(short); err == nil {
		t.Fatal("ping through a blackholed proxy succeeded")
	}
}

// eventually retries f for up to 5 seconds.
func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition never met: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
