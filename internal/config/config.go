// Package config loads the runner's YAML config file (conf/config.yaml):
// strict decoding (an unknown key is an error that names it), ${VAR}
// expansion for secrets, Go duration strings, and defaults applied in one
// place before validation.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/apisix-edge/edge-runner/internal/core"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"
)

// DefaultPath is where `go-runner run` looks for its config when -c is not
// given: beside APISIX's own config in the official image.
const DefaultPath = "/usr/local/apisix/conf/go-runner.yaml"

// Config is the runner config.
type Config struct {
	// Log controls the runner's own log, which APISIX copies into its
	// error.log.
	Log Log `yaml:"log"`
	// Admin is the loopback HTTP listener for /metrics, /healthz, /status.
	Admin Admin `yaml:"admin"`
	// ShutdownTimeout bounds a graceful shutdown on SIGTERM: in-flight calls
	// finish, buffers flush, clients close. If zero, 3s (APISIX sends
	// SIGKILL about 1 s after SIGTERM on reload, so keep it short).
	ShutdownTimeout core.Duration `yaml:"shutdown_timeout"`
	// DrainTimeout is the first part of shutdown_timeout: how long, after
	// SIGTERM, the runner keeps serving the APISIX connections it already
	// has, with every plugin working, while it waits for a newer runner to
	// take the socket path (apisix reload). Each connection is closed when
	// it is idle and the path is no longer ours, so APISIX's keepalive pool
	// drops it and reconnects to the new runner. If zero, 300ms; it must
	// be below shutdown_timeout.
	DrainTimeout core.Duration `yaml:"drain_timeout"`
	// Redis is the connection of the ratelimit plugin.
	Redis Redis `yaml:"redis"`
	// ClickHouse is the connection and batching of the clickhouselogger
	// plugin.
	ClickHouse ClickHouse `yaml:"clickhouse"`
	// JWKS declares the key providers of the jwtcache plugin.
	JWKS JWKS `yaml:"jwks"`
}

// Log is the log section.
type Log struct {
	// Level is debug, info, warn or error. If empty, warn: the runner's
	// output lands in APISIX's error.log.
	Level string `yaml:"level"`
	// SummaryInterval is how often repeated failures are summarized into
	// one line. If zero, 1m.
	SummaryInterval core.Duration `yaml:"summary_interval"`
}

// Admin is the admin listener section.
type Admin struct {
	// Listen is the host:port of the admin listener. If empty,
	// 127.0.0.1:9542. "off" disables it. Keep it on loopback: /status shows
	// backend errors.
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin listener,
	// for profiling the runner under real traffic. If false (the default),
	// it is not served.
	Pprof bool `yaml:"pprof"`
}

// ZapLevel returns the parsed log level.
func (l Log) ZapLevel() zapcore.Level {
	lvl, err := zapcore.ParseLevel(l.Level)
	if err != nil {
		return zapcore.WarnLevel
	}
	return lvl
}

// Default returns the config used when no file exists: every default.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "warn"
	}
	if c.Log.SummaryInterval == 0 {
		c.Log.SummaryInterval = core.Duration(time.Minute)
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:9542"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = core.Duration(3 * time.Second)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = core.Duration(300 * time.Millisecond)
	}
	c.Redis.applyDefaults()
	c.ClickHouse.applyDefaults()
	c.JWKS.applyDefaults()
}

// Validate checks every field and returns all problems, each naming its
// field and rule.
func (c *Config) Validate() error {
	var errs []error
	if _, err := zapcore.ParseLevel(c.Log.Level); err != nil {
		errs = append(errs, core.Fieldf("log.level", "must be one of debug, info, warn, error, got %q", c.Log.Level))
	}
	if c.Log.SummaryInterval < 0 {
		errs = append(errs, core.Fieldf("log.summary_interval", "must be > 0"))
	}
	if c.Admin.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			errs = append(errs, core.Fieldf("admin.listen", "must be host:port or \"off\", got %q", c.Admin.Listen))
		}
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, core.Fieldf("shutdown_timeout", "must be > 0"))
	}
	if c.DrainTimeout < 0 || c.DrainTimeout >= c.ShutdownTimeout {
		errs = append(errs, core.Fieldf("drain_timeout", "must be > 0 and below shutdown_timeout (%v), got %v", c.ShutdownTimeout.D(), c.DrainTimeout.D()))
	}
	errs = append(errs, c.Redis.validate()...)
	errs = append(errs, c.ClickHouse.validate()...)
	errs = append(errs, c.JWKS.validate()...)
	return errors.Join(errs...)
}

