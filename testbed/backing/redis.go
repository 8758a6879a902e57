package backing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// defaultRedisStartTimeout bounds how long a Redis server may take to answer
// PING after it was launched.
const defaultRedisStartTimeout = 15 * time.Second

// RedisOptions configures a standalone Redis server started by StartRedis.
// The zero value is a password-less server on a free port without
// persistence.
type RedisOptions struct {
	// Port is the TCP port on 127.0.0.1; 0 picks a free port (and retries
	// with another one if the server fails to bind).
	Port int
	// Username, when set together with Password, creates that ACL user with
	// all permissions and disables the "default" user.
	Username string
	// Password is the requirepass password (without Username) or the ACL
	// user's password (with Username).
	Password string
	// MaxMemory is the maxmemory setting, e.g. "2mb"; empty means no limit.
	MaxMemory string
	// MaxMemoryPolicy is the maxmemory-policy setting, e.g. "allkeys-lru".
	MaxMemoryPolicy string
	// AppendOnly enables the AOF so that data survives Kill and Restart.
	// Without it RDB snapshots are disabled and a restarted server is empty.
	AppendOnly bool
	// UnixSocket also serves on a Unix socket, SocketPath, beside the TCP
	// port.
	UnixSocket bool
	// Config holds extra redis.conf lines appended verbatim.
	Config []string
	// StartTimeout bounds the wait for PING after launch (default 15s).
	StartTimeout time.Duration
}

// Redis is one running redis-server (standalone, replica, cluster node) or
// redis-sentinel process. All methods are safe for concurrent use.
type Redis struct {
	kind     string // "redis", "sentinel" or "cluster node", for errors
	proc     *process
	dir      string
	conf     string
	ownDir   bool
	username string
	password string
	timeout  time.Duration

	mu     sync.Mutex
	port   int
	closed bool
}

// redisSpec describes how to launch one Redis-family process.
type redisSpec struct {
	op       string // operation name used in errors, e.g. "start redis"
	kind     string
	service  string // RedisServer or RedisSentinel
	dir      string // directory to use; "" creates an owned temporary one
	port     int    // 0 = free port with retries
	username string
	password string
	timeout  time.Duration
	config   func(dir string, port int) []string
}

// StartRedis starts a standalone redis-server bound to 127.0.0.1 in its own
// temporary directory and waits until it answers PING.
func StartRedis(opts RedisOptions) (*Redis, error) {
	const op = "start redis"
	if opts.Username != "" && opts.Password == "" {
		return nil, fmt.Errorf("%s: username %q needs a password", op, opts.Username)
	}
	return launchRedis(redisSpec{
		op:       op,
		kind:     "redis",
		service:  RedisServer,
		port:     opts.Port,
		username: opts.Username,
		password: opts.Password,
		timeout:  opts.StartTimeout,
		config: func(dir string, port int) []string {
			lines := redisBaseConfig(dir, port)
			lines = append(lines, redisAuthConfig(opts.Username, opts.Password)...)
			if opts.AppendOnly {
				lines = append(lines, "appendonly yes")
			} else {
				lines = append(lines, "appendonly no")
			}
			if opts.UnixSocket {
				lines = append(lines, "unixsocket "+quoteConf(filepath.Join(dir, redisSocketName)), "unixsocketperm 700")
			}
			if opts.MaxMemory != "" {
				lines = append(lines, "maxmemory "+opts.MaxMemory)
			}
			if opts.MaxMemoryPolicy != "" {
				lines = append(lines, "maxmemory-policy "+opts.MaxMemoryPolicy)
			}
			return append(lines, opts.Config...)
		},
	})
}

// redisBaseConfig returns the configuration lines shared by every data node.
func redisBaseConfig(dir string, port int) []string {
	return []string{
		"port " + strconv.Itoa(port),
		"bind 127.0.0.1",
		// Bound to loopback only; protected mode would only get in the
		// way of password-less replicas and sentinels.
		"protected-mode no",
		"daemonize no",
		"dir " + quoteConf(dir),
		"logfile " + quoteConf(filepath.Join(dir, "redis.log")),
		"loglevel notice",
		`save ""`,
		"replica-announce-ip 127.0.0.1",
		// Start full syncs at once instead of waiting 5s for more replicas.
		"repl-diskless-sync-delay 0",
	}
}

