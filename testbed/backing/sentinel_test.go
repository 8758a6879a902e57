package backing

import (
	"context"
	"testing"
	"time"
)

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	g := MustSentinel(t, SentinelOptions{Password: "pw"})
	t.Logf("sentinel group started in %v: %s", time.Since(start), g)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := g.FailoverClient()
	defer c.Close()
	if err := c.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatalf("SET before failover: %v", err)
	}

	killed := time.Now()
	old, err := g.KillMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newAddr, err := g.WaitNewMaster(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover %s -> %s took %v", old, newAddr, time.Since(killed))
	if got, err := g.MasterAddr(ctx); err != nil || got != newAddr {
		t.Fatalf("MasterAddr = %s, %v; want %s", got, err, newAddr)
	}

	// The client that existed before the failover recovers; writes go to
	// the new master.
	var lastErr error
	for {
		if lastErr = c.Set(ctx, "after", "2", 0).Err(); lastErr == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("SET after failover never succeeded: %v", lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
	n := g.Node(newAddr)
	nc := n.Client()
	defer nc.Close()
	if v, err := nc.Get(ctx, "after").Result(); err != nil || v != "2" {
		t.Fatalf("GET on new master %s = %q, %v", newAddr, v, err)
	}
	if v, err := c.Get(ctx, "before").Result(); err != nil || v != "1" {
		t.Fatalf("data written before failover lost: %q, %v", v, err)
	}

	// The old master comes back as a replica of the new one.
	if err := g.Node(old).Restart(); err != nil {
		t.Fatal(err)
	}
	// A forced failover moves the master again.
	prev, err := g.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if prev != newAddr {
		t.Fatalf("Failover returned %s, want %s", prev, newAddr)
	}
	third, err := g.WaitNewMaster(ctx, prev)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("forced failover %s -> %s", prev, third)
	for {
		if lastErr = c.Set(ctx, "again", "3", 0).Err(); lastErr == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("SET after forced failover never succeeded: %v", lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