// Load reads, expands, decodes, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a config document. lookup resolves ${VAR} references.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &core.FieldError{Rule: "invalid YAML: " + err.Error()}
	}
	c := &Config{}
	if len(root.Content) > 0 {
		changed, err := expand(&root, lookup)
		if err != nil {
			return nil, err
		}
		// yaml.v3 offers strict decoding only on a Decoder, so an expanded
		// tree is re-encoded first; unexpanded input is decoded as written,
		// so that line numbers in errors are the file's own.
		src := data
		if changed {
			if src, err = yaml.Marshal(&root); err != nil {
				return nil, fmt.Errorf("parse config: %w", err)
			}
		}
		dec := yaml.NewDecoder(bytes.NewReader(src))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil {
			return nil, yamlError(err, src)
		}
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// walk visits every node below n with its dotted path (sequence items as
// path[i]) and, for mapping values, the key node. It stops at the first
// visit that returns stop or an error.
func walk(n *yaml.Node, path string, key *yaml.Node, visit func(n, key *yaml.Node, path string) (stop bool, err error)) (bool, error) {
	if stop, err := visit(n, key, path); stop || err != nil {
		return stop, err
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			if stop, err := walk(c, p, nil, visit); stop || err != nil {
				return stop, err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if path != "" {
				p = path + "." + p
			}
			if stop, err := walk(n.Content[i+1], p, k, visit); stop || err != nil {
				return stop, err
			}
		}
	}
	return false, nil
}

// expand replaces ${VAR} and ${VAR:-default} in scalar values. An unset
// variable without a default is an error naming the variable and the key.
// It reports whether it changed anything.
func expand(root *yaml.Node, lookup func(string) (string, bool)) (bool, error) {
	changed := false
	_, err := walk(root, "", nil, func(n, _ *yaml.Node, path string) (bool, error) {
		if n.Kind != yaml.ScalarNode {
			return false, nil
		}
		var missing []string
		v := varRef.ReplaceAllStringFunc(n.Value, func(m string) string {
			sub := varRef.FindStringSubmatch(m)
			if val, ok := lookup(sub[1]); ok {
				return val
			}
			if sub[2] != "" {
				return sub[3]
			}
			missing = append(missing, sub[1])
			return ""
		})
		if len(missing) > 0 {
			return false, core.Fieldf(path, "environment variable %s is not set (APISIX passes only variables listed under nginx_config.envs; use ${%s:-default} for an optional one)", missing[0], missing[0])
		}
		if v != n.Value {
			n.Value = v
			n.Tag = "!!str"
			n.Style = yaml.DoubleQuotedStyle
			changed = true
		}
		return false, nil
	})
	return changed, err
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type`)

// yamlError turns yaml.v3's decode errors into field errors. yaml.v3 names
// only the unknown key, so its full path is found in src's node tree by key
// and line.
func yamlError(err error, src []byte) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var root yaml.Node
		_ = yaml.Unmarshal(src, &root)
		var errs []error
		for _, m := range te.Errors {
			if sub := unknownField.FindStringSubmatch(m); sub != nil {
				line, _ := strconv.Atoi(sub[1])
				field := keyPath(&root, sub[2], line)
				if field == "" {
					field = sub[2]
				}
				errs = append(errs, core.Fieldf(field, "unknown key (line %s)", sub[1]))
				continue
			}
			errs = append(errs, &core.FieldError{Rule: strings.TrimPrefix(m, "yaml: ")})
		}
		return errors.Join(errs...)
	}
	return &core.FieldError{Rule: err.Error()}
}

// keyPath returns the dotted path of the mapping key named name at line.
func keyPath(root *yaml.Node, name string, line int) string {
	found := ""
	_, _ = walk(root, "", nil, func(_, key *yaml.Node, path string) (bool, error) {
		if key != nil && key.Value == name && key.Line == line {
			found = path
			return true, nil
		}
		return false, nil
	})
	return found
}
