package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	schemaFile        = "../../conf/clickhouse-schema.sql"
	clusterSchemaFile = "../../conf/clickhouse-cluster-schema.sql"
)

// sqlStatements returns the statements of a DDL file, comments removed
// (no string literal in these files holds "--" or ";").
func sqlStatements(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		lines = append(lines, line)
	}
	var out []string
	for _, s := range strings.Split(strings.Join(lines, "\n"), ";") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

var spaces = regexp.MustCompile(`\s+`)

// columnDefs returns the column definitions of the CREATE TABLE of table in
// path, whitespace normalized: "name type [DEFAULT expr]".
func columnDefs(t testing.TB, path, table string) []string {
	t.Helper()
	for _, st := range sqlStatements(t, path) {
		head, _, _ := strings.Cut(st, "(")
		if !strings.HasPrefix(head, "CREATE TABLE") || !strings.Contains(head, "`"+table+"`") {
			continue
		}
		body := st[len(head)+1:]
		var defs []string
		depth, from := 0, 0
		for i, r := range body {
			switch r {
			case '(':
				depth++
			case ')':
				if depth == 0 {
					defs = append(defs, body[from:i])
					for j := range defs {
						defs[j] = strings.TrimSpace(spaces.ReplaceAllString(defs[j], " "))
					}
					return defs
				}
				depth--
			case ',':
				if depth == 0 {
					defs = append(defs, body[from:i])
					from = i + 1
				}
			}
		}
	}
	t.Fatalf("%s: no CREATE TABLE of %s with a column list", path, table)
	return nil
}

// TestClusterSchemaColumns: the cluster DDL's local table has exactly the
// columns, types and defaults of conf/clickhouse-schema.sql, in the same
// order, and the Distributed table takes them from it.
func TestClusterSchemaColumns(t *testing.T) {
	t.Parallel()
	single := columnDefs(t, schemaFile, "edge_access_log")
	local := columnDefs(t, clusterSchemaFile, "edge_access_log_local")
	if got, want := strings.Join(local, "\n"), strings.Join(single, "\n"); got != want {
		t.Errorf("%s columns:\n%s\nwant those of %s:\n%s", clusterSchemaFile, got, schemaFile, want)
	}
	if len(single) < 16 {
		t.Errorf("got %d columns in %s, want at least the 16 of the post-resp row", len(single), schemaFile)
	}
	var dist string
	for _, st := range sqlStatements(t, clusterSchemaFile) {
		if strings.Contains(st, "ENGINE = Distributed") {
			dist = spaces.ReplaceAllString(st, " ")
		}
	}
	if !strings.Contains(dist, "AS `default`.`edge_access_log_local`") {
		t.Errorf("got Distributed statement %q, want it to take its columns AS the local table", dist)
	}
}

// clusterTables creates the tables of conf/clickhouse-cluster-schema.sql on
// every instance. ON CLUSTER needs ZooKeeper, which the test bed does not
// run: each statement is first run as shipped on instance 1, where 18.16
// must parse it (any error but a syntax error), then without its ON CLUSTER
// clause on every instance, which is what ON CLUSTER does.
func clusterTables(t testing.TB, c *backing.ClickHouseCluster) {
	t.Helper()
	ctx := context.Background()
	for _, st := range sqlStatements(t, clusterSchemaFile) {
		if !strings.Contains(st, " ON CLUSTER edge_cluster") {
			t.Fatalf("statement without ON CLUSTER edge_cluster: %s", st)
		}
		err := c.Node(0).Exec(ctx, st)
		var ex *clickhouse.Exception
		if err == nil || !errors.As(err, &ex) || ex.Code == 62 {
			t.Fatalf("shipped statement on %s without ZooKeeper: got %v, want it parsed and refused for the missing distributed DDL queue", c.Node(0).Version(), err)
		}
		if err := c.ExecAll(ctx, strings.Replace(st, " ON CLUSTER edge_cluster", "", 1)); err != nil {
			t.Fatal(err)
		}
	}
}

// insertCounts reads apisix_edge_log_inserts_total from reg: by addr, then
// result.
func insertCounts(t testing.TB, reg *prometheus.Registry) map[string]map[string]int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() != "apisix_edge_log_inserts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var addr, result string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "addr":
					addr = lp.GetValue()
				case "result":
					result = lp.GetValue()
				}
			}
			if out[addr] == nil {
				out[addr] = map[string]int{}
			}
			out[addr][result] = int(m.GetCounter().GetValue())
		}
	}
	return out
}

