package config

import (
	"fmt"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/plugins/jwtcache"
)

func TestJWKSSection(t *testing.T) {
	const ok = "jwks:\n  providers:\n    - name: kc\n      url: https://idp.example/certs\n"
	tests := []struct {
		name    string
		doc     string
		wantErr []string // substrings, all must appear; empty means success
		check   func(*jwtcache.Config) string
	}{
		{name: "no section gets defaults", doc: "", check: func(j *jwtcache.Config) string {
			if len(j.Providers) != 0 || j.FirstFetchWait.D() != 500*time.Millisecond || j.UnknownKIDMinInterval.D() != 10*time.Second ||
				j.UnknownKIDWait.D() != 300*time.Millisecond || j.TokenCacheSize != 10000 || j.MaxTokenSize != 8192 || j.MaxInlineProviders != 8 {
				return "section defaults not applied"
			}
			return ""
		}},
		{name: "provider defaults", doc: ok, check: func(j *jwtcache.Config) string {
			p := j.Providers[0]
			if p.RefreshInterval.D() != 5*time.Minute || p.MaxStale.D() != time.Hour || p.FetchTimeout.D() != 5*time.Second || p.MaxBodySize != 1<<20 {
				return "provider defaults not applied: " + p.RefreshInterval.String() + " " + p.MaxStale.String()
			}
			if j.Provider("kc") != &j.Providers[0] || j.Provider("nope") != nil {
				return "Provider lookup"
			}
			return ""
		}},
		{name: "max_stale default follows a long refresh_interval", doc: ok + "      refresh_interval: 30m\n", check: func(j *jwtcache.Config) string {
			if got := j.Providers[0].MaxStale.D(); got != 2*time.Hour {
				return "got max_stale " + got.String() + ", want 2h"
			}
			return ""
		}},
		{name: "full provider", doc: ok + "      refresh_interval: 15m\n      max_stale: 12h\n      snapshot_file: /var/lib/x.json\n      fetch_timeout: 2s\n      max_body_size: 4096\n", check: func(j *jwtcache.Config) string {
			p := j.Providers[0]
			if p.SnapshotFile != "/var/lib/x.json" || p.MaxStale.D() != 12*time.Hour || p.MaxBodySize != 4096 {
				return "values not kept"
			}
			return ""
		}},
		{name: "missing name and url", doc: "jwks:\n  providers:\n    - refresh_interval: 1m\n",
			wantErr: []string{"jwks.providers[0].name: is required", "jwks.providers[0].url: is required"}},
		{name: "reserved name", doc: "jwks:\n  providers:\n    - name: inline\n      url: http://a/\n", wantErr: []string{`jwks.providers[0].name: "inline" is reserved`}},
		{name: "bad name", doc: "jwks:\n  providers:\n    - name: 'a b'\n      url: http://a/\n", wantErr: []string{"jwks.providers[0].name: must be 1-64 letters"}},
		{name: "duplicate name", doc: ok + "    - name: kc\n      url: http://b/\n", wantErr: []string{`jwks.providers[1].name: duplicate of jwks.providers[0].name "kc"`}},
		{name: "bad scheme", doc: "jwks:\n  providers:\n    - name: a\n      url: ftp://a/certs\n", wantErr: []string{`jwks.providers[0].url: must be an http or https URL, got scheme "ftp"`}},
		{name: "no host", doc: "jwks:\n  providers:\n    - name: a\n      url: 'https:///certs'\n", wantErr: []string{"jwks.providers[0].url: must have a host"}},
		{name: "relative url", doc: "jwks:\n  providers:\n    - name: a\n      url: /certs\n", wantErr: []string{"jwks.providers[0].url: must be an http or https URL"}},
		{name: "max_stale not above refresh", doc: ok + "      refresh_interval: 10m\n      max_stale: 10m\n", wantErr: []string{"jwks.providers[0].max_stale: must be greater than refresh_interval (10m0s)"}},
		{name: "refresh too short", doc: ok + "      refresh_interval: 10ms\n", wantErr: []string{"jwks.providers[0].refresh_interval: must be between 1s and 24h"}},
		{name: "negative timeout", doc: ok + "      fetch_timeout: -1s\n", wantErr: []string{"jwks.providers[0].fetch_timeout: must be > 0"}},
		{name: "body too small", doc: ok + "      max_body_size: 10\n", wantErr: []string{"jwks.providers[0].max_body_size: must be between 1024"}},
		{name: "relative snapshot", doc: ok + "      snapshot_file: x.json\n", wantErr: []string{"jwks.providers[0].snapshot_file: must be an absolute path"}},
		{name: "shared snapshot", doc: "jwks:\n  providers:\n    - name: a\n      url: http://a/\n      snapshot_file: /tmp/s.json\n    - name: b\n      url: http://b/\n      snapshot_file: /tmp/./s.json\n",
			wantErr: []string{"jwks.providers[1].snapshot_file: same file as jwks.providers[0].snapshot_file"}},
		{name: "section bounds", doc: "jwks:\n  first_fetch_wait: 1m\n  unknown_kid_wait: 10s\n  token_cache_size: -1\n  max_token_size: 10\n  max_inline_providers: -2\n  unknown_kid_min_interval: -1s\n",
			wantErr: []string{"jwks.first_fetch_wait: must be > 0 and <= 10s", "jwks.unknown_kid_wait: must be > 0 and <= 5s",
				"jwks.token_cache_size: must be between 1", "jwks.max_token_size: must be between 256", "jwks.max_inline_providers: must be -1",
				"jwks.unknown_kid_min_interval: must be > 0"}},
		{name: "inline providers can be forbidden", doc: "jwks:\n  max_inline_providers: -1\n", check: func(j *jwtcache.Config) string {
			if j.MaxInlineProviders != -1 {
				return fmt.Sprintf("got %d, want -1", j.MaxInlineProviders)
			}
			return ""
		}},
		{name: "unknown provider key is named", doc: ok + "      refresh: 1m\n", wantErr: []string{"jwks.providers[0].refresh: unknown key (line 5)"}},
		{name: "secret in url via env", doc: "jwks:\n  providers:\n    - name: a\n      url: ${JWKS_URL:-https://idp/certs}\n", check: func(j *jwtcache.Config) string {
			if j.Providers[0].URL != "https://idp/certs" {
				return "got " + j.Providers[0].URL
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseCase(t, tt.doc, env(nil), tt.wantErr)
			if c == nil {
				return
			}
			if tt.check != nil {
				if msg := tt.check(&c.JWKS); msg != "" {
					t.Fatal(msg)
				}
			}
		})
	}
}
