package backing

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// defaultClickHouseStartTimeout bounds how long clickhouse-server may take to
// answer a native ping after launch.
const defaultClickHouseStartTimeout = 30 * time.Second

// ClickHouseOptions configures a clickhouse-server started by
// StartClickHouse. The zero value is a password-less "default" user on a
// free native port.
type ClickHouseOptions struct {
	// Port is the native TCP port on 127.0.0.1; 0 picks a free port (and
	// retries with another one if the server fails to start).
	Port int
	// Password is the password of the "default" user ("" for none).
	Password string
	// Database, when set, is created at start (CREATE DATABASE IF NOT
	// EXISTS) and used by ClientOptions and Conn.
	Database string
	// LogLevel is the server log level written to the log files in the
	// directory (default "warning"; "information", "debug" and "trace" are
	// more verbose).
	LogLevel string
	// ExtraConfig is raw XML inserted into the <yandex> element of
	// config.xml, e.g. "<max_concurrent_queries>20</max_concurrent_queries>".
	ExtraConfig string
	// StartTimeout bounds the wait for a native ping (default 30s).
	StartTimeout time.Duration
}

// ClickHouse is one running clickhouse-server. It is addressed only through
// the native protocol (no HTTP or interserver port is opened). All methods
// are safe for concurrent use.
//
// ClickHouse 18.16 (Debian's package) predates many features: name the
// columns in batch inserts (PrepareBatch("INSERT INTO t (a, b)")), do not use
// Exec("INSERT ... VALUES"), and avoid DateTime64, Map, LowCardinality and
// TTL.
type ClickHouse struct {
	opts    ClickHouseOptions
	proc    *process
	dir     string
	conf    string
	version string

	mu     sync.Mutex
	port   int
	closed bool
}

// StartClickHouse generates config.xml and users.xml in a new temporary
// directory, starts clickhouse-server bound to 127.0.0.1 and waits until a
// native ping succeeds.
func StartClickHouse(opts ClickHouseOptions) (*ClickHouse, error) {
	const op = "start clickhouse"
	bin, err := binary(op, ClickHouseServer)
	if err != nil {
		return nil, err
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warning"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultClickHouseStartTimeout
	}
	dir, err := makeDir(op, "backing-clickhouse-*")
	if err != nil {
		return nil, err
	}
	c := &ClickHouse{opts: opts, dir: dir, conf: filepath.Join(dir, "config.xml")}
	c.proc = newProcess("clickhouse-server", bin, dir,
		[]string{"--config-file=" + c.conf},
		filepath.Join(dir, "clickhouse-server.err.log"), filepath.Join(dir, "clickhouse-server.log"))
	err = withPortRetry(op, opts.Port, func(port int) error {
		if err := c.writeConfig(port); err != nil {
			return permanentError{fmt.Errorf("%s: %w", op, err)}
		}
		for _, f := range c.proc.logs {
			_ = os.Remove(f)
		}
		c.mu.Lock()
		c.port = port
		c.mu.Unlock()
		return c.startAndWait(op)
	})
	if err == nil && opts.Database != "" {
		err = c.createDatabase(op)
	}
	if err != nil {
		_ = c.proc.kill()
		_ = removeDir(dir)
		return nil, err
	}
	return c, nil
}

// createDatabase creates opts.Database through the "default" database.
func (c *ClickHouse) createDatabase(op string) error {
	o := c.ClientOptions()
	o.Auth.Database = "default"
	conn, err := clickhouse.Open(o)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(c.opts.Database)); err != nil {
		return fmt.Errorf("%s: create database %s: %w", op, c.opts.Database, err)
	}
	return nil
}

