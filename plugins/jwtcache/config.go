package jwtcache

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/core"
)

// Config is the jwks section, used by the jwtcache plugin: the JWKS providers
// that route confs name with "provider", and the bounds of the plugin's
// waits and caches. Every field documents its default; applyDefaults sets
// them and validate checks them, each problem naming its field as
// "jwks.<key>".
type Config struct {
	// Providers are the JWKS endpoints fetched at start, in the background,
	// and refreshed periodically. If empty, route confs can still use
	// jwks_url (see MaxInlineProviders).
	Providers []ProviderConfig `yaml:"providers"`
	// FirstFetchWait bounds how long a request that arrives before its
	// provider's first fetch has completed (and with no snapshot) waits for
	// it before failing closed with 401. If zero, 500ms. At most 10s.
	FirstFetchWait core.Duration `yaml:"first_fetch_wait"`
	// UnknownKIDMinInterval is the least time between two refreshes of one
	// provider triggered by tokens with a kid that is not in the cached
	// JWKS, so that random kids cannot hammer the IdP. If zero, 10s.
	UnknownKIDMinInterval core.Duration `yaml:"unknown_kid_min_interval"`
	// UnknownKIDWait bounds how long a request with an unknown kid waits for
	// the refresh it triggered (keyfunc's default is up to a minute). If
	// zero, 300ms. At most 5s.
	UnknownKIDWait core.Duration `yaml:"unknown_kid_wait"`
	// TokenCacheSize is the number of verified tokens kept (keyed by a hash
	// of the token, never past the token's exp). If zero, 10000.
	TokenCacheSize int `yaml:"token_cache_size"`
	// MaxTokenSize is the largest token accepted, in bytes; larger ones are
	// rejected before any parsing. If zero, 8192 (nginx's default header
	// line limit is 8k). At most 65536.
	MaxTokenSize int `yaml:"max_token_size"`
	// MaxInlineProviders bounds the distinct jwks_url values that route
	// confs may define; a conf beyond it is invalid (and fails closed). If
	// zero, 8. -1 forbids jwks_url: every route must name a provider.
	MaxInlineProviders int `yaml:"max_inline_providers"`
}

// ProviderConfig is one JWKS endpoint, such as Keycloak's
// .../realms/<realm>/protocol/openid-connect/certs.
type ProviderConfig struct {
	// Name is what route confs put in "provider", the provider label of the
	// metrics and the /status backend "jwks:<name>". Required; letters,
	// digits, '.', '_' and '-'; "inline" is reserved.
	Name string `yaml:"name"`
	// URL is the JWKS URL, http or https. Exactly one of url, discovery
	// and file is required.
	URL string `yaml:"url"`
	// Issuer is the iss of this provider's tokens, such as
	// https://kc.example.com/realms/main. If empty, none: routes naming
	// the provider check iss only if they set issuer themselves. If set, a
	// route naming the provider checks iss against it (a route's own
	// issuer must equal it). Required with discovery, and for a provider
	// listed in a route's providers (the token's iss selects it).
	Issuer string `yaml:"issuer"`
	// Discovery, if true, reads the JWKS URL (jwks_uri) from
	// issuer + "/.well-known/openid-configuration" at every refresh, with
	// the same fetch bounds, outage rules and snapshot as url; the
	// document's issuer must equal Issuer. If the document cannot be read,
	// the last jwks_uri read is used. If false (the default), no discovery.
	Discovery bool `yaml:"discovery"`
	// File is the absolute path of a local JWKS document, for air-gapped
	// setups. It is watched: its modification time and size are checked
	// every refresh_interval, and it is read again when either changed. A
	// missing or invalid file keeps the previous keys, as a failed fetch
	// does, until max_stale. If empty, none. No snapshot_file with a file.
	File string `yaml:"file"`
	// RefreshInterval is how often the JWKS is fetched while fetches
	// succeed (the cache TTL), or the file checked. If zero, 5m (10s for a
	// file). Production often uses 15m-30m:
	// Keycloak publishes a new key well before it signs with it, and an
	// unknown kid triggers a refresh anyway. At least 1s.
	RefreshInterval core.Duration `yaml:"refresh_interval"`
	// MaxStale is how long after the last successful fetch the cached keys
	// stay trusted while refreshes fail; past it the provider fails closed.
	// If zero, 1h or 4 × refresh_interval, whichever is larger. Must be
	// greater than refresh_interval.
	MaxStale core.Duration `yaml:"max_stale"`
	// SnapshotFile, if set, is an absolute path where the last good JWKS is
	// written atomically after each successful fetch, and read at start, so
	// a runner restarted during an IdP outage keeps verifying. If empty, no
	// snapshot.
	SnapshotFile string `yaml:"snapshot_file"`
	// FetchTimeout bounds one fetch (connect, headers and body). If zero,
	// 5s. At most 1m.
	FetchTimeout core.Duration `yaml:"fetch_timeout"`
	// MaxBodySize is the largest JWKS response accepted, in bytes; a larger
	// one is rejected and the previous keys are kept. If zero, 1048576
	// (1 MiB). Between 1024 and 16777216.
	MaxBodySize int `yaml:"max_body_size"`
}

