package ratelimit

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// TestUnixSocket: with addrs ["unix:/path"], every transport decides over
// the socket (the server's TCP port is closed by the test, so nothing else
// could answer); a killed Redis fails the decision open, degraded, and
// decisions are Redis' again after a restart.
func TestUnixSocket(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pipeline  bool
		multiplex bool
	}{
		{"multiplexed", true, true},
		{"worker_pipelines", true, false},
		{"no_pipeline", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rd := backing.MustRedis(t, backing.RedisOptions{UnixSocket: true})
			// Only the socket: a TCP dial would fail and show up as
			// degraded decisions, never as a pass.
			tcp := rd.Client()
			defer tcp.Close()
			if _, err := tcp.ConfigSet(t.Context(), "port", "0").Result(); err != nil {
				t.Fatalf("closing the TCP port: %v", err)
			}
			if c, err := net.DialTimeout("tcp", rd.Addr(), time.Second); err == nil {
				c.Close()
				t.Fatal("Redis still accepts TCP connections")
			}
			// the test's clock: a window boundary of the wall clock would
			// reset the aligned windows between two decisions
			e := newEnv(t, redisCfg(t, "unix:"+rd.SocketPath(), func(r *Config) {
				r.Timeout = core.Duration(time.Second)
				r.Pipeline = &tc.pipeline
				r.Multiplex = &tc.multiplex
			}), WithClock(newClock().now))
			if got := e.rl.batch != nil && e.rl.batch.mux != nil; got != tc.multiplex {
				t.Fatalf("got multiplexed %v, want %v", got, tc.multiplex)
			}
			startAndSync(t, e)
			for _, spec := range []string{
				`{"limit":3,"window":"1m"}`,
				`{"limit":3,"window":"1m","algorithm":"fixed_window"}`,
				`{"limit":3,"window":"1m","algorithm":"sliding_window"}`,
			} {
				c := mustConf(t, spec)
				for i := 1; i <= 4; i++ {
					res := e.do(c, newReq("192.0.2.7"))
					wantStatus, wantRemaining := 0, strconv.Itoa(3-i)
					if i == 4 {
						wantStatus, wantRemaining = 429, "0"
					}
					if res.status != wantStatus || res.hdr.Get(hdrStatus) != "" || res.hdr.Get(hdrRemaining) != wantRemaining {
						t.Fatalf("%s, decision %d: got status %d, %s %q, remaining %q; want %d decided by Redis, remaining %s",
							spec, i, res.status, hdrStatus, res.hdr.Get(hdrStatus), res.hdr.Get(hdrRemaining), wantStatus, wantRemaining)
					}
				}
			}
			c := mustConf(t, `{"limit":100,"window":"1m","algorithm":"fixed_window"}`)
			if err := rd.Kill(); err != nil {
				t.Fatal(err)
			}
			if res := e.do(c, newReq("192.0.2.8")); res.status != 0 || res.hdr.Get(hdrStatus) != "degraded" {
				t.Fatalf("Redis killed: got status %d, %s %q; want the request through, degraded", res.status, hdrStatus, res.hdr.Get(hdrStatus))
			}
			if err := rd.Restart(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "decisions by Redis over the socket again", func() bool {
				res := e.do(c, newReq("192.0.2.8"))
				return res.status == 0 && res.hdr.Get(hdrStatus) == ""
			})
		})
	}
}

// TestUnixSocketConfig: a Unix socket is an absolute path, in standalone
// mode, without TLS; each mistake names its field.
func TestUnixSocketConfig(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr string // "" = valid
		network string // of a valid config
	}{
		{"standalone socket", func(c *Config) { c.Addrs = []string{"unix:" + sock} }, "", "unix"},
		{"tcp stays tcp", func(c *Config) { c.Addrs = []string{"127.0.0.1:6379"} }, "", "tcp"},
		{"relative path", func(c *Config) { c.Addrs = []string{"unix:redis.sock"} },
			`redis.addrs[0]: a Unix socket must be an absolute path (unix:/path/to/redis.sock), got "unix:redis.sock"`, ""},
		{"path too long", func(c *Config) { c.Addrs = []string{"unix:/" + strings.Repeat("s", 107)} },
			"redis.addrs[0]: a Unix socket path must be at most 107 bytes (the kernel's limit), got 108", ""},
		{"with tls", func(c *Config) { c.Addrs = []string{"unix:" + sock}; c.TLS.Enabled = true },
			"redis.tls.enabled: must be false with a Unix socket address", ""},
		{"sentinel", func(c *Config) {
			c.Mode, c.MasterName, c.Addrs = "sentinel", "m", []string{"127.0.0.1:26379", "unix:" + sock}
		}, `redis.addrs[1]: a Unix socket is only allowed in standalone mode, got "unix:` + sock + `" in sentinel mode`, ""},
		{"cluster", func(c *Config) { c.Mode, c.Addrs = "cluster", []string{"unix:" + sock} },
			"redis.addrs[0]: a Unix socket is only allowed in standalone mode", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			tc.edit(&c)
			c.ApplyDefaults()
			err := errors.Join(c.Validate()...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if tc.wantErr == "" {
				if network, _ := c.Dial(); network != tc.network {
					t.Fatalf("got network %q, want %q", network, tc.network)
				}
			}
		})
	}
}