// quoteIdent back-quotes a ClickHouse identifier.
func quoteIdent(s string) string {
	var b bytes.Buffer
	b.WriteByte('`')
	for _, r := range s {
		if r == '`' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('`')
	return b.String()
}

// xmlText escapes s for use as XML character data.
func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// writeConfig writes config.xml and users.xml for the given native port.
//
// Notes for 18.16: the binary only accepts --config-file=PATH (or -C PATH),
// not --help/--version; omitting http_port and interserver_http_port leaves
// those listeners closed; paths must end with a slash; users_config is
// resolved relative to config.xml; preprocessed copies of both files are
// written to <path>/preprocessed_configs/.
func (c *ClickHouse) writeConfig(port int) error {
	d := func(sub string) string { return xmlText(filepath.Join(c.dir, sub) + "/") }
	config := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <logger>
        <level>%s</level>
        <log>%s</log>
        <errorlog>%s</errorlog>
        <size>10M</size>
        <count>1</count>
        <console>0</console>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <listen_try>0</listen_try>
    <tcp_port>%d</tcp_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>16777216</uncompressed_cache_size>
    <mark_cache_size>16777216</mark_cache_size>
    <path>%s</path>
    <tmp_path>%s</tmp_path>
    <user_files_path>%s</user_files_path>
    <format_schema_path>%s</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <umask>022</umask>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
%s
</yandex>
`, xmlText(c.opts.LogLevel),
		xmlText(filepath.Join(c.dir, "clickhouse-server.log")),
		xmlText(filepath.Join(c.dir, "clickhouse-server.err.log")),
		port, d("data"), d("tmp"), d("user_files"), d("format_schemas"), c.opts.ExtraConfig)
	users := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>1000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password>%s</password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
`, xmlText(c.opts.Password))
	if err := os.WriteFile(c.conf, []byte(config), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "users.xml"), []byte(users), 0o644)
}

// startAndWait launches the server and waits for a native ping.
func (c *ClickHouse) startAndWait(op string) error {
	if err := c.proc.start(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := c.waitReady(); err != nil {
		_ = c.proc.kill()
		return fmt.Errorf("%s: %s: %w%s", op, c.NativeAddr(), err, c.proc.logTail())
	}
	return nil
}

// waitReady polls a native ping until it succeeds, the process exits or the
// start timeout expires, then records the server version.
func (c *ClickHouse) waitReady() error {
	o := c.ClientOptions()
	o.Auth.Database = "default"
	o.DialTimeout = 500 * time.Millisecond
	o.MaxOpenConns, o.MaxIdleConns = 1, 1
	exited := c.proc.exited()
	deadline := time.Now().Add(c.opts.StartTimeout)
	var last error
	for {
		conn, err := clickhouse.Open(o)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err = conn.Ping(ctx)
			if err == nil {
				var v string
				if err = conn.QueryRow(ctx, "SELECT version()").Scan(&v); err == nil {
					c.mu.Lock()
					c.version = v
					c.mu.Unlock()
				}
			}
			cancel()
			conn.Close()
			if err == nil {
				return nil
			}
			var ex *clickhouse.Exception
			if errors.As(err, &ex) {
				// The server answered with an error (e.g. bad
				// password): waiting will not help.
				return permanentError{fmt.Errorf("ping: %w", err)}
			}
		}
		last = err
		select {
		case <-exited:
			return fmt.Errorf("process exited early (%s)", c.proc.exitStatus())
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", c.opts.StartTimeout, last)
		}
	}
}

// NativeAddr returns the native-protocol address, "127.0.0.1:port".
func (c *ClickHouse) NativeAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port()))
}

// Port returns the native TCP port.
func (c *ClickHouse) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Dir returns the server directory (configuration, data and logs).
func (c *ClickHouse) Dir() string { return c.dir }

// Password returns the password of the "default" user.
func (c *ClickHouse) Password() string { return c.opts.Password }

// Database returns the database used by ClientOptions ("default" unless
// ClickHouseOptions.Database was set).
func (c *ClickHouse) Database() string {
	if c.opts.Database != "" {
		return c.opts.Database
	}
	return "default"
}