// checkClusterRows flushes the Distributed queues and checks that the
// shards hold want rows in all, every request id once.
func checkClusterRows(t testing.TB, c *backing.ClickHouseCluster, want int) {
	t.Helper()
	// A bound against a hang only: 18.16 resends a queue with a backoff
	// after a shard was down.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.FlushDistributed(ctx, "edge_access_log"); err != nil {
		t.Fatal(err)
	}
	counts, err := c.Counts(ctx, "edge_access_log_local")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rows per shard: %v", counts)
	var sum uint64
	for i, n := range counts {
		if n == 0 {
			t.Errorf("shard %d: got no rows, want part of the %d", i+1, want)
		}
		sum += n
	}
	if sum != uint64(want) {
		t.Errorf("got %d rows on the shards, want %d", sum, want)
	}
	conn, err := c.Node(1).Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var total, distinct uint64
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(request_id) FROM edge_access_log").Scan(&total, &distinct); err != nil {
		t.Fatal(err)
	}
	if total != uint64(want) || distinct != uint64(want) {
		t.Errorf("through the Distributed table: got %d rows, %d distinct request ids, want %d of each (none lost, none twice)", total, distinct, want)
	}
}

// waitUntil polls cond until it holds, without a deadline of its own (the
// test binary's -timeout ends a hang): on this shared 2-core machine an
// insert may take seconds.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 1; !cond(); i++ {
		if i%3000 == 0 { // about a minute
			t.Logf("still waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func clusterLogger(t testing.TB, c *backing.ClickHouseCluster, extra string) (*Logger, *prometheus.Registry) {
	t.Helper()
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q, %q]\n  batch_size: 100\n  flush_interval: 20ms\n", c.Node(0).NativeAddr(), c.Node(1).NativeAddr())+extra)
	return newTestLogger(t, cfg)
}

// TestClusterInsertThroughDistributed: with both instances in addrs, the
// logger inserts through the Distributed table of the shipped cluster DDL;
// the batches alternate between the instances, the rows spread over both
// shards, and every row is there once.
func TestClusterInsertThroughDistributed(t *testing.T) {
	t.Parallel()
	backing.MustRequire(t, backing.ClickHouseServer)
	c := backing.MustClickHouseCluster(t, backing.ClickHouseClusterOptions{})
	clusterTables(t, c)
	l, reg := clusterLogger(t, c, "")
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	const n = 3000
	for i := range n {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitUntil(t, "rows inserted", func() bool { return l.Snapshot().Inserted == n })
	shutdown(t, l)
	if s := checkIdentity(t, l); s.Inserted != n || s.QueueRows != 0 {
		t.Errorf("got %+v, want %d inserted", s, n)
	}
	ins := insertCounts(t, reg)
	a, b := ins[c.Node(0).NativeAddr()], ins[c.Node(1).NativeAddr()]
	t.Logf("inserts per server: %v", ins)
	if a["ok"] == 0 || b["ok"] == 0 || a["ok"]-b["ok"] > 1 || b["ok"]-a["ok"] > 1 || a["error"]+b["error"] != 0 {
		t.Errorf("got inserts %v and %v, want them alternating (ok counts within one), no error", a, b)
	}
	checkClusterRows(t, c, n)
}

// produce sends rows [from, from+n) in rounds of 100, each after the queue
// emptied: many batches while the test injects its fault.
func produce(t testing.TB, l *Logger, conf any, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
		if (i-from)%100 == 99 {
			waitUntil(t, "queue drained", func() bool { return l.Snapshot().QueueRows == 0 })
		}
	}
}

