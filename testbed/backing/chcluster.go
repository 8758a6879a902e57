package backing

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// DefaultClickHouseClusterName is the cluster name StartClickHouseCluster
// defines in remote_servers when the options name none.
const DefaultClickHouseClusterName = "edge_cluster"

// ClickHouseClusterOptions configures a sharded ClickHouse cluster started by
// StartClickHouseCluster. The zero value gives two instances, one shard
// each, in a cluster named "edge_cluster", without a password.
type ClickHouseClusterOptions struct {
	// Shards is the number of instances, one shard of one replica each
	// (default 2).
	Shards int
	// Name is the cluster's name in remote_servers (default
	// DefaultClickHouseClusterName).
	Name string
	// Password is the password of the "default" user on every instance;
	// the instances also use it to reach each other.
	Password string
	// Database, when set, is created on every instance.
	Database string
	// LogLevel is every instance's server log level (default "warning").
	LogLevel string
	// ExtraConfig is raw XML added to every instance's config.xml.
	ExtraConfig string
	// StartTimeout bounds the wait for each instance (default 30s).
	StartTimeout time.Duration
}

// ClickHouseCluster is a sharded cluster of clickhouse-server instances on
// 127.0.0.1, each in its own temporary directory, without ZooKeeper. Every
// instance's config.xml holds the same remote_servers entry: one shard per
// instance, each with the instance's native port as its only replica and
// internal_replication false (no replication: a Distributed table writes
// each row to exactly one shard). Each instance also defines the macros
// {cluster}, {shard} (01, 02, ...) and {replica} (node01, node02, ...).
//
// ON CLUSTER needs ZooKeeper (the distributed DDL queue), so DDL is run on
// every instance in turn with ExecAll, which is what ON CLUSTER amounts to.
// Instances are killed, frozen and restarted through Node. All methods are
// safe for concurrent use.
type ClickHouseCluster struct {
	name  string
	nodes []*ClickHouse

	mu     sync.Mutex
	closed bool
}

// StartClickHouseCluster picks a free native port per instance, writes each
// instance's config (remote_servers over all of the ports, its macros) and
// starts the instances. When one fails to start (typically a lost port
// race), all are stopped and the cluster is tried again with new ports, up
// to three times.
func StartClickHouseCluster(opts ClickHouseClusterOptions) (*ClickHouseCluster, error) {
	const op = "start clickhouse cluster"
	if opts.Shards <= 0 {
		opts.Shards = 2
	}
	if opts.Name == "" {
		opts.Name = DefaultClickHouseClusterName
	}
	if _, err := binary(op, ClickHouseServer); err != nil {
		return nil, err
	}
	var errs []error
	for attempt := 0; attempt < startAttempts; attempt++ {
		c, err := startClickHouseCluster(opts)
		if err == nil {
			return c, nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s: %w", op, pe.err)
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%s: %d attempts failed: %w", op, len(errs), errors.Join(errs...))
}

// startClickHouseCluster is one attempt with one set of ports.
func startClickHouseCluster(opts ClickHouseClusterOptions) (*ClickHouseCluster, error) {
	ports := make([]int, opts.Shards)
	seen := map[int]bool{}
	for i := range ports {
		for {
			p, err := FreePort()
			if err != nil {
				return nil, permanentError{err}
			}
			if !seen[p] {
				seen[p] = true
				ports[i] = p
				break
			}
		}
	}
	c := &ClickHouseCluster{name: opts.Name}
	for i, port := range ports {
		n, err := StartClickHouse(ClickHouseOptions{
			Port:         port,
			Password:     opts.Password,
			Database:     opts.Database,
			LogLevel:     opts.LogLevel,
			ExtraConfig:  clusterConfig(opts.Name, opts.Password, ports, i) + opts.ExtraConfig,
			StartTimeout: opts.StartTimeout,
		})
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("instance %d of %d: %w", i+1, len(ports), err)
		}
		c.nodes = append(c.nodes, n)
	}
	return c, nil
}

// clusterConfig is the remote_servers and macros XML of instance self.
func clusterConfig(name, password string, ports []int, self int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "    <remote_servers>\n        <%s>\n", name)
	for _, p := range ports {
		fmt.Fprintf(&b, `            <shard>
                <internal_replication>false</internal_replication>
                <replica>
                    <host>127.0.0.1</host>
                    <port>%d</port>
                    <user>default</user>
                    <password>%s</password>
                </replica>
            </shard>
`, p, xmlText(password))
	}
	fmt.Fprintf(&b, "        </%s>\n    </remote_servers>\n", name)
	fmt.Fprintf(&b, "    <macros>\n        <cluster>%s</cluster>\n        <shard>%02d</shard>\n        <replica>node%02d</replica>\n    </macros>\n",
		name, self+1, self+1)
	return b.String()
}

