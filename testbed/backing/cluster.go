package backing

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// ClusterOptions configures a Redis Cluster started by StartCluster. The zero
// value gives three masters without replicas.
type ClusterOptions struct {
	// Masters is the number of masters (default 3, the minimum for
	// failure detection).
	Masters int
	// ReplicasPerMaster is the number of replicas of each master (default 0).
	ReplicasPerMaster int
	// NodeTimeout is cluster-node-timeout (default 2s).
	NodeTimeout time.Duration
	// Password protects every node (requirepass and masterauth).
	Password string
	// Config holds extra redis.conf lines for every node.
	Config []string
	// StartTimeout bounds the wait for each node and for cluster_state:ok
	// on every node (default 15s).
	StartTimeout time.Duration
}

// Cluster is a running Redis Cluster, each node in its own directory below
// one temporary directory. Node indexes are stable: masters first (in slot
// order), then the replicas. All methods are safe for concurrent use.
type Cluster struct {
	opts  ClusterOptions
	dir   string
	nodes []*Redis

	mu     sync.Mutex
	closed bool
}

// StartCluster starts the nodes on free 127.0.0.1 ports, assigns the slots
// evenly to the masters, joins the nodes with CLUSTER MEET, attaches the
// replicas, and waits until every node reports cluster_state:ok.
func StartCluster(opts ClusterOptions) (*Cluster, error) {
	const op = "start cluster"
	if opts.Masters <= 0 {
		opts.Masters = 3
	}
	if opts.ReplicasPerMaster < 0 {
		opts.ReplicasPerMaster = 0
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 2 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultRedisStartTimeout
	}
	if _, err := binary(op, RedisServer); err != nil {
		return nil, err
	}
	dir, err := makeDir(op, "backing-cluster-*")
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, dir: dir}
	if err := c.start(op); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// start launches the nodes concurrently and builds the cluster.
func (c *Cluster) start(op string) error {
	opts := c.opts
	total := opts.Masters * (1 + opts.ReplicasPerMaster)
	specs := make([]redisSpec, total)
	for i := range specs {
		specs[i] = redisSpec{
			op: op, kind: "cluster node", service: RedisServer,
			dir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i)), password: opts.Password,
			timeout: opts.StartTimeout,
			config: func(dir string, port int) []string {
				lines := redisBaseConfig(dir, port)
				lines = append(lines,
					"appendonly no",
					"cluster-enabled yes",
					"cluster-config-file nodes.conf",
					"cluster-node-timeout "+strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
					"cluster-announce-ip 127.0.0.1",
				)
				if opts.Password != "" {
					lines = append(lines,
						"requirepass "+quoteConf(opts.Password),
						"masterauth "+quoteConf(opts.Password))
				}
				return append(lines, opts.Config...)
			},
		}
	}
	started, err := launchAll(specs)
	// Keep only started nodes so that Close does not meet nil entries.
	for _, n := range started {
		if n != nil {
			c.nodes = append(c.nodes, n)
		}
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()
	if err := c.build(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// build assigns slots, meets the nodes and attaches replicas.
func (c *Cluster) build(ctx context.Context) error {
	m := c.opts.Masters
	for i, n := range c.nodes {
		// Distinct epochs avoid the epoch-collision dance at join time.
		if _, err := n.do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1); err != nil {
			return fmt.Errorf("set config epoch on %s: %w", n.Addr(), err)
		}
	}
	for i := 0; i < m; i++ {
		first, last := i*clusterSlots/m, (i+1)*clusterSlots/m-1
		if _, err := c.nodes[i].do(ctx, "CLUSTER", "ADDSLOTSRANGE", first, last); err != nil {
			return fmt.Errorf("add slots %d-%d on %s: %w", first, last, c.nodes[i].Addr(), err)
		}
	}
	for _, n := range c.nodes[1:] {
		if _, err := c.nodes[0].do(ctx, "CLUSTER", "MEET", "127.0.0.1", n.Port()); err != nil {
			return fmt.Errorf("meet %s: %w", n.Addr(), err)
		}
	}
	if err := c.waitFor(ctx, "all nodes known", func(n *Redis, info map[string]string) error {
		if got, want := info["cluster_known_nodes"], strconv.Itoa(len(c.nodes)); got != want {
			return fmt.Errorf("%s knows %s nodes, want %s", n.Addr(), got, want)
		}
		return nil
	}); err != nil {
		return err
	}
	for i := m; i < len(c.nodes); i++ {
		master := c.nodes[(i-m)%m]
		id, err := master.do(ctx, "CLUSTER", "MYID")
		if err != nil {
			return fmt.Errorf("cluster myid on %s: %w", master.Addr(), err)
		}
		if err := c.replicate(ctx, c.nodes[i], fmt.Sprint(id)); err != nil {
			return err
		}
	}
	return c.WaitHealthy(ctx)
}

// replicate makes n a replica of the master with the given id, retrying
// while n has not yet learned that the master is a master.
func (c *Cluster) replicate(ctx context.Context, n *Redis, id string) error {
	for {
		_, err := n.do(ctx, "CLUSTER", "REPLICATE", id)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster replicate on %s: %w", n.Addr(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitHealthy waits until every running, unfrozen node reports
// cluster_state:ok and knows all nodes, and every replica's link to its
// master is up.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	return c.waitFor(ctx, "cluster_state:ok", func(n *Redis, info map[string]string) error {
		if info["cluster_state"] != "ok" {
			return fmt.Errorf("%s: cluster_state %s", n.Addr(), info["cluster_state"])
		}
		if got, want := info["cluster_known_nodes"], strconv.Itoa(len(c.nodes)); got != want {
			return fmt.Errorf("%s knows %s nodes, want %s", n.Addr(), got, want)
		}
		rep, err := n.info(ctx, "replication")
		if err != nil {
			return err
		}
		if rep["role"] == "slave" && rep["master_link_status"] != "up" {
			return fmt.Errorf("%s: master_link_status %s", n.Addr(), rep["master_link_status"])
		}
		return nil
	})
}

