package backing

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// TestClickHouseCluster: two instances form a two-shard cluster; rows
// inserted through a Distributed table on one instance are spread over
// both shards, every row exactly once, with asynchronous inserts (then
// SYSTEM FLUSH DISTRIBUTED) and with insert_distributed_sync; a column
// added with ALTER to the local tables, then the Distributed one, is written
// and read through it.
func TestClickHouseCluster(t *testing.T) {
	t.Parallel()
	MustRequire(t, ClickHouseServer)
	start := time.Now()
	c := MustClickHouseCluster(t, ClickHouseClusterOptions{Password: "pw"})
	t.Logf("cluster %s of %d instances (%s) started in %v: %v", c.Name(), len(c.Nodes()), c.Node(0).Version(), time.Since(start), c.Addrs())
	ctx := context.Background()
	for _, q := range []string{
		"CREATE TABLE requests_local (ts DateTime, n UInt64) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(ts) ORDER BY n",
		"CREATE TABLE requests AS requests_local ENGINE = Distributed(" + c.Name() + ", default, requests_local, rand())",
	} {
		if err := c.ExecAll(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(node *ClickHouse, from, n int, sync bool) {
		t.Helper()
		conn, err := node.Conn()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ictx := ctx
		if sync {
			ictx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
		}
		b, err := conn.PrepareBatch(ictx, "INSERT INTO requests (ts, n)")
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		for i := from; i < from+n; i++ {
			if err := b.Append(now, uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	insert(c.Node(0), 0, 1000, false)
	insert(c.Node(1), 1000, 1000, false)
	if err := c.FlushDistributed(ctx, "requests"); err != nil {
		t.Fatal(err)
	}
	insert(c.Node(0), 2000, 1000, true)
	counts, err := c.Counts(ctx, "requests_local")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rows per shard: %v", counts)
	for i, n := range counts {
		if n == 0 {
			t.Errorf("shard %d: got no rows, want some of the 3000", i+1)
		}
	}
	if got := counts[0] + counts[1]; got != 3000 {
		t.Errorf("got %d rows on the shards, want 3000", got)
	}
	var total, distinct uint64
	conn, err := c.Node(1).Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(n) FROM requests").Scan(&total, &distinct); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(total, distinct), "3000 3000"; got != want {
		t.Errorf("through the Distributed table: got count, distinct %s, want %s", got, want)
	}

	// A column added to the local tables, then to the Distributed one, is
	// written and read through the Distributed table.
	for _, q := range []string{
		"ALTER TABLE requests_local ADD COLUMN region String DEFAULT 'none'",
		"ALTER TABLE requests ADD COLUMN region String DEFAULT 'none'",
	} {
		if err := c.ExecAll(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	b, err := conn.PrepareBatch(clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1})), "INSERT INTO requests (ts, n, region)")
	if err != nil {
		t.Fatal(err)
	}
	for i := 3000; i < 3100; i++ {
		if err := b.Append(time.Now().UTC(), uint64(i), "eu"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	var eu, none uint64
	if err := conn.QueryRow(ctx, "SELECT countIf(region = 'eu'), countIf(region = 'none') FROM requests").Scan(&eu, &none); err != nil {
		t.Fatal(err)
	}
	if eu != 100 || none != 3000 {
		t.Errorf("after ADD COLUMN: got %d rows eu and %d none, want 100 and 3000", eu, none)
	}
}