// redisAuthConfig returns the lines enabling password or ACL authentication.
func redisAuthConfig(username, password string) []string {
	switch {
	case password == "":
		return nil
	case username == "" || username == "default":
		return []string{"requirepass " + quoteConf(password)}
	default:
		return []string{
			"user default off",
			"user " + username + " on " + quoteConf(">"+password) + " ~* &* +@all",
		}
	}
}

// quoteConf quotes a redis.conf argument.
func quoteConf(s string) string { return strconv.Quote(s) }

// launchRedis creates the directory, writes the configuration and starts the
// process, retrying on a new port when the port was not fixed.
func launchRedis(spec redisSpec) (*Redis, error) {
	bin, err := binary(spec.op, spec.service)
	if err != nil {
		return nil, err
	}
	if spec.timeout <= 0 {
		spec.timeout = defaultRedisStartTimeout
	}
	dir, own := spec.dir, false
	if dir == "" {
		if dir, err = makeDir(spec.op, "backing-"+strings.ReplaceAll(spec.kind, " ", "-")+"-*"); err != nil {
			return nil, err
		}
		own = true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", spec.op, err)
	}
	conf := filepath.Join(dir, "redis.conf")
	logFile := filepath.Join(dir, "redis.log")
	r := &Redis{
		kind:     spec.kind,
		dir:      dir,
		conf:     conf,
		ownDir:   own,
		username: spec.username,
		password: spec.password,
		timeout:  spec.timeout,
		proc:     newProcess(spec.service, bin, dir, []string{conf}, logFile),
	}
	err = withPortRetry(spec.op, spec.port, func(port int) error {
		content := strings.Join(spec.config(dir, port), "\n") + "\n"
		if err := os.WriteFile(conf, []byte(content), 0o644); err != nil {
			return permanentError{fmt.Errorf("%s: %w", spec.op, err)}
		}
		_ = os.Remove(logFile)
		_ = os.Remove(r.proc.outFile)
		r.mu.Lock()
		r.port = port
		r.mu.Unlock()
		return r.startAndWait(spec.op)
	})
	if err != nil {
		if own {
			_ = removeDir(dir)
		}
		return nil, err
	}
	return r, nil
}

// launchAll launches the specs concurrently. The returned slice has one
// entry per spec, nil where the launch failed; the error joins all failures.
func launchAll(specs []redisSpec) ([]*Redis, error) {
	out := make([]*Redis, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i := range specs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out[i], errs[i] = launchRedis(specs[i])
		}(i)
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// startAndWait launches the process and waits until it answers PING.
func (r *Redis) startAndWait(op string) error {
	if err := r.proc.start(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := r.waitReady(); err != nil {
		_ = r.proc.kill()
		err = fmt.Errorf("%s: %s %s: %w%s", op, r.kind, r.Addr(), err, r.proc.logTail())
		var pe permanentError
		if errors.As(err, &pe) {
			return permanentError{err}
		}
		return err
	}
	return nil
}

// waitReady polls PING until it succeeds, the process exits or the start
// timeout expires.
func (r *Redis) waitReady() error {
	c := redis.NewClient(r.clientOptions(500*time.Millisecond, 1))
	defer c.Close()
	exited := r.proc.exited()
	deadline := time.Now().Add(r.timeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		last = err
		msg := err.Error()
		if strings.Contains(msg, "NOAUTH") || strings.Contains(msg, "WRONGPASS") {
			return permanentError{fmt.Errorf("authentication failed: %w", err)}
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited early (%s)", r.proc.exitStatus())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", r.timeout, last)
		}
	}
}

// clientOptions returns go-redis options for this server with the given
// timeout and pool size.
func (r *Redis) clientOptions(timeout time.Duration, pool int) *redis.Options {
	return &redis.Options{
		Addr:            r.Addr(),
		Username:        r.username,
		Password:        r.password,
		DialTimeout:     timeout,
		ReadTimeout:     timeout,
		WriteTimeout:    timeout,
		PoolSize:        pool,
		MaxRetries:      -1,
		DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
}

// Addr returns the server address, "127.0.0.1:port".
func (r *Redis) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port()))
}

