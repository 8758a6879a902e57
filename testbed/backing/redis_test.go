package backing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRequire(t *testing.T) {
	if err := Require(); err != nil {
		t.Fatalf("Require() = %v; the test machine must have every server installed", err)
	}
	if err := Require("no-such-service"); err == nil {
		t.Fatal("Require(unknown) = nil, want error")
	}
	t.Setenv("BACKING_REDIS_SENTINEL", "/nonexistent/redis-sentinel")
	err := Require(RedisServer, RedisSentinel)
	if err == nil || !errors.Is(err, ErrMissingBinary) ||
		!strings.Contains(err.Error(), "apt-get install redis-sentinel") ||
		strings.Contains(err.Error(), "redis-server") {
		t.Fatalf("Require with missing sentinel = %v, want an error naming only redis-sentinel", err)
	}
	if _, err := StartSentinel(SentinelOptions{}); err == nil || !errors.Is(err, ErrMissingBinary) {
		t.Fatalf("StartSentinel with missing binary = %v, want ErrMissingBinary", err)
	}
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("port %d from FreePort is not usable: %v", p, err)
	}
	l.Close()
}

// shortClient returns a client that gives up after d and never retries.
func shortClient(o *redis.Options, d time.Duration) *redis.Client {
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = d, d, d
	o.MaxRetries = -1
	return redis.NewClient(o)
}

func TestRedisLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Now()
	r := MustRedis(t, RedisOptions{AppendOnly: true})
	t.Logf("redis started in %v on %s", time.Since(start), r.Addr())

	c := r.Client()
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	if err := c.Set(ctx, "k", "v1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	pid, addr := r.PID(), r.Addr()
	if pid == 0 {
		t.Fatal("PID() = 0 for a running server")
	}

	// Freeze: the kernel still accepts connections, nothing answers.
	if err := r.Freeze(); err != nil {
		t.Fatal(err)
	}
	sc := shortClient(r.ClientOptions(), 200*time.Millisecond)
	defer sc.Close()
	if err := sc.Get(ctx, "k").Err(); err == nil {
		t.Fatal("GET on a frozen server succeeded, want timeout")
	} else if !isTimeout(err) {
		t.Fatalf("GET on a frozen server = %v, want a timeout", err)
	}
	if err := r.Thaw(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v1" {
		t.Fatalf("GET after Thaw = %q, %v", v, err)
	}

	// Kill: connections are refused.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if r.PID() != 0 || r.Running() {
		t.Fatal("server still running after Kill")
	}
	if err := sc.Ping(ctx).Err(); err == nil {
		t.Fatal("PING on a killed server succeeded")
	}
	if err := r.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}

	// Restart: same address, AOF data kept.
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if r.Addr() != addr || r.PID() == pid || r.PID() == 0 {
		t.Fatalf("after Restart addr %s pid %d, before %s pid %d", r.Addr(), r.PID(), addr, pid)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v1" {
		t.Fatalf("GET after Restart = %q, %v", v, err)
	}
	// Restart of a running server works too.
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}

	// Close also ends a frozen server, is idempotent and removes the dir.
	if err := r.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(r.Dir()); !os.IsNotExist(err) {
		t.Fatalf("dir %s still exists after Close: %v", r.Dir(), err)
	}
	if err := r.Restart(); err == nil {
		t.Fatal("Restart after Close succeeded")
	}
}

// isTimeout reports whether err is a network timeout or deadline error.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) ||
		strings.Contains(err.Error(), "timeout")
}

func TestRedisMaxMemoryLRU(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := MustRedis(t, RedisOptions{MaxMemory: "2mb", MaxMemoryPolicy: "allkeys-lru"})
	c := r.Client()
	defer c.Close()
	val := strings.Repeat("x", 10<<10)
	const n = 1000 // 10 MB, five times the cap
	for i := 0; i < n; i++ {
		if err := c.Set(ctx, fmt.Sprintf("key:%d", i), val, 0).Err(); err != nil {
			t.Fatalf("SET %d beyond maxmemory: %v", i, err)
		}
	}
	size, err := c.DBSize(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if size >= n {
		t.Fatalf("DBSIZE = %d, want evictions below %d", size, n)
	}
	if v, err := c.Get(ctx, fmt.Sprintf("key:%d", n-1)).Result(); err != nil || v != val {
		t.Fatalf("most recent key was evicted: %v", err)
	}
}

func TestRedisMaxMemoryNoEviction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := MustRedis(t, RedisOptions{MaxMemory: "2mb", MaxMemoryPolicy: "noeviction"})
	c := r.Client()
	defer c.Close()
	val := strings.Repeat("x", 10<<10)
	for i := 0; i < 1000; i++ {
		err := c.Set(ctx, fmt.Sprintf("key:%d", i), val, 0).Err()
		if err != nil {
			if !strings.Contains(err.Error(), "OOM") {
				t.Fatalf("SET %d: %v, want OOM", i, err)
			}
			return
		}
	}
	t.Fatal("noeviction server accepted 10 MB with maxmemory 2mb")
}

func TestRedisPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := MustRedis(t, RedisOptions{Password: "s3cret pass"})
	anon := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer anon.Close()
	if err := anon.Set(ctx, "k", "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("SET without password = %v, want NOAUTH", err)
	}
	c := r.Client()
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET with password: %v", err)
	}
}

func TestRedisACLUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := MustRedis(t, RedisOptions{Username: "edge", Password: "pw"})
	def := redis.NewClient(&redis.Options{Addr: r.Addr(), Password: "pw", MaxRetries: -1})
	defer def.Close()
	if err := def.Ping(ctx).Err(); err == nil {
		t.Fatal("PING as default user succeeded, want the default user disabled")
	}
	c := r.Client()
	defer c.Close()
	who, err := c.Do(ctx, "ACL", "WHOAMI").Text()
	if err != nil || who != "edge" {
		t.Fatalf("ACL WHOAMI = %q, %v", who, err)
	}
}

func TestRedisFixedPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = StartRedis(RedisOptions{Port: port, StartTimeout: 5 * time.Second})
	if err == nil {
		t.Fatal("StartRedis on a busy port succeeded")
	}
	if !strings.Contains(err.Error(), "start redis") || !strings.Contains(err.Error(), "tail of") {
		t.Fatalf("error lacks operation or log tail: %v", err)
	}
	t.Logf("expected error: %v", err)
}