// TestClusterFailoverKill: instance 1 is killed under load just before a
// batch is sent to it: that batch and every later one go to instance 2,
// nothing is dropped, the accounting is exact, /status names the server
// down; once instance 1 is back it is pinged (the state recovers without
// traffic) and takes batches again, and after the Distributed queues are
// flushed the shards hold every row once.
func TestClusterFailoverKill(t *testing.T) {
	t.Parallel()
	backing.MustRequire(t, backing.ClickHouseServer)
	c := backing.MustClickHouseCluster(t, backing.ClickHouseClusterOptions{})
	clusterTables(t, c)
	// Generous timeouts: the kill fails inserts at once, and a slow answer
	// on this loaded machine must not look like a failure.
	l, reg := clusterLogger(t, c, "  dial_timeout: 5s\n  read_timeout: 30s\n  retries: {max_attempts: 3, backoff: 10ms, max_backoff: 100ms}\n")
	victim := c.Node(0)
	addrA := victim.NativeAddr()
	var toA atomic.Int32
	var killed sync.WaitGroup
	killed.Add(1)
	l.fl.beforeInsert = func(addr string) {
		if addr == addrA && toA.Add(1) == 5 { // the fifth batch for instance 1
			// Not while an instance forwards its Distributed queue: a block
			// received by the killed instance but not yet acknowledged is
			// sent again later (at least once), which is ClickHouse's
			// duplicate, not the logger's (see the doc).
			if err := c.FlushDistributed(context.Background(), "edge_access_log"); err != nil {
				t.Error(err)
			}
			if err := victim.Kill(); err != nil {
				t.Error(err)
			}
			killed.Done()
		}
	}
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	const first = 3000
	produce(t, l, conf, 0, first)
	killed.Wait()
	waitUntil(t, "rows inserted", func() bool { return l.Snapshot().Inserted == first })
	s := checkIdentity(t, l)
	if s.Inserted != first || s.QueueRows != 0 {
		t.Errorf("got %+v, want all %d inserted through instance 2", s, first)
	}
	ins := insertCounts(t, reg)
	t.Logf("inserts per server while instance 1 is down: %v", ins)
	if ins[addrA]["error"] == 0 || ins[addrA]["ok"] != 4 {
		t.Errorf("instance 1: got %v, want 4 batches, then a failure", ins[addrA])
	}
	if got := l.backend.State(); got != core.StateDegraded {
		t.Errorf("got backend %s with one of two servers down, want degraded", got)
	}
	waitUntil(t, "/status naming the server down", func() bool { // refreshed every flush_interval
		return fmt.Sprint(l.deps.Status.Snapshot().Backends[BackendName].Detail["servers_down"]) == fmt.Sprint([]string{addrA})
	})

	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	// Without traffic: the background ping finds it, the state recovers.
	waitUntil(t, "backend ok again without traffic", func() bool { return l.backend.State() == core.StateOK })
	okA := ins[addrA]["ok"]
	next := first
	for insertCounts(t, reg)[addrA]["ok"] == okA {
		produce(t, l, conf, next, 100)
		next += 100
	}
	waitUntil(t, "rows inserted", func() bool { return l.Snapshot().Inserted == uint64(next) })
	shutdown(t, l)
	s = checkIdentity(t, l)
	if s.Inserted != uint64(next) || s.Spooled != 0 {
		t.Errorf("got %+v, want all %d inserted, none dropped", s, next)
	}
	if got := l.backend.State(); got != core.StateOK {
		t.Errorf("got backend %s after instance 1 came back, want ok", got)
	}
	t.Logf("inserts per server at the end: %v (%d rows)", insertCounts(t, reg), next)
	checkClusterRows(t, c, next)
}