// Version returns the server version reported at the last (re)start, e.g.
// "18.16.1".
func (c *ClickHouse) Version() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// PID returns the process id, or 0 when the server is not running.
func (c *ClickHouse) PID() int { return c.proc.pid() }

// Running reports whether the server process is alive (possibly frozen).
func (c *ClickHouse) Running() bool { return c.proc.running() }

// LogTail returns the end of the server's log files, for diagnostics.
func (c *ClickHouse) LogTail() string { return c.proc.logTail() }

// ClientOptions returns clickhouse-go options for the native protocol with
// the "default" user (5s dial timeout).
func (c *ClickHouse) ClientOptions() *clickhouse.Options {
	return &clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{c.NativeAddr()},
		Auth: clickhouse.Auth{
			Database: c.Database(),
			Username: "default",
			Password: c.opts.Password,
		},
		DialTimeout: 5 * time.Second,
	}
}

// Conn opens a new clickhouse-go connection (pool) built from
// ClientOptions. The caller must close it.
func (c *ClickHouse) Conn() (driver.Conn, error) {
	conn, err := clickhouse.Open(c.ClientOptions())
	if err != nil {
		return nil, fmt.Errorf("clickhouse conn: %w", err)
	}
	return conn, nil
}

// connFor opens a connection whose dial and handshake timeout does not
// exceed ctx's deadline: clickhouse-go bounds the handshake with DialTimeout
// only, not with the context.
func (c *ClickHouse) connFor(ctx context.Context) (driver.Conn, error) {
	o := c.ClientOptions()
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < o.DialTimeout {
			o.DialTimeout = max(d, time.Millisecond)
		}
	}
	return clickhouse.Open(o)
}

// Exec runs one statement (DDL or similar) on a throw-away connection. Do
// not use it for INSERT ... VALUES on 18.16; use a batch instead.
func (c *ClickHouse) Exec(ctx context.Context, query string, args ...any) error {
	conn, err := c.connFor(ctx)
	if err != nil {
		return fmt.Errorf("clickhouse exec: %w", err)
	}
	defer conn.Close()
	if err := conn.Exec(ctx, query, args...); err != nil {
		return fmt.Errorf("clickhouse exec: %w", err)
	}
	return nil
}

// Count returns SELECT count() FROM table (table is used verbatim and may
// be qualified, e.g. "db.t").
func (c *ClickHouse) Count(ctx context.Context, table string) (uint64, error) {
	conn, err := c.connFor(ctx)
	if err != nil {
		return 0, fmt.Errorf("clickhouse count: %w", err)
	}
	defer conn.Close()
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+table).Scan(&n); err != nil {
		return 0, fmt.Errorf("clickhouse count %s: %w", table, err)
	}
	return n, nil
}

// Kill sends SIGKILL to the server and waits until it has exited. Killing a
// server that is not running is a no-op.
func (c *ClickHouse) Kill() error {
	if err := c.proc.kill(); err != nil {
		return fmt.Errorf("kill clickhouse: %w", err)
	}
	return nil
}

// Freeze stops the server with SIGSTOP: connections are still accepted by
// the kernel but nothing is answered until Thaw.
func (c *ClickHouse) Freeze() error { return c.proc.freeze() }

// Thaw resumes a frozen server with SIGCONT.
func (c *ClickHouse) Thaw() error { return c.proc.thaw() }

// Restart kills the server if it is running and starts it again on the same
// port with the same configuration and data directory (data written before
// the kill is kept), then waits for a native ping.
func (c *ClickHouse) Restart() error {
	const op = "restart clickhouse"
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return fmt.Errorf("%s: closed", op)
	}
	if err := c.proc.kill(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return c.startAndWait(op)
}

// Close kills the server (thawing it first if frozen) and removes its
// directory. It is idempotent.
func (c *ClickHouse) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := errors.Join(c.proc.kill(), removeDir(c.dir))
	if err != nil {
		return fmt.Errorf("close clickhouse: %w", err)
	}
	return nil
}
