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
)

// SentinelOptions configures a Sentinel group started by StartSentinel.
// The zero value gives a master, one replica and three sentinels with
// timeouts short enough for a failover to complete in a few seconds.
type SentinelOptions struct {
	// MasterName is the name the sentinels monitor (default "mymaster").
	MasterName string
	// Replicas is the number of replicas of the master (default 1).
	Replicas int
	// Sentinels is the number of sentinels (default 3).
	Sentinels int
	// Quorum is the sentinel quorum (default: a majority of Sentinels).
	Quorum int
	// Password protects the master and replicas (requirepass and
	// masterauth); the sentinels are told it with auth-pass. The sentinels
	// themselves have no password.
	Password string
	// DownAfter is down-after-milliseconds (default 1s).
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout (default 3s).
	FailoverTimeout time.Duration
	// Config holds extra redis.conf lines for the master and replicas.
	Config []string
	// StartTimeout bounds the wait for each process and for the group to be
	// fully discovered by every sentinel (default 15s).
	StartTimeout time.Duration
}

// SentinelGroup is a running master, its replicas and the sentinels
// monitoring them, each process in its own directory below one temporary
// directory. All methods are safe for concurrent use.
type SentinelGroup struct {
	opts      SentinelOptions
	dir       string
	nodes     []*Redis // master first, then replicas, in start order
	sentinels []*Redis

	mu     sync.Mutex
	closed bool
}