// TestServerOrder: the servers a batch tries, in order, from their health.
// No server is dialed: order only reads the health records.
func TestServerOrder(t *testing.T) {
	t.Parallel()
	now := time.Unix(1700000000, 0)
	netErr := errors.New("dial tcp: connection refused")
	refusal := fmt.Errorf("insert: %w", &clickhouse.Exception{Code: 241, Message: "memory limit"})
	type health struct {
		err   error
		until time.Time
	}
	up := health{}
	downFor := func(err error, d time.Duration) health { return health{err, now.Add(d)} }
	for _, tc := range []struct {
		name   string
		next   int
		health []health
		want   string
	}{
		{"all up, from the cursor", 1, []health{up, up, up}, "b c a"},
		{"a down: skipped", 0, []health{downFor(netErr, time.Second), up, up}, "b c"},
		{"all down: all, from the cursor", 2, []health{downFor(netErr, time.Second), downFor(netErr, time.Second), downFor(refusal, time.Second)}, "c a b"},
		{"period over, answered: tried again", 0, []health{downFor(refusal, -time.Second), up, up}, "a b c"},
		{"period over, unanswered: pinged first", 0, []health{downFor(netErr, -time.Second), up, up}, "b c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &chClient{cfg: Config{DialTimeout: core.Duration(100 * time.Millisecond)}, next: tc.next, life: context.Background()}
			for i, h := range tc.health {
				// Port 1 refuses: the ping of a server due for one fails.
				conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{"127.0.0.1:1"}, DialTimeout: 100 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				s := &server{addr: string(rune('a' + i)), index: i, conn: conn, err: h.err, until: h.until}
				var ex *clickhouse.Exception
				s.answered = errors.As(h.err, &ex)
				c.servers = append(c.servers, s)
			}
			var got []string
			for _, s := range c.order(now) {
				got = append(got, s.addr)
			}
			c.probes.Wait()
			pinged := 0
			for i, s := range c.servers {
				if !s.until.Equal(tc.health[i].until) {
					pinged++ // failed its ping: a new down period
				}
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("got order %q, want %q", strings.Join(got, " "), tc.want)
			}
			if want := strings.Count(tc.name, "pinged"); pinged != want {
				t.Errorf("got %d servers pinged, want %d", pinged, want)
			}
		})
	}
}

