package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/apisix-edge/edge-runner/internal/config"
	"github.com/apisix-edge/edge-runner/plugins/ratelimit"
)

// warnPrefix starts a finding that does not make a conf invalid: printed,
// but validate still succeeds.
const warnPrefix = "warning: "

// extPhases are the APISIX plugins that carry ext-plugin confs.
var extPhases = []string{"ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp"}

// confParsers returns, for every plugin this runner serves, its strict conf
// parser, bound to the runner config.
func confParsers(cfg *config.Config) map[string]func([]byte) error {
	m := make(map[string]func([]byte) error, len(plugins))
	for _, p := range plugins {
		m[p.name] = func(conf []byte) error { return p.parse(cfg, conf) }
	}
	return m
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "runner config file (default: all defaults)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := config.Default()
	bad := 0
	if *path != "" {
		var err error
		if cfg, err = config.Load(*path); err != nil {
			printProblems(stdout, *path, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok\n", *path)
	}
	parsers := confParsers(cfg)
	for _, f := range fs.Args() {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", f, err)
			bad++
			continue
		}
		problems := validateDoc(data, parsers)
		errs := 0
		for _, p := range problems {
			fmt.Fprintf(stdout, "%s: %s\n", f, p)
			if !strings.HasPrefix(p, warnPrefix) {
				errs++
			}
		}
		if errs > 0 {
			bad++
			continue
		}
		fmt.Fprintf(stdout, "%s: ok\n", f)
	}
	if bad > 0 {
		return 1
	}
	return 0
}

// validateDoc checks an APISIX route (as sent to the Admin API, or a
// standalone apisix.yaml route converted to JSON), or a single ext-plugin
// conf entry {"name": ..., "value": ...}. Each problem names where it is.
func validateDoc(data []byte, parsers map[string]func([]byte) error) []string {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return []string{"not a JSON object: " + err.Error()}
	}
	if _, ok := doc["name"]; ok {
		if _, ok := doc["value"]; ok {
			return validateEntries("conf", data, parsers, true)
		}
	}
	var route struct {
		Plugins map[string]json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &route); err != nil {
		return []string{"plugins: must be an object: " + err.Error()}
	}
	var problems []string
	found := 0
	for _, phase := range extPhases {
		raw, ok := route.Plugins[phase]
		if !ok {
			continue
		}
		found++
		var pc struct {
			Conf json.RawMessage `json:"conf"`
		}
		if err := json.Unmarshal(raw, &pc); err != nil {
			problems = append(problems, fmt.Sprintf("plugins.%s: must be an object: %v", phase, err))
			continue
		}
		problems = append(problems, validateEntries("plugins."+phase+".conf", pc.Conf, parsers, false)...)
	}
	if found == 0 {
		problems = append(problems, "plugins: no ext-plugin-pre-req, ext-plugin-post-req or ext-plugin-post-resp: nothing for the runner to check")
	}
	return problems
}

func validateEntries(where string, raw json.RawMessage, parsers map[string]func([]byte) error, single bool) []string {
	type entry struct {
		Name  string          `json:"name"`
		Value json.RawMessage `json:"value"`
	}
	var entries []entry
	if single {
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return []string{where + ": " + err.Error()}
		}
		entries = []entry{e}
	} else if err := json.Unmarshal(raw, &entries); err != nil {
		return []string{where + ": must be a list of {name, value}: " + err.Error()}
	}
	var problems []string
	jwtBefore := false
	for i, e := range entries {
		at := fmt.Sprintf("%s[%d]", where, i)
		if single {
			at = where
		}
		parse, ok := parsers[e.Name]
		if !ok {
			known := make([]string, 0, len(parsers))
			for n := range parsers {
				known = append(known, n)
			}
			sort.Strings(known)
			problems = append(problems, fmt.Sprintf("%s.name: unknown plugin %q: every request on the route would get 500 (known: %v)", at, e.Name, known))
			continue
		}
		// APISIX passes value as a JSON string holding the conf.
		var value string
		if err := json.Unmarshal(e.Value, &value); err != nil {
			problems = append(problems, fmt.Sprintf("%s.value: must be a JSON string holding the plugin's conf (APISIX passes it as is)", at))
			continue
		}
		for _, p := range core.Problems(parse([]byte(value))) {
			problems = append(problems, fmt.Sprintf("%s (%s): %s", at, e.Name, p))
		}
		problems = append(problems, consumerWarning(at, e.Name, value, jwtBefore)...)
		if e.Name == "jwtcache" {
			jwtBefore = true
		}
	}
	return problems
}

// consumerWarning warns about a ratelimit conf that keys on the verified
// consumer with no jwtcache before it in the same conf list: only jwtcache
// verifies a consumer, so every request would be counted by remote_addr.
func consumerWarning(at, name, value string, jwtBefore bool) []string {
	if name != ratelimit.PluginName || jwtBefore {
		return nil
	}
	c, err := ratelimit.ParseConf([]byte(value))
	if err != nil || !c.KeysOnConsumer() {
		return nil
	}
	return []string{fmt.Sprintf("%s%s (%s): key: consumer without jwtcache before it in this conf list: no request has a verified consumer, so all are counted by remote_addr (apisix_edge_ratelimit_key_fallbacks_total)", warnPrefix, at, name)}
}