// Port returns the server's TCP port.
func (r *Redis) Port() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.port
}

// Dir returns the server's directory (configuration, data and logs).
func (r *Redis) Dir() string { return r.dir }

// redisSocketName is the Unix socket's file in the server's directory.
const redisSocketName = "redis.sock"

// SocketPath is the Unix socket of a server started with
// RedisOptions.UnixSocket (in its directory; the file exists only then).
func (r *Redis) SocketPath() string { return filepath.Join(r.dir, redisSocketName) }

// Username returns the ACL user name clients must use ("" for none).
func (r *Redis) Username() string { return r.username }

// Password returns the password clients must use ("" for none).
func (r *Redis) Password() string { return r.password }

// PID returns the process id, or 0 when the server is not running.
func (r *Redis) PID() int { return r.proc.pid() }

// Running reports whether the server process is alive (possibly frozen).
func (r *Redis) Running() bool { return r.proc.running() }

// Frozen reports whether the server was frozen with Freeze and not thawed.
func (r *Redis) Frozen() bool { return r.proc.isFrozen() }

// LogTail returns the end of the server's log files, for diagnostics.
func (r *Redis) LogTail() string { return r.proc.logTail() }

// ClientOptions returns go-redis options (address and credentials, 2s
// timeouts) for connecting to this server.
func (r *Redis) ClientOptions() *redis.Options {
	o := r.clientOptions(2*time.Second, 10)
	o.MaxRetries = 0
	return o
}

// Client returns a new go-redis client for this server, built from
// ClientOptions. The caller must close it.
func (r *Redis) Client() *redis.Client { return redis.NewClient(r.ClientOptions()) }

// Kill sends SIGKILL to the server and waits until it has exited. Killing a
// server that is not running is a no-op.
func (r *Redis) Kill() error {
	if err := r.proc.kill(); err != nil {
		return fmt.Errorf("kill %s: %w", r.kind, err)
	}
	return nil
}

// Freeze stops the server with SIGSTOP: connections are still accepted by
// the kernel but nothing is answered until Thaw.
func (r *Redis) Freeze() error { return r.proc.freeze() }

// Thaw resumes a frozen server with SIGCONT.
func (r *Redis) Thaw() error { return r.proc.thaw() }

// Restart kills the server if it is running and starts it again on the same
// port with the same directory and configuration file (including any
// rewrites made by CONFIG REWRITE or Sentinel), then waits until it answers
// PING.
func (r *Redis) Restart() error {
	const op = "restart redis"
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return fmt.Errorf("%s: %s is closed", op, r.kind)
	}
	if err := r.proc.kill(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return r.startAndWait(op)
}

// Close kills the server (thawing it first if frozen) and removes its
// directory if it owns it. It is idempotent.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	err := r.proc.kill()
	if r.ownDir {
		if rerr := removeDir(r.dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", r.kind, err)
	}
	return nil
}

// do runs one command with a short timeout on a throw-away connection.
func (r *Redis) do(ctx context.Context, args ...any) (any, error) {
	c := redis.NewClient(r.clientOptions(2*time.Second, 1))
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

// info returns the fields of INFO section as a map.
func (r *Redis) info(ctx context.Context, section string) (map[string]string, error) {
	v, err := r.do(ctx, "INFO", section)
	if err != nil {
		return nil, err
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("info %s: unexpected reply %T", section, v)
	}
	return parseInfo(s), nil
}

// parseInfo parses "key:value" lines as returned by INFO and CLUSTER INFO.
func parseInfo(s string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}