// TestClusterFailoverFreeze: instance 1 is frozen (SIGSTOP) at an arbitrary
// moment under load. One batch pays for it (read_timeout or dial_timeout,
// then instance 2 takes it); later batches skip the frozen instance while
// it is pinged in the background, so it counts exactly one failed insert.
// Every row is inserted, the accounting is exact; once the instance is
// thawed and the queues sent, no row is missing from the shards.
//
// The instance is thawed, not killed: 18.16 sets aside as broken (in the
// queue's broken/ directory, never sent) a queued block whose send was cut
// by the receiver's death, a ClickHouse loss the doc describes. A batch the
// frozen instance had received whole before the freeze is stored by it when
// it resumes, besides the copy the flusher sent to instance 2: at most one
// batch twice (at least once, see the doc).
func TestClusterFailoverFreeze(t *testing.T) {
	t.Parallel()
	backing.MustRequire(t, backing.ClickHouseServer)
	c := backing.MustClickHouseCluster(t, backing.ClickHouseClusterOptions{})
	clusterTables(t, c)
	const batch = 100
	// The frozen instance costs one batch read_timeout (or dial_timeout);
	// long enough that a slow answer on this loaded machine is not taken
	// for a failure.
	l, reg := clusterLogger(t, c, "  dial_timeout: 3s\n  read_timeout: 5s\n  retries: {max_attempts: 3, backoff: 10ms, max_backoff: 100ms}\n")
	victim := c.Node(0)
	addrA := victim.NativeAddr()
	l.Start(context.Background())
	conf, _ := l.ParseConf([]byte(`{}`))
	produce(t, l, conf, 0, 1000)
	for i := 1000; i < 1150; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	if err := victim.Freeze(); err != nil { // the flusher may be sending
		t.Fatal(err)
	}
	const n = 3000
	produce(t, l, conf, 1150, n-1150)
	waitUntil(t, "rows inserted", func() bool { return l.Snapshot().Inserted == n })
	ins := insertCounts(t, reg)
	t.Logf("inserts per server, instance 1 frozen: %v", ins)
	if got := ins[addrA]["error"]; got != 1 {
		t.Errorf("frozen instance: got %d failed inserts, want 1 (later batches skip it)", got)
	}
	if s := checkIdentity(t, l); s.Inserted != n || s.QueueRows != 0 {
		t.Errorf("got %+v, want all %d inserted", s, n)
	}
	shutdown(t, l)
	if err := victim.Thaw(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // against a hang only
	defer cancel()
	if err := c.FlushDistributed(ctx, "edge_access_log"); err != nil {
		t.Fatal(err)
	}
	conn, err := c.Node(1).Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var total, distinct uint64
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(request_id) FROM edge_access_log").Scan(&total, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("after the thaw: %d rows, %d distinct request ids (%d stored twice)", total, distinct, total-distinct)
	if distinct != n {
		t.Errorf("got %d distinct request ids on the shards, want all %d", distinct, n)
	}
	if total-distinct > batch {
		t.Errorf("got %d rows stored twice, want at most one batch (%d)", total-distinct, batch)
	}
}

// TestClusterRefusal: an instance that refuses the rows (its Distributed
// table is missing) makes the batch fail over to the other one: nothing
// dropped, the backend degraded. When both refuse, a batch is dropped
// (insert_failed) after both were tried, not retried max_attempts times.
func TestClusterRefusal(t *testing.T) {
	t.Parallel()
	backing.MustRequire(t, backing.ClickHouseServer)
	c := backing.MustClickHouseCluster(t, backing.ClickHouseClusterOptions{})
	clusterTables(t, c)
	ctx := context.Background()
	if err := c.Node(1).Exec(ctx, "DROP TABLE edge_access_log"); err != nil {
		t.Fatal(err)
	}
	l, reg := clusterLogger(t, c, "  dial_timeout: 5s\n  read_timeout: 30s\n  retries: {max_attempts: 5, backoff: 10ms, max_backoff: 100ms}\n")
	addrA, addrB := c.Node(0).NativeAddr(), c.Node(1).NativeAddr()
	l.Start(context.Background())
	defer shutdown(t, l)
	conf, _ := l.ParseConf([]byte(`{}`))
	const n = 1000
	produce(t, l, conf, 0, n)
	waitUntil(t, "rows inserted", func() bool { return l.Snapshot().Inserted == n })
	ins := insertCounts(t, reg)
	t.Logf("inserts per server, instance 2 refusing: %v", ins)
	if ins[addrB]["error"] == 0 || ins[addrB]["ok"] != 0 || ins[addrA]["error"] != 0 {
		t.Errorf("got %v, want instance 2 refusing every batch it got, instance 1 taking them all", ins)
	}
	if got := l.backend.State(); got != core.StateDegraded {
		t.Errorf("got backend %s, want degraded", got)
	}
	snap := l.deps.Status.Snapshot().Backends[BackendName]
	if !strings.Contains(snap.LastError, addrB) || !strings.Contains(snap.LastError, "edge_access_log") {
		t.Errorf("got last error %q, want it to name instance 2 and the table", snap.LastError)
	}

	if err := c.Node(0).Exec(ctx, "DROP TABLE edge_access_log"); err != nil {
		t.Fatal(err)
	}
	before := insertCounts(t, reg)
	for i := n; i < n+100; i++ {
		l.ResponseFilter(conf, newTestResponse(i))
	}
	waitUntil(t, "the refused batch dropped", func() bool { return l.Snapshot().Dropped[reasonInsertFailed] == 100 })
	after := insertCounts(t, reg)
	t.Logf("inserts per server, both refusing: %v", after)
	if got := after[addrA]["error"] - before[addrA]["error"]; got < 1 {
		t.Errorf("instance 1: got %d more failed inserts, want at least 1", got)
	}
	if got := after[addrB]["error"] - before[addrB]["error"]; got < 1 {
		t.Errorf("instance 2: got %d more failed inserts, want at least 1 (tried before the batch is dropped)", got)
	}
	if s := checkIdentity(t, l); s.Inserted != n {
		t.Errorf("got %+v, want %d inserted, 100 dropped", s, n)
	}
}

// BenchmarkClusterInsert: batches of 10000 rows through the client, in the
// same run: into one instance's local table, and round robin over both
// instances into the Distributed table (asynchronous: the receiving
// instance queues the other shard's half).
func BenchmarkClusterInsert(b *testing.B) {
	backing.MustRequire(b, backing.ClickHouseServer)
	c := backing.MustClickHouseCluster(b, backing.ClickHouseClusterOptions{})
	clusterTables(b, c)
	for _, bc := range []struct {
		name, table string
		addrs       []string
	}{
		{"local-1-server", "edge_access_log_local", c.Addrs()[:1]},
		{"distributed-2-servers", "edge_access_log", c.Addrs()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig(b, fmt.Sprintf("  addrs: [%s]\n", `"`+strings.Join(bc.addrs, `", "`)+`"`))
			cl, err := newClient(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer cl.close()
			rows := testRows(cfg.BatchSize, time.Now().UnixMilli(), "bench")
			ctx := context.Background()
			if err := cl.insert(ctx, bc.table, rows); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			start := time.Now()
			n := 0
			for b.Loop() {
				if err := cl.insert(ctx, bc.table, rows); err != nil {
					b.Fatal(err)
				}
				n += len(rows)
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "rows/s")
		})
	}
}