// StartSentinel starts a master, its replicas and the sentinels on free
// 127.0.0.1 ports, and waits until every replica is in sync and every
// sentinel knows every replica and every other sentinel.
func StartSentinel(opts SentinelOptions) (*SentinelGroup, error) {
	const op = "start sentinel"
	if opts.MasterName == "" {
		opts.MasterName = "mymaster"
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.Sentinels <= 0 {
		opts.Sentinels = 3
	}
	if opts.Quorum <= 0 {
		opts.Quorum = opts.Sentinels/2 + 1
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = time.Second
	}
	if opts.FailoverTimeout <= 0 {
		opts.FailoverTimeout = 3 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultRedisStartTimeout
	}
	if err := Require(RedisServer, RedisSentinel); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	dir, err := makeDir(op, "backing-sentinel-*")
	if err != nil {
		return nil, err
	}
	g := &SentinelGroup{opts: opts, dir: dir}
	if err := g.start(op); err != nil {
		_ = g.Close()
		return nil, err
	}
	return g, nil
}

// start launches every process and waits for discovery.
func (g *SentinelGroup) start(op string) error {
	opts := g.opts
	dataConfig := func(replicaOf int) func(string, int) []string {
		return func(dir string, port int) []string {
			lines := redisBaseConfig(dir, port)
			lines = append(lines, "appendonly no")
			if opts.Password != "" {
				lines = append(lines,
					"requirepass "+quoteConf(opts.Password),
					"masterauth "+quoteConf(opts.Password))
			}
			if replicaOf != 0 {
				lines = append(lines, "replicaof 127.0.0.1 "+strconv.Itoa(replicaOf))
			}
			return append(lines, opts.Config...)
		}
	}
	master, err := launchRedis(redisSpec{
		op: op, kind: "sentinel master", service: RedisServer,
		dir: filepath.Join(g.dir, "node-0"), password: opts.Password,
		timeout: opts.StartTimeout, config: dataConfig(0),
	})
	if err != nil {
		return err
	}
	g.nodes = append(g.nodes, master)
	// Replicas and sentinels only need the master's port: start them all
	// at once.
	var specs []redisSpec
	for i := 1; i <= opts.Replicas; i++ {
		specs = append(specs, redisSpec{
			op: op, kind: "sentinel replica", service: RedisServer,
			dir: filepath.Join(g.dir, fmt.Sprintf("node-%d", i)), password: opts.Password,
			timeout: opts.StartTimeout, config: dataConfig(master.Port()),
		})
	}
	for i := 0; i < opts.Sentinels; i++ {
		specs = append(specs, redisSpec{
			op: op, kind: "sentinel", service: RedisSentinel,
			dir: filepath.Join(g.dir, fmt.Sprintf("sentinel-%d", i)), timeout: opts.StartTimeout,
			config: func(dir string, port int) []string {
				name := opts.MasterName
				lines := []string{
					"port " + strconv.Itoa(port),
					"bind 127.0.0.1",
					"protected-mode no",
					"daemonize no",
					"dir " + quoteConf(dir),
					"logfile " + quoteConf(filepath.Join(dir, "redis.log")),
					"sentinel resolve-hostnames no",
					"sentinel announce-ip 127.0.0.1",
					fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d", name, master.Port(), opts.Quorum),
					fmt.Sprintf("sentinel down-after-milliseconds %s %d", name, opts.DownAfter.Milliseconds()),
					fmt.Sprintf("sentinel failover-timeout %s %d", name, opts.FailoverTimeout.Milliseconds()),
					fmt.Sprintf("sentinel parallel-syncs %s 1", name),
				}
				if opts.Password != "" {
					lines = append(lines, fmt.Sprintf("sentinel auth-pass %s %s", name, quoteConf(opts.Password)))
				}
				return lines
			},
		})
	}
	started, err := launchAll(specs)
	for i, r := range started {
		switch {
		case r == nil:
		case i < opts.Replicas:
			g.nodes = append(g.nodes, r)
		default:
			g.sentinels = append(g.sentinels, r)
		}
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()
	if err := g.waitDiscovered(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// waitDiscovered waits until the replicas are in sync and every sentinel
// sees the master, every replica and every other sentinel.
func (g *SentinelGroup) waitDiscovered(ctx context.Context) error {
	var last error
	for {
		last = g.discovered(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sentinel discovery: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// discovered returns nil when the group is fully discovered, or why not.
func (g *SentinelGroup) discovered(ctx context.Context) error {
	for _, n := range g.nodes[1:] {
		info, err := n.info(ctx, "replication")
		if err != nil {
			return fmt.Errorf("replica %s: %w", n.Addr(), err)
		}
		if info["master_link_status"] != "up" {
			return fmt.Errorf("replica %s: master_link_status %q", n.Addr(), info["master_link_status"])
		}
	}
	for _, s := range g.sentinels {
		m, err := s.do(ctx, "SENTINEL", "MASTER", g.opts.MasterName)
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr(), err)
		}
		fields := replyMap(m)
		if got, want := fields["num-slaves"], strconv.Itoa(g.opts.Replicas); got != want {
			return fmt.Errorf("sentinel %s: num-slaves %s, want %s", s.Addr(), got, want)
		}
		if got, want := fields["num-other-sentinels"], strconv.Itoa(g.opts.Sentinels-1); got != want {
			return fmt.Errorf("sentinel %s: num-other-sentinels %s, want %s", s.Addr(), got, want)
		}
		reps, err := s.do(ctx, "SENTINEL", "REPLICAS", g.opts.MasterName)
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr(), err)
		}
		list, _ := reps.([]any)
		for _, r := range list {
			f := replyMap(r)
			if f["flags"] != "slave" || f["master-link-status"] != "ok" {
				return fmt.Errorf("sentinel %s: replica %s:%s flags %q link %q",
					s.Addr(), f["ip"], f["port"], f["flags"], f["master-link-status"])
			}
		}
	}
	return nil
}

// replyMap turns a flat [k1 v1 k2 v2 ...] array or a RESP3 map reply into a
// map of strings.
func replyMap(v any) map[string]string {
	m := make(map[string]string)
	switch t := v.(type) {
	case []any:
		for i := 0; i+1 < len(t); i += 2 {
			m[fmt.Sprint(t[i])] = fmt.Sprint(t[i+1])
		}
	case map[any]any:
		for k, val := range t {
			m[fmt.Sprint(k)] = fmt.Sprint(val)
		}
	case map[string]any:
		for k, val := range t {
			m[k] = fmt.Sprint(val)
		}
	}
	return m
}

// MasterName returns the name the sentinels monitor.
func (g *SentinelGroup) MasterName() string { return g.opts.MasterName }

// Password returns the password of the master and replicas ("" for none).
func (g *SentinelGroup) Password() string { return g.opts.Password }

// SentinelAddrs returns the addresses of the sentinels.
func (g *SentinelGroup) SentinelAddrs() []string {
	addrs := make([]string, len(g.sentinels))
	for i, s := range g.sentinels {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Sentinels returns the sentinel processes, for fault injection.
func (g *SentinelGroup) Sentinels() []*Redis { return append([]*Redis(nil), g.sentinels...) }

// Nodes returns the data nodes: the initial master first, then the replicas.
// Roles change with failovers; use Master to find the current master.
func (g *SentinelGroup) Nodes() []*Redis { return append([]*Redis(nil), g.nodes...) }

// Node returns the data node listening on addr, or nil.
func (g *SentinelGroup) Node(addr string) *Redis {
	for _, n := range g.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// MasterAddr asks the sentinels (the first one that answers) for the
// current master address.
func (g *SentinelGroup) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, s := range g.sentinels {
		addr, err := g.askMaster(ctx, s)
		if err == nil {
			return addr, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("master addr: %w", errors.Join(errs...))
}

// askMaster asks one sentinel for the master address.
func (g *SentinelGroup) askMaster(ctx context.Context, s *Redis) (string, error) {
	if s.Frozen() || !s.Running() {
		return "", fmt.Errorf("sentinel %s is not available", s.Addr())
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	v, err := s.do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", g.opts.MasterName)
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", s.Addr(), err)
	}
	hp, ok := v.([]any)
	if !ok || len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s: unexpected reply %v", s.Addr(), v)
	}
	return fmt.Sprintf("%v:%v", hp[0], hp[1]), nil
}

// Master returns the data node that the sentinels currently report as
// master.
func (g *SentinelGroup) Master(ctx context.Context) (*Redis, error) {
	addr, err := g.MasterAddr(ctx)
	if err != nil {
		return nil, err
	}
	n := g.Node(addr)
	if n == nil {
		return nil, fmt.Errorf("master: sentinels report unknown master %s", addr)
	}
	return n, nil
}

// KillMaster SIGKILLs the current master and returns its address. The
// sentinels then fail over after DownAfter; use WaitNewMaster.
func (g *SentinelGroup) KillMaster(ctx context.Context) (string, error) {
	m, err := g.Master(ctx)
	if err != nil {
		return "", fmt.Errorf("kill master: %w", err)
	}
	if err := m.Kill(); err != nil {
		return "", fmt.Errorf("kill master: %w", err)
	}
	return m.Addr(), nil
}

// Failover forces a failover with SENTINEL FAILOVER (no agreement needed)
// and returns the address of the master before the failover. It retries
// while the sentinel has no good replica yet or another failover is in
// progress, until ctx is done.
func (g *SentinelGroup) Failover(ctx context.Context) (string, error) {
	old, err := g.MasterAddr(ctx)
	if err != nil {
		return "", fmt.Errorf("failover: %w", err)
	}
	for {
		var errs []error
		for _, s := range g.sentinels {
			if s.Frozen() || !s.Running() {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := s.do(cctx, "SENTINEL", "FAILOVER", g.opts.MasterName)
			cancel()
			if err == nil {
				return old, nil
			}
			errs = append(errs, fmt.Errorf("sentinel %s: %w", s.Addr(), err))
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("failover: %w: %w", ctx.Err(), errors.Join(errs...))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitNewMaster waits until every answering sentinel (at least a majority)
// reports a master other than old and that node reports role:master, and
// returns its address.
func (g *SentinelGroup) WaitNewMaster(ctx context.Context, old string) (string, error) {
	var last error
	for {
		addr, err := g.newMaster(ctx, old)
		if err == nil {
			return addr, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait new master: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// newMaster checks once whether the sentinels agree on a new master.
func (g *SentinelGroup) newMaster(ctx context.Context, old string) (string, error) {
	seen := ""
	answered := 0
	for _, s := range g.sentinels {
		addr, err := g.askMaster(ctx, s)
		if err != nil {
			continue
		}
		answered++
		if addr == old {
			return "", fmt.Errorf("sentinel %s still reports %s", s.Addr(), old)
		}
		if seen != "" && addr != seen {
			return "", fmt.Errorf("sentinels disagree: %s and %s", seen, addr)
		}
		seen = addr
	}
	if answered <= len(g.sentinels)/2 {
		return "", fmt.Errorf("only %d of %d sentinels answered", answered, len(g.sentinels))
	}
	n := g.Node(seen)
	if n == nil {
		return "", fmt.Errorf("sentinels report unknown master %s", seen)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := n.info(cctx, "replication")
	if err != nil {
		return "", fmt.Errorf("new master %s: %w", seen, err)
	}
	if info["role"] != "master" {
		return "", fmt.Errorf("new master %s: role %q", seen, info["role"])
	}
	return seen, nil
}

// FailoverOptions returns go-redis options for a Sentinel-aware client of
// this group (2s timeouts).
func (g *SentinelGroup) FailoverOptions() *redis.FailoverOptions {
	return &redis.FailoverOptions{
		MasterName:      g.opts.MasterName,
		SentinelAddrs:   g.SentinelAddrs(),
		Password:        g.opts.Password,
		DialTimeout:     2 * time.Second,
		ReadTimeout:     2 * time.Second,
		WriteTimeout:    2 * time.Second,
		DisableIdentity: true,
	}
}

// FailoverClient returns a new go-redis Sentinel-aware client built from
// FailoverOptions. The caller must close it.
func (g *SentinelGroup) FailoverClient() *redis.Client {
	return redis.NewFailoverClient(g.FailoverOptions())
}

// Close kills every process of the group and removes its directory. It is
// idempotent.
func (g *SentinelGroup) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	var errs []error
	for _, s := range g.sentinels {
		errs = append(errs, s.Close())
	}
	for _, n := range g.nodes {
		errs = append(errs, n.Close())
	}
	errs = append(errs, removeDir(g.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close sentinel: %w", err)
	}
	return nil
}

// String describes the group, e.g. for logs.
func (g *SentinelGroup) String() string {
	nodes := make([]string, len(g.nodes))
	for i, n := range g.nodes {
		nodes[i] = n.Addr()
	}
	return fmt.Sprintf("sentinel group %s: nodes %s, sentinels %s", g.opts.MasterName,
		strings.Join(nodes, ","), strings.Join(g.SentinelAddrs(), ","))
}