// Name returns the cluster's name in remote_servers.
func (c *ClickHouseCluster) Name() string { return c.name }

// Nodes returns the instances, in shard order (shard 01 first).
func (c *ClickHouseCluster) Nodes() []*ClickHouse { return append([]*ClickHouse(nil), c.nodes...) }

// Node returns instance i (0-based; shard i+1).
func (c *ClickHouseCluster) Node(i int) *ClickHouse { return c.nodes[i] }

// Addrs returns the instances' native addresses, in shard order.
func (c *ClickHouseCluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.NativeAddr()
	}
	return out
}

// ExecAll runs one statement on every instance in shard order, stopping at
// the first error: the ZooKeeper-free stand-in for ON CLUSTER.
func (c *ClickHouseCluster) ExecAll(ctx context.Context, query string) error {
	for i, n := range c.nodes {
		if err := n.Exec(ctx, query); err != nil {
			return fmt.Errorf("clickhouse cluster exec on instance %d: %w", i+1, err)
		}
	}
	return nil
}

// FlushDistributed makes every instance send the rows its Distributed table
// still queues for other shards, and waits until they are sent. table is
// the Distributed table, "name" (in the instance's database) or "db.name".
// Every instance must be up, or this waits until ctx ends.
//
// It runs SYSTEM FLUSH DISTRIBUTED; ClickHouse 18.16 does not know that
// statement, so there it waits instead until the table's queue directories
// (data/<db>/<table>/<shard>/, one N.bin file per queued insert, sent every
// distributed_directory_monitor_sleep_time_ms) hold no file.
func (c *ClickHouseCluster) FlushDistributed(ctx context.Context, table string) error {
	for i, n := range c.nodes {
		err := n.Exec(ctx, "SYSTEM FLUSH DISTRIBUTED "+table)
		var ex *clickhouse.Exception
		if errors.As(err, &ex) && ex.Code == 62 { // SYNTAX_ERROR: before 19
			err = n.waitDistributedQueue(ctx, table)
		}
		if err != nil {
			return fmt.Errorf("clickhouse cluster flush distributed on instance %d: %w", i+1, err)
		}
	}
	return nil
}

// waitDistributedQueue polls the queue directories of a Distributed table
// until they hold no .bin file.
func (c *ClickHouse) waitDistributedQueue(ctx context.Context, table string) error {
	db, name := c.Database(), table
	if i := strings.IndexByte(table, '.'); i >= 0 {
		db, name = table[:i], table[i+1:]
	}
	dir := filepath.Join(c.dir, "data", "data", escapeFileName(db), escapeFileName(name))
	for {
		n, err := queuedFiles(dir)
		if err != nil {
			return fmt.Errorf("wait for the distributed queue of %s: %w", table, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the distributed queue of %s: %d inserts still queued: %w", table, n, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// queuedFiles counts the .bin files in the shard directories of a
// Distributed table's data directory (their tmp/ subdirectories excluded).
func queuedFiles(dir string) (int, error) {
	shards, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // nothing was ever queued
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range shards {
		if !s.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, s.Name()))
		if err != nil {
			return 0, err
		}
		for _, f := range files {
			if !f.IsDir() && strings.HasSuffix(f.Name(), ".bin") {
				n++
			}
		}
	}
	return n, nil
}

// escapeFileName is ClickHouse's file name of an identifier: letters,
// digits and '_' kept, every other byte as %XX.
func escapeFileName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch == '_' || ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// Counts returns SELECT count() FROM table on every instance, in shard
// order (table is used verbatim: name the local table to count each shard).
func (c *ClickHouseCluster) Counts(ctx context.Context, table string) ([]uint64, error) {
	out := make([]uint64, len(c.nodes))
	for i, n := range c.nodes {
		v, err := n.Count(ctx, table)
		if err != nil {
			return nil, fmt.Errorf("clickhouse cluster count on instance %d: %w", i+1, err)
		}
		out[i] = v
	}
	return out, nil
}

// Close stops every instance and removes their directories. It is
// idempotent.
func (c *ClickHouseCluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close clickhouse cluster: %w", err)
	}
	return nil
}

// MustClickHouseCluster starts a cluster with StartClickHouseCluster,
// registers Close with t.Cleanup and fails the test (never skips) on error.
func MustClickHouseCluster(t testing.TB, opts ClickHouseClusterOptions) *ClickHouseCluster {
	t.Helper()
	c, err := StartClickHouseCluster(opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "clickhouse cluster", c)
	return c
}
