package backing

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// crc16 is the CRC16-CCITT (XMODEM) checksum Redis Cluster uses for slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keysForAllSlots returns one key (without hash tag) per cluster slot.
func keysForAllSlots() []string {
	keys := make([]string, clusterSlots)
	found := 0
	for i := 0; found < clusterSlots; i++ {
		k := "key:" + strconv.Itoa(i)
		slot := crc16(k) % clusterSlots
		if keys[slot] == "" {
			keys[slot] = k
			found++
		}
	}
	return keys
}

func TestCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := MustCluster(t, ClusterOptions{})
	t.Logf("cluster started in %v: %s", time.Since(start), c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if len(c.Addrs()) != 3 {
		t.Fatalf("Addrs() = %v, want 3 nodes", c.Addrs())
	}
	cc := c.Client()
	defer cc.Close()
	keys := keysForAllSlots()
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16 self-check = %#x", got)
	}
	pipe := cc.Pipeline()
	for _, k := range keys {
		pipe.Set(ctx, k, k, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("SET on all %d slots: %v", len(keys), err)
	}
	var total int64
	for i := range c.Nodes() {
		nc := c.Node(i).Client()
		n, err := nc.DBSize(ctx).Result()
		nc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("node %d holds no keys", i)
		}
		total += n
	}
	if total != clusterSlots {
		t.Fatalf("keys on all nodes = %d, want %d", total, clusterSlots)
	}

	// Kill and restart a node: it rejoins from nodes.conf and the cluster
	// is healthy again (data is gone: no persistence).
	n1 := c.Node(1)
	if err := n1.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := n1.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		pipe := cc.Pipeline()
		for _, k := range keys {
			pipe.Set(ctx, k, "again", 0)
		}
		_, err := pipe.Exec(ctx)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("SET on all slots after node restart: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestClusterWithReplicas(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := MustCluster(t, ClusterOptions{ReplicasPerMaster: 1, Password: "pw"})
	t.Logf("cluster with replicas started in %v", time.Since(start))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if len(c.Nodes()) != 6 {
		t.Fatalf("nodes = %d, want 6", len(c.Nodes()))
	}
	for i := 3; i < 6; i++ {
		info, err := c.Node(i).info(ctx, "replication")
		if err != nil || info["role"] != "slave" {
			t.Fatalf("node %d role = %q, %v", i, info["role"], err)
		}
	}
	cc := c.Client()
	defer cc.Close()
	if err := cc.Set(ctx, "a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
