package backing

import "testing"

// closer is implemented by every service started by this package.
type closer interface{ Close() error }

// cleanup registers c.Close with t.Cleanup, reporting a failed close.
func cleanup(t testing.TB, what string, c closer) {
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// MustRedis starts a standalone Redis with StartRedis, registers Close with
// t.Cleanup and fails the test (never skips) on error.
func MustRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	r, err := StartRedis(opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "redis", r)
	return r
}

// MustSentinel starts a Sentinel group with StartSentinel, registers Close
// with t.Cleanup and fails the test (never skips) on error.
func MustSentinel(t testing.TB, opts SentinelOptions) *SentinelGroup {
	t.Helper()
	g, err := StartSentinel(opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "sentinel", g)
	return g
}

// MustCluster starts a Redis Cluster with StartCluster, registers Close with
// t.Cleanup and fails the test (never skips) on error.
func MustCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	c, err := StartCluster(opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "cluster", c)
	return c
}

// MustClickHouse starts a ClickHouse server with StartClickHouse, registers
// Close with t.Cleanup and fails the test (never skips) on error.
func MustClickHouse(t testing.TB, opts ClickHouseOptions) *ClickHouse {
	t.Helper()
	c, err := StartClickHouse(opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "clickhouse", c)
	return c
}

// MustProxy starts a Proxy in front of upstream with NewProxy, registers
// Close with t.Cleanup and fails the test on error.
func MustProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := NewProxy(upstream)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cleanup(t, "proxy", p)
	return p
}

// MustRequire fails the test (never skips) when a service binary is
// missing, naming the Debian packages to install.
func MustRequire(t testing.TB, names ...string) {
	t.Helper()
	if err := Require(names...); err != nil {
		t.Fatalf("%v", err)
	}
}
