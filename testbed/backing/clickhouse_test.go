package backing

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

const createRequests = `CREATE TABLE IF NOT EXISTS requests (
    ts DateTime,
    route String,
    status UInt16,
    latency_ms Float64
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (route, ts)`

// insertRequests batch-inserts n rows, naming the columns as 18.16 needs.
func insertRequests(ctx context.Context, t *testing.T, ch *ClickHouse, n int) {
	t.Helper()
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO requests (ts, route, status, latency_ms)")
	if err != nil {
		t.Fatalf("prepare batch: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i := 0; i < n; i++ {
		if err := batch.Append(now.Add(-time.Duration(i)*time.Hour), "/r", uint16(200), float64(i)); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send batch: %v", err)
	}
}

func TestClickHouse(t *testing.T) {
	t.Parallel()
	start := time.Now()
	ch := MustClickHouse(t, ClickHouseOptions{Password: "pw", Database: "edge"})
	t.Logf("clickhouse %s started in %v on %s", ch.Version(), time.Since(start), ch.NativeAddr())
	if !strings.HasPrefix(ch.Version(), "18.16") {
		t.Logf("note: server version %q is not 18.16", ch.Version())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if err := ch.Exec(ctx, createRequests); err != nil {
		t.Fatal(err)
	}
	insertRequests(ctx, t, ch, 100)
	if n, err := ch.Count(ctx, "requests"); err != nil || n != 100 {
		t.Fatalf("count = %d, %v; want 100", n, err)
	}

	// Kill and restart: same port, data kept.
	addr := ch.NativeAddr()
	if err := ch.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Count(ctx, "requests"); err == nil {
		t.Fatal("count on a killed server succeeded")
	}
	start = time.Now()
	if err := ch.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("clickhouse restarted in %v", time.Since(start))
	if ch.NativeAddr() != addr {
		t.Fatalf("address changed on restart: %s -> %s", addr, ch.NativeAddr())
	}
	if n, err := ch.Count(ctx, "requests"); err != nil || n != 100 {
		t.Fatalf("count after restart = %d, %v; want 100", n, err)
	}
	insertRequests(ctx, t, ch, 10)

	// Freeze: a query with a short deadline fails, both on an established
	// connection and on a new one; Thaw heals.
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ch.Freeze(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	var n uint64
	err = conn.QueryRow(short, "SELECT count() FROM requests").Scan(&n)
	cancelShort()
	if err == nil {
		t.Fatal("query on a frozen server succeeded")
	}
	t.Logf("frozen, established connection: %v", err)
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = ch.Count(short, "requests")
	cancelShort()
	if err == nil {
		t.Fatal("count on a frozen server succeeded")
	}
	t.Logf("frozen, new connection: %v", err)
	if err := ch.Thaw(); err != nil {
		t.Fatal(err)
	}
	if n, err := ch.Count(ctx, "requests"); err != nil || n != 110 {
		t.Fatalf("count after thaw = %d, %v; want 110", n, err)
	}

	// Close while frozen.
	if err := ch.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(ch.Dir()); !os.IsNotExist(err) {
		t.Fatalf("dir %s still exists after Close", ch.Dir())
	}
}

func TestClickHouseWrongPassword(t *testing.T) {
	t.Parallel()
	ch := MustClickHouse(t, ClickHouseOptions{Password: "right"})
	o := ch.ClientOptions()
	o.Auth.Password = "wrong"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := openCH(o)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("ping with a wrong password succeeded")
	}
}

func TestClickHouseFixedPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	start := time.Now()
	_, err = StartClickHouse(ClickHouseOptions{Port: port, StartTimeout: 10 * time.Second})
	if err == nil {
		t.Fatal("StartClickHouse on a busy port succeeded")
	}
	if !strings.Contains(err.Error(), "start clickhouse") || !strings.Contains(err.Error(), "tail of") {
		t.Fatalf("error lacks operation or log tail: %v", err)
	}
	t.Logf("expected error after %v: %v", time.Since(start), err)
}