// waitFor polls CLUSTER INFO on every running node until check passes on
// all of them.
func (c *Cluster) waitFor(ctx context.Context, what string, check func(*Redis, map[string]string) error) error {
	var last error
	for {
		last = nil
		for _, n := range c.nodes {
			if !n.Running() || n.Frozen() {
				continue
			}
			v, err := n.do(ctx, "CLUSTER", "INFO")
			if err == nil {
				err = check(n, parseInfo(fmt.Sprint(v)))
			}
			if err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addrs returns the addresses of all nodes in index order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Node returns node i (masters first, then replicas) for fault injection:
// Kill, Freeze, Thaw and Restart (which rejoins with its nodes.conf).
func (c *Cluster) Node(i int) *Redis { return c.nodes[i] }

// Nodes returns all nodes in index order.
func (c *Cluster) Nodes() []*Redis { return append([]*Redis(nil), c.nodes...) }

// Password returns the nodes' password ("" for none).
func (c *Cluster) Password() string { return c.opts.Password }

// ClientOptions returns go-redis options for a cluster client (2s
// timeouts).
func (c *Cluster) ClientOptions() *redis.ClusterOptions {
	return &redis.ClusterOptions{
		Addrs:           c.Addrs(),
		Password:        c.opts.Password,
		DialTimeout:     2 * time.Second,
		ReadTimeout:     2 * time.Second,
		WriteTimeout:    2 * time.Second,
		DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
}

// Client returns a new go-redis cluster client built from ClientOptions.
// The caller must close it.
func (c *Cluster) Client() *redis.ClusterClient { return redis.NewClusterClient(c.ClientOptions()) }

// Close kills every node and removes the cluster directory. It is
// idempotent.
func (c *Cluster) Close() error {
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
	errs = append(errs, removeDir(c.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cluster: %w", err)
	}
	return nil
}

// String describes the cluster, e.g. for logs.
func (c *Cluster) String() string {
	return "redis cluster " + strings.Join(c.Addrs(), ",")
}
