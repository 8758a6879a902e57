package config

import (
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		env     map[string]string
		wantErr string // substring; empty means success
		check   func(*Config) string
	}{
		{name: "empty document gets defaults", doc: "", check: func(c *Config) string {
			if c.Log.Level != "warn" || c.Admin.Listen != "127.0.0.1:9542" || c.ShutdownTimeout.D() != 3*time.Second {
				return "defaults not applied"
			}
			return ""
		}},
		{name: "unknown key is named", doc: "log:\n  levle: warn\n", wantErr: "levle: unknown key"},
		{name: "unknown key gives the file's line", doc: "# comment\n\nlog:\n  level: warn\n  levle: warn\n", wantErr: "log.levle: unknown key (line 5)"},
		{name: "unknown top-level key", doc: "redis_typo: {}\n", wantErr: "redis_typo: unknown key"},
		{name: "bad duration", doc: "shutdown_timeout: 5\n", wantErr: "duration"},
		{name: "drain not below shutdown", doc: "shutdown_timeout: 1s\ndrain_timeout: 1s\n", wantErr: "drain_timeout: must be > 0 and below shutdown_timeout (1s), got 1s"},
		{name: "drain default", doc: "", check: func(c *Config) string {
			if got := c.DrainTimeout.D(); got != 300*time.Millisecond {
				return fmt.Sprintf("drain_timeout: got %v, want 300ms", got)
			}
			return ""
		}},
		{name: "bad level", doc: "log:\n  level: loud\n", wantErr: "log.level: must be one of"},
		{name: "runtime defaults", doc: "", check: func(c *Config) string {
			if c.Runtime.GCPercent != 400 || c.Runtime.MemoryLimit != 1<<30 {
				return fmt.Sprintf("runtime: got gc_percent %d memory_limit %d, want 400 1073741824", c.Runtime.GCPercent, c.Runtime.MemoryLimit)
			}
			return ""
		}},
		{name: "gc_percent below -1", doc: "runtime:\n  gc_percent: -5\n", wantErr: "runtime.gc_percent: must be -1 (off) or between 1 and 10000, got -5"},
		{name: "memory_limit too small", doc: "runtime:\n  memory_limit: 1000\n", wantErr: "runtime.memory_limit: must be -1 (none) or at least 67108864 (64 MiB), got 1000"},
		{name: "max_procs negative", doc: "runtime:\n  max_procs: -1\n", wantErr: "runtime.max_procs: must be 0 (Go's choice) or between 1 and 1024, got -1"},
		{name: "max_procs too many", doc: "runtime:\n  max_procs: 5000\n", wantErr: "runtime.max_procs: must be 0 (Go's choice) or between 1 and 1024, got 5000"},
		{name: "max_procs default is Go's", doc: "", check: func(c *Config) string {
			if c.Runtime.MaxProcs != 0 {
				return fmt.Sprintf("runtime.max_procs: got %d, want 0", c.Runtime.MaxProcs)
			}
			return ""
		}},
		{name: "collector off without a limit", doc: "runtime:\n  gc_percent: -1\n  memory_limit: -1\n", wantErr: "runtime.gc_percent: -1 (off) needs a runtime.memory_limit"},
		{name: "collector off under a limit", doc: "runtime:\n  gc_percent: -1\n  memory_limit: 536870912\n", check: func(c *Config) string {
			if c.Runtime.GCPercent != -1 || c.Runtime.MemoryLimit != 512<<20 {
				return fmt.Sprintf("runtime: got %+v", c.Runtime)
			}
			return ""
		}},
		{name: "bad admin", doc: "admin:\n  listen: nope\n", wantErr: "admin.listen: must be host:port"},
		{name: "ingest on the admin port", doc: "admin:\n  listen: 127.0.0.1:9543\n", wantErr: `clickhouse.ingest.listen: must differ from admin.listen, got "127.0.0.1:9543" for both`},
		{name: "env expansion", doc: "admin:\n  listen: ${ADDR}\n", env: map[string]string{"ADDR": "127.0.0.1:1"}, check: func(c *Config) string {
			if c.Admin.Listen != "127.0.0.1:1" {
				return "got " + c.Admin.Listen
			}
			return ""
		}},
		{name: "env default", doc: "log:\n  level: ${LVL:-error}\n", check: func(c *Config) string {
			if c.Log.Level != "error" {
				return "got " + c.Log.Level
			}
			return ""
		}},
		{name: "unset env is an error naming it", doc: "admin:\n  listen: ${NOPE}\n", wantErr: "admin.listen: environment variable NOPE is not set"},
		{name: "expanded value with YAML specials stays a string", doc: "log:\n  level: ${LVL}\n", env: map[string]string{"LVL": "# not a comment"}, wantErr: "log.level: must be one of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.doc), env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if tt.check != nil {
				if msg := tt.check(c); msg != "" {
					t.Fatal(msg)
				}
			}
		})
	}
}

// TestRuntimeApply: the fields set the collector and the number of
// threads, unless GOGC, GOMEMLIMIT or GOMAXPROCS is in the environment.
// procs 0 in a row leaves the threads as they were (here 3, set before each
// row, a value no field of the rows uses).
func TestRuntimeApply(t *testing.T) {
	prevGC := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	prevProcs := runtime.GOMAXPROCS(0)
	defer func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLimit); runtime.GOMAXPROCS(prevProcs) }()
	tests := []struct {
		name      string
		rt        Runtime
		env       map[string]string
		wantGC    int
		wantLimit int64
		wantProcs int
	}{
		{"fields", Runtime{GCPercent: 400, MemoryLimit: 1 << 30, MaxProcs: 1}, nil, 400, 1 << 30, 1},
		{"no limit", Runtime{GCPercent: 250, MemoryLimit: -1}, nil, 250, math.MaxInt64, 3},
		{"environment wins", Runtime{GCPercent: 400, MemoryLimit: 1 << 30, MaxProcs: 2}, map[string]string{"GOGC": "100", "GOMEMLIMIT": "2GiB", "GOMAXPROCS": "4"}, 100, math.MaxInt64, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			runtime.GOMAXPROCS(3)
			tt.rt.Apply(func(k string) string { return tt.env[k] })
			if got := debug.SetGCPercent(100); got != tt.wantGC {
				t.Errorf("got gc percent %d, want %d", got, tt.wantGC)
			}
			if got := debug.SetMemoryLimit(-1); got != tt.wantLimit {
				t.Errorf("got memory limit %d, want %d", got, tt.wantLimit)
			}
			if got := runtime.GOMAXPROCS(0); got != tt.wantProcs {
				t.Errorf("got GOMAXPROCS %d, want %d", got, tt.wantProcs)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("log:\n  level: warn\n"))
	f.Add([]byte("admin: {listen: ${X:-a:1}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, env(nil))
		if err == nil && c.Validate() != nil {
			t.Fatalf("Parse accepted a config that fails Validate")
		}
	})
}

// parseCase parses doc for a section's table test. With wantErr, it checks
// that the error contains every entry and returns nil; without, it fails
// the test on any error and returns the config.
func parseCase(t *testing.T, doc string, lookup func(string) (string, bool), wantErr []string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc), lookup)
	if len(wantErr) > 0 {
		if err == nil {
			t.Fatalf("got no error, want %q", wantErr)
		}
		for _, w := range wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("got error\n%v\nwant it to contain %q", err, w)
			}
		}
		return nil
	}
	if err != nil {
		t.Fatalf("got error %v, want none", err)
	}
	return c
}
