package backing_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/redis/go-redis/v9"
)

// Start a real Redis, put a proxy with latency in front of it, and see a
// client through the proxy fail when the server is frozen.
func Example() {
	r, err := backing.StartRedis(backing.RedisOptions{MaxMemory: "2mb", MaxMemoryPolicy: "allkeys-lru"})
	if err != nil {
		log.Fatal(err) // e.g. "start redis: require: server binary not found: redis-server (install ...)"
	}
	defer r.Close()

	p, err := backing.NewProxy(r.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	if err := p.SetLatency(50 * time.Millisecond); err != nil {
		log.Fatal(err)
	}

	opts := r.ClientOptions()
	opts.Addr = p.Addr()
	opts.ReadTimeout = 200 * time.Millisecond
	opts.MaxRetries = -1
	c := redis.NewClient(opts)
	defer c.Close()

	ctx := context.Background()
	fmt.Println(c.Set(ctx, "greeting", "hello", 0).Err())

	_ = r.Freeze()
	fmt.Println(c.Get(ctx, "greeting").Err() != nil)
	_ = r.Thaw()

	v, err := c.Get(ctx, "greeting").Result()
	fmt.Println(v, err)
	// Output:
	// <nil>
	// true
	// hello <nil>
}