// Defaults of the jwks section, also used for inline (jwks_url) providers.
const (
	DefaultJWKSRefreshInterval = 5 * time.Minute
	DefaultJWKSMaxStale        = time.Hour
	DefaultJWKSFetchTimeout    = 5 * time.Second
	DefaultJWKSMaxBodySize     = 1 << 20
	DefaultFilePollInterval    = 10 * time.Second
)

// DiscoveryURL is where an OpenID provider publishes its configuration.
func (p *ProviderConfig) DiscoveryURL() string {
	return strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
}

// source is what the provider reads, for logs and snapshots.
func (p *ProviderConfig) source() string {
	switch {
	case p.Discovery:
		return p.DiscoveryURL()
	case p.File != "":
		return "file:" + p.File
	}
	return p.URL
}

// InlineJWKSProvider returns the settings of a provider defined by a route
// conf's jwks_url: every default, no snapshot.
func inlineProvider(rawURL string) ProviderConfig {
	p := ProviderConfig{Name: "inline", URL: rawURL}
	p.applyDefaults()
	return p
}

func (x *Config) ApplyDefaults() {
	if x.FirstFetchWait == 0 {
		x.FirstFetchWait = core.Duration(500 * time.Millisecond)
	}
	if x.UnknownKIDMinInterval == 0 {
		x.UnknownKIDMinInterval = core.Duration(10 * time.Second)
	}
	if x.UnknownKIDWait == 0 {
		x.UnknownKIDWait = core.Duration(300 * time.Millisecond)
	}
	if x.TokenCacheSize == 0 {
		x.TokenCacheSize = 10000
	}
	if x.MaxTokenSize == 0 {
		x.MaxTokenSize = 8192
	}
	if x.MaxInlineProviders == 0 {
		x.MaxInlineProviders = 8
	}
	for i := range x.Providers {
		x.Providers[i].applyDefaults()
	}
}

func (p *ProviderConfig) applyDefaults() {
	if p.RefreshInterval == 0 {
		p.RefreshInterval = core.Duration(DefaultJWKSRefreshInterval)
		if p.File != "" {
			p.RefreshInterval = core.Duration(DefaultFilePollInterval)
		}
	}
	if p.MaxStale == 0 {
		p.MaxStale = core.Duration(max(DefaultJWKSMaxStale, 4*p.RefreshInterval.D()))
	}
	if p.FetchTimeout == 0 {
		p.FetchTimeout = core.Duration(DefaultJWKSFetchTimeout)
	}
	if p.MaxBodySize == 0 {
		p.MaxBodySize = DefaultJWKSMaxBodySize
	}
}

var providerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Provider returns the provider named name, or nil.
func (x *Config) Provider(name string) *ProviderConfig {
	for i := range x.Providers {
		if x.Providers[i].Name == name {
			return &x.Providers[i]
		}
	}
	return nil
}

func (x *Config) Validate() []error {
	var errs []error
	if x.FirstFetchWait < 0 || x.FirstFetchWait.D() > 10*time.Second {
		errs = append(errs, core.Fieldf("jwks.first_fetch_wait", "must be > 0 and <= 10s, got %s", x.FirstFetchWait))
	}
	if x.UnknownKIDMinInterval < 0 {
		errs = append(errs, core.Fieldf("jwks.unknown_kid_min_interval", "must be > 0, got %s", x.UnknownKIDMinInterval))
	}
	if x.UnknownKIDWait < 0 || x.UnknownKIDWait.D() > 5*time.Second {
		errs = append(errs, core.Fieldf("jwks.unknown_kid_wait", "must be > 0 and <= 5s, got %s", x.UnknownKIDWait))
	}
	if x.TokenCacheSize < 0 || x.TokenCacheSize > 10_000_000 {
		errs = append(errs, core.Fieldf("jwks.token_cache_size", "must be between 1 and 10000000, got %d", x.TokenCacheSize))
	}
	if x.MaxTokenSize < 256 || x.MaxTokenSize > 65536 {
		errs = append(errs, core.Fieldf("jwks.max_token_size", "must be between 256 and 65536 bytes, got %d", x.MaxTokenSize))
	}
	if x.MaxInlineProviders < -1 || x.MaxInlineProviders > 1024 {
		errs = append(errs, core.Fieldf("jwks.max_inline_providers", "must be -1 (no jwks_url) or between 1 and 1024, got %d", x.MaxInlineProviders))
	}
	names := map[string]int{}
	snapshots := map[string]int{}
	for i := range x.Providers {
		p := &x.Providers[i]
		at := fmt.Sprintf("jwks.providers[%d]", i)
		switch {
		case p.Name == "":
			errs = append(errs, core.Fieldf(at+".name", "is required"))
		case p.Name == "inline":
			errs = append(errs, core.Fieldf(at+".name", `"inline" is reserved for jwks_url providers`))
		case !providerName.MatchString(p.Name):
			errs = append(errs, core.Fieldf(at+".name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, got %q", p.Name))
		default:
			if j, dup := names[p.Name]; dup {
				errs = append(errs, core.Fieldf(at+".name", "duplicate of jwks.providers[%d].name %q", j, p.Name))
			} else {
				names[p.Name] = i
			}
		}
		kinds := 0
		for _, set := range []bool{p.URL != "", p.Discovery, p.File != ""} {
			if set {
				kinds++
			}
		}
		switch {
		case kinds == 0:
			errs = append(errs, core.Fieldf(at+".url", "is required (or discovery: true with issuer, or file)"))
		case kinds > 1:
			errs = append(errs, core.Fieldf(at+".url", "set exactly one of url, discovery and file"))
		case p.URL != "":
			if err := CheckJWKSURL(p.URL); err != nil {
				errs = append(errs, core.Fieldf(at+".url", "%s", err.Error()))
			}
		case p.File != "":
			switch {
			case !filepath.IsAbs(p.File):
				errs = append(errs, core.Fieldf(at+".file", "must be an absolute path, got %q", p.File))
			case strings.HasSuffix(p.File, "/"):
				errs = append(errs, core.Fieldf(at+".file", "must name a file, not a directory, got %q", p.File))
			}
			if p.SnapshotFile != "" {
				errs = append(errs, core.Fieldf(at+".snapshot_file", "must be empty with file: the file is its own snapshot"))
			}
		}
		switch {
		case p.Discovery && p.Issuer == "":
			errs = append(errs, core.Fieldf(at+".issuer", "is required with discovery: true"))
		case p.Discovery:
			if err := checkIssuerURL(p.Issuer); err != nil {
				errs = append(errs, core.Fieldf(at+".issuer", "%s", err.Error()))
			}
		case len(p.Issuer) > 1024:
			errs = append(errs, core.Fieldf(at+".issuer", "must be at most 1024 bytes, got %d", len(p.Issuer)))
		}
		if p.RefreshInterval.D() < time.Second || p.RefreshInterval.D() > 24*time.Hour {
			errs = append(errs, core.Fieldf(at+".refresh_interval", "must be between 1s and 24h, got %s", p.RefreshInterval))
		}
		if p.MaxStale <= p.RefreshInterval || p.MaxStale.D() > 30*24*time.Hour {
			errs = append(errs, core.Fieldf(at+".max_stale", "must be greater than refresh_interval (%s) and <= 720h, got %s", p.RefreshInterval, p.MaxStale))
		}
		if p.FetchTimeout <= 0 || p.FetchTimeout.D() > time.Minute {
			errs = append(errs, core.Fieldf(at+".fetch_timeout", "must be > 0 and <= 1m, got %s", p.FetchTimeout))
		}
		if p.MaxBodySize < 1024 || p.MaxBodySize > 16<<20 {
			errs = append(errs, core.Fieldf(at+".max_body_size", "must be between 1024 and 16777216 bytes, got %d", p.MaxBodySize))
		}
		if p.SnapshotFile != "" {
			clean := filepath.Clean(p.SnapshotFile)
			switch {
			case !filepath.IsAbs(p.SnapshotFile):
				errs = append(errs, core.Fieldf(at+".snapshot_file", "must be an absolute path, got %q", p.SnapshotFile))
			case strings.HasSuffix(p.SnapshotFile, "/"):
				errs = append(errs, core.Fieldf(at+".snapshot_file", "must name a file, not a directory, got %q", p.SnapshotFile))
			default:
				if j, dup := snapshots[clean]; dup {
					errs = append(errs, core.Fieldf(at+".snapshot_file", "same file as jwks.providers[%d].snapshot_file", j))
				} else {
					snapshots[clean] = i
				}
			}
		}
	}
	return errs
}

// checkIssuerURL: discovery appends the well-known path to the issuer,
// which must be an http or https URL without query or fragment.
func checkIssuerURL(raw string) error {
	if err := CheckJWKSURL(raw); err != nil {
		return err
	}
	if u, _ := url.Parse(raw); u.RawQuery != "" || u.ForceQuery {
		return fmt.Errorf("must not have a query with discovery")
	}
	return nil
}

// CheckJWKSURL reports whether raw is usable as a JWKS URL: absolute http or
// https with a host, no fragment. Route confs' jwks_url use it too.
func CheckJWKSURL(raw string) error {
	if raw == "" {
		return fmt.Errorf("is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("must be an http or https URL, got %q", redactText(raw))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http or https URL, got scheme %q", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("must have a host, got %q", redactURL(raw))
	}
	if u.Fragment != "" {
		return fmt.Errorf("must not have a fragment")
	}
	return nil
}
