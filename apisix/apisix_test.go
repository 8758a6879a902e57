// Package apisix_test checks every file of the operator's kit that can be
// checked without a Docker engine: the YAML parses, images are pinned, the
// standalone routes match the Admin API routes, every plugin conf passes
// `go-runner validate`, the alert rules pass promtool, and the alerts and the
// dashboard only name metrics the runner exports.
package apisix_test

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/apisix-edge/edge-runner/testbed"
	"gopkg.in/yaml.v3"
)

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if v == nil {
		t.Fatalf("%s: empty document", path)
	}
	return v
}

func TestYAMLFilesParse(t *testing.T) {
	files, _ := filepath.Glob("*.yaml")
	more, _ := filepath.Glob("prometheus/*.yml")
	files = append(files, more...)
	if len(files) < 6 {
		t.Fatalf("got %d YAML files, want at least 6: %v", len(files), files)
	}
	for _, f := range files {
		readYAML(t, f)
	}
}

// pinned reports whether an image reference names a fixed version.
func pinned(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return false
	}
	tag := image[i+1:]
	return tag != "latest" && regexp.MustCompile(`\d`).MatchString(tag)
}

func TestPinned(t *testing.T) {
	for _, tc := range []struct {
		image string
		want  bool
	}{
		{"redis:7.2.5-bookworm", true},
		{"redis", false},
		{"redis:latest", false},
		{"localhost:5000/redis", false},
		{"quay.io/keycloak/keycloak:26.0.7", true},
		{"x@sha256:abc", true},
	} {
		if got := pinned(tc.image); got != tc.want {
			t.Errorf("pinned(%q): got %v, want %v", tc.image, got, tc.want)
		}
	}
}

func TestComposeStack(t *testing.T) {
	doc := readYAML(t, "docker-compose.yaml")
	services, _ := doc["services"].(map[string]any)
	for _, want := range []string{"apisix", "etcd", "redis", "clickhouse", "keycloak", "prometheus", "upstream"} {
		if _, ok := services[want]; !ok {
			t.Errorf("service %s: missing", want)
		}
	}
	for name, s := range services {
		svc := s.(map[string]any)
		img, _ := svc["image"].(string)
		if _, build := svc["build"]; !build && !pinned(img) {
			t.Errorf("service %s: image %q is not pinned to a version", name, img)
		}
		vols, _ := svc["volumes"].([]any)
		for _, v := range vols {
			src := strings.SplitN(v.(string), ":", 2)[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(src); err != nil {
					t.Errorf("service %s: bind mount %s: %v", name, src, err)
				}
			}
		}
	}
	redis := services["redis"].(map[string]any)
	cmd := strings.Join(toStrings(redis["command"]), " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy allkeys-lru", "--requirepass"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("redis command %q: want %q", cmd, want)
		}
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVer := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(gomod)
	froms := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllSubmatch(data, -1)
	if len(froms) != 2 {
		t.Fatalf("got %d FROM lines, want 2 (build stage and the official image)", len(froms))
	}
	for _, f := range froms {
		if !pinned(string(f[1])) {
			t.Errorf("FROM %s: not pinned", f[1])
		}
	}
	if want := "golang:" + string(goVer[1]) + "-"; !bytes.HasPrefix(froms[0][1], []byte(want)) {
		t.Errorf("build stage %s: want the go.mod toolchain %s*", froms[0][1], want)
	}
	if !bytes.HasPrefix(froms[1][1], []byte("apache/apisix:")) {
		t.Errorf("final stage %s: want the official apache/apisix image", froms[1][1])
	}
	if !regexp.MustCompile(`(?m)^USER [1-9]`).Match(data) {
		t.Error("the final stage must end as a non-root USER")
	}
}

func TestAPISIXConfigs(t *testing.T) {
	for _, f := range []string{"config.yaml", "config-standalone.yaml"} {
		doc := readYAML(t, f)
		ext := doc["ext-plugin"].(map[string]any)
		cmd := toStrings(ext["cmd"])
		if len(cmd) != 4 || cmd[1] != "run" || cmd[2] != "-c" {
			t.Errorf("%s: ext-plugin.cmd = %q, want [<runner> run -c <config>]", f, cmd)
		}
		plugins := toStrings(doc["plugins"])
		for _, p := range []string{"ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp", "http-logger"} {
			if !contains(plugins, p) {
				t.Errorf("%s: plugins list lacks %s", f, p)
			}
		}
		ngx := doc["nginx_config"].(map[string]any)
		envs := toStrings(ngx["envs"])
		// Every ${VAR} the runner config expands must be passed by APISIX.
		runnerCfg, err := os.ReadFile("go-runner.yaml")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`\$\{([A-Z_][A-Z0-9_]*)`).FindAllStringSubmatch(string(runnerCfg), -1) {
			if !contains(envs, m[1]) {
				t.Errorf("%s: go-runner.yaml expands ${%s} but nginx_config.envs does not pass it", f, m[1])
			}
		}
	}
	// The logger's composite variable is the one documented (and tested
	// against nginx) in docs/clickhouselogger.md.
	docs, err := os.ReadFile("../docs/clickhouselogger.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```nginx\n(.*?)```").FindSubmatch(docs)
	if m == nil {
		t.Fatal("docs/clickhouselogger.md: no nginx snippet")
	}
	want := strings.TrimSpace(string(m[1]))
	for _, f := range []string{"config.yaml", "config-standalone.yaml"} {
		ngx := readYAML(t, f)["nginx_config"].(map[string]any)
		got, _ := ngx["http_configuration_snippet"].(string)
		if strings.TrimSpace(got) != want {
			t.Errorf("%s: http_configuration_snippet = %q, want the documented snippet %q", f, got, want)
		}
	}
	if doc := readYAML(t, "config-standalone.yaml"); doc["deployment"].(map[string]any)["role"] != "data_plane" {
		t.Error("config-standalone.yaml: want deployment.role data_plane")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// routeFiles returns the Admin API route bodies by name.
func routeFiles(t *testing.T) map[string]map[string]any {
	t.Helper()
	files, _ := filepath.Glob("routes/*.json")
	out := map[string]map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".json")] = v
	}
	return out
}

func TestStandaloneMatchesAdminRoutes(t *testing.T) {
	data, err := os.ReadFile("apisix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(bytes.TrimRight(data, "\n"), []byte("#END")) {
		t.Error("apisix.yaml: APISIX needs a final #END line")
	}
	var doc struct {
		Routes []map[string]any `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	admin := routeFiles(t)
	if len(doc.Routes) != len(admin) {
		t.Fatalf("apisix.yaml has %d routes, routes/ has %d", len(doc.Routes), len(admin))
	}
	for _, r := range doc.Routes {
		id, _ := r["id"].(string)
		want, ok := admin[strings.TrimPrefix(id, "edge-")]
		if !ok {
			t.Errorf("apisix.yaml route %s: no routes/%s.json", id, strings.TrimPrefix(id, "edge-"))
			continue
		}
		delete(r, "id")
		got := roundTrip(t, r)
		if !reflect.DeepEqual(got, roundTrip(t, want)) {
			t.Errorf("apisix.yaml route %s differs from its Admin API body", id)
		}
	}
}

func roundTrip(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func buildRunner(t *testing.T) string {
	t.Helper()
	bin, cleanup, err := testbed.BuildBinary("github.com/apisix-edge/edge-runner/cmd/go-runner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	return bin
}

func validate(t *testing.T, bin string, files ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"validate", "-c", "go-runner.yaml"}, files...)...)
	cmd.Env = append(os.Environ(), "REDIS_PASSWORD=test", "CLICKHOUSE_PASSWORD=test")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestRoutesPassValidate(t *testing.T) {
	bin := buildRunner(t)
	files, _ := filepath.Glob("routes/*.json")
	out, code := validate(t, bin, files...)
	if code != 0 {
		t.Fatalf("go-runner validate: exit %d, want 0:\n%s", code, out)
	}
	// The standalone routes, each converted to JSON as APISIX would read it.
	data, _ := os.ReadFile("apisix.yaml")
	var doc struct {
		Routes []map[string]any `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var yfiles []string
	for i, r := range doc.Routes {
		b, _ := json.Marshal(roundTrip(t, r))
		f := filepath.Join(dir, "standalone-"+strconv.Itoa(i)+".json")
		os.WriteFile(f, b, 0o644)
		yfiles = append(yfiles, f)
	}
	if out, code := validate(t, bin, yfiles...); code != 0 {
		t.Fatalf("go-runner validate on apisix.yaml routes: exit %d, want 0:\n%s", code, out)
	}

	// The check can fail: a typo in a conf is reported with its field.
	bad := routeFiles(t)["ratelimit"]
	conf := bad["plugins"].(map[string]any)["ext-plugin-pre-req"].(map[string]any)["conf"].([]any)[0].(map[string]any)
	conf["value"] = strings.Replace(conf["value"].(string), `"limit"`, `"limt"`, 1)
	b, _ := json.Marshal(bad)
	f := filepath.Join(dir, "bad.json")
	os.WriteFile(f, b, 0o644)
	out, code = validate(t, bin, f)
	if code != 1 || !strings.Contains(out, "limt") {
		t.Fatalf("validate of a route with a typo: exit %d, output %q; want exit 1 naming the field", code, out)
	}
}

func promtool(t *testing.T, args ...string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (make deps does, as root)")
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPrometheusRules(t *testing.T) {
	promtool(t, "check", "rules", "prometheus/alerts.yml")
	promtool(t, "test", "rules", "prometheus/alerts_test.yml")
	// The compose Prometheus config, with its rule file path made local.
	cfg, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("prometheus/alerts.yml")
	cfg = bytes.ReplaceAll(cfg, []byte("/etc/prometheus/alerts.yml"), []byte(abs))
	f := filepath.Join(t.TempDir(), "prometheus.yml")
	os.WriteFile(f, cfg, 0o644)
	promtool(t, "check", "config", f)
}

func TestAlertsLinkRunbooks(t *testing.T) {
	data, _ := os.ReadFile("prometheus/alerts.yml")
	for _, m := range regexp.MustCompile(`runbook: (\S+)`).FindAllSubmatch(data, -1) {
		if _, err := os.Stat(filepath.Join("..", string(m[1]))); err != nil {
			t.Errorf("runbook %s: %v", m[1], err)
		}
	}
}

// exportedMetrics returns the names the runner's code registers: every
// string literal of the non-test Go files under internal/, core/ and
// plugins/, each of which may be a metric name (or subsystem) under the
// apisix_edge namespace.
func exportedLiterals(t *testing.T) map[string]bool {
	lits := map[string]bool{}
	for _, root := range []string{"../internal", "../core", "../plugins"} {
		if err := walkLiterals(root, lits); err != nil {
			t.Fatal(err)
		}
	}
	return lits
}

func walkLiterals(root string, lits map[string]bool) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					lits[s] = true
				}
			}
			return true
		})
		return nil
	})
}

// Metrics exported by the Prometheus client's own collectors.
var libraryMetrics = map[string]bool{"process_start_time_seconds": true}

func TestAlertsAndDashboardNameRealMetrics(t *testing.T) {
	lits := exportedLiterals(t)
	known := func(rest string) bool {
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(rest, suf) && known0(lits, strings.TrimSuffix(rest, suf)) {
				return true
			}
		}
		return known0(lits, rest)
	}
	alerts, _ := os.ReadFile("prometheus/alerts.yml")
	dash, _ := os.ReadFile("grafana/edge-runner.json")
	var d map[string]any
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	names := map[string]bool{}
	for _, src := range [][]byte{alerts, dash} {
		for _, m := range regexp.MustCompile(`\bapisix_edge_([a-z0-9_]+)`).FindAllSubmatch(src, -1) {
			names[string(m[1])] = true
		}
	}
	var missing []string
	for n := range names {
		if !known(n) && !libraryMetrics[n] {
			missing = append(missing, "apisix_edge_"+n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("alerts or dashboard name metrics the runner does not register: %v", missing)
	}
	if len(names) < 15 {
		t.Errorf("found %d metric names, want the alerts and dashboard to cover at least 15", len(names))
	}
}

func known0(lits map[string]bool, rest string) bool {
	// Name: "x" with Namespace, or core.Namespace+"_x" in a NewDesc.
	if lits[rest] || lits["_"+rest] {
		return true
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] == '_' && lits[rest[:i]] && lits[rest[i+1:]] {
			return true
		}
	}
	return false
}

// globalRuleFiles returns the Admin API global rule bodies by name.
func globalRuleFiles(t *testing.T) map[string]map[string]any {
	t.Helper()
	files, _ := filepath.Glob("global_rules/*.json")
	if len(files) == 0 {
		t.Fatal("no global_rules/*.json")
	}
	out := map[string]map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".json")] = v
	}
	return out
}

// TestGlobalRuleLogsToRunner: the http-logger global rule posts to the
// runner's ingest listener (clickhouse.ingest.listen of go-runner.yaml) with
// the log_format documented in docs/clickhouselogger.md, retries a failed
// batch (a runner respawn lasts about 3 s), and apisix.yaml carries the same
// rule.
func TestGlobalRuleLogsToRunner(t *testing.T) {
	rules := globalRuleFiles(t)
	rule, ok := rules["edge-log"]
	if !ok {
		t.Fatalf("got global rules %v, want edge-log", reflect.ValueOf(rules).MapKeys())
	}
	hl, _ := rule["plugins"].(map[string]any)["http-logger"].(map[string]any)
	if hl == nil {
		t.Fatal("edge-log: no http-logger")
	}
	runnerCfg := readYAML(t, "go-runner.yaml")
	listen := runnerCfg["clickhouse"].(map[string]any)["ingest"].(map[string]any)["listen"].(string)
	if got, want := hl["uri"], "http://"+listen+"/apisix/http-logger"; got != want {
		t.Errorf("edge-log uri: got %v, want %s (go-runner.yaml's ingest listener)", got, want)
	}
	for k, want := range map[string]float64{"batch_max_size": 1000, "max_retry_count": 3, "retry_delay": 1} {
		if got, _ := hl[k].(float64); got != want {
			t.Errorf("edge-log %s: got %v, want %v", k, hl[k], want)
		}
	}
	if hl["concat_method"] != "json" {
		t.Errorf("edge-log concat_method: got %v, want json", hl["concat_method"])
	}
	docs, err := os.ReadFile("../docs/clickhouselogger.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- log_format -->\n```json\n(.*?)```").FindSubmatch(docs)
	if m == nil {
		t.Fatal("docs/clickhouselogger.md: no log_format block (marked <!-- log_format -->)")
	}
	var documented map[string]any
	if err := json.Unmarshal(m[1], &documented); err != nil {
		t.Fatalf("documented log_format: %v", err)
	}
	if !reflect.DeepEqual(hl["log_format"], documented) {
		t.Errorf("edge-log log_format differs from the documented one:\n got %v\nwant %v", hl["log_format"], documented)
	}
	data, err := os.ReadFile("apisix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		GlobalRules []map[string]any `yaml:"global_rules"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.GlobalRules) != len(rules) {
		t.Fatalf("apisix.yaml has %d global rules, global_rules/ has %d", len(doc.GlobalRules), len(rules))
	}
	for _, r := range doc.GlobalRules {
		id, _ := r["id"].(string)
		want, ok := rules[id]
		if !ok {
			t.Errorf("apisix.yaml global rule %s: no global_rules/%s.json", id, id)
			continue
		}
		delete(r, "id")
		if !reflect.DeepEqual(roundTrip(t, r), roundTrip(t, want)) {
			t.Errorf("apisix.yaml global rule %s differs from global_rules/%s.json", id, id)
		}
	}
}

// TestPostRespAllowsDegradation: a runner restart never fails a request
// that only needed logging (post-resp confs allow degradation), while the
// pre-req chain with jwtcache keeps failing closed.
func TestPostRespAllowsDegradation(t *testing.T) {
	for name, r := range routeFiles(t) {
		plugins := r["plugins"].(map[string]any)
		if pr, ok := plugins["ext-plugin-post-resp"].(map[string]any); ok && pr["allow_degradation"] != true {
			t.Errorf("routes/%s.json: ext-plugin-post-resp without allow_degradation: true", name)
		}
		pre, _ := plugins["ext-plugin-pre-req"].(map[string]any)
		if pre == nil || pre["allow_degradation"] != true {
			continue
		}
		for _, c := range pre["conf"].([]any) {
			if c.(map[string]any)["name"] == "jwtcache" {
				t.Errorf("routes/%s.json: allow_degradation on a pre-req chain with jwtcache lets unauthenticated requests through", name)
			}
		}
	}
}

// TestAdminRoutesScript runs admin-routes.sh against stand-ins for curl and
// the runner: every route and the global rule are PUT where APISIX expects
// them, after validation.
func TestAdminRoutesScript(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	stub := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stub("curl", `for a; do case "$a" in http*) echo "curl $a" >> `+log+`;; esac; done`+"\n")
	stub("go-runner", `echo "validate $#" >> `+log+"\n")
	run := func(args ...string) string {
		os.Remove(log)
		cmd := exec.Command("bash", append([]string{"admin-routes.sh"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "APISIX_ADMIN_KEY=k", "GO_RUNNER="+filepath.Join(dir, "go-runner"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("admin-routes.sh %v: %v\n%s", args, err, out)
		}
		b, _ := os.ReadFile(log)
		return string(b)
	}
	all := run()
	for name := range routeFiles(t) {
		if !strings.Contains(all, "curl http://127.0.0.1:9180/apisix/admin/routes/edge-"+name+"\n") {
			t.Errorf("got calls\n%s\nwant a PUT of route edge-%s", all, name)
		}
	}
	if !strings.Contains(all, "curl http://127.0.0.1:9180/apisix/admin/global_rules/edge-log\n") {
		t.Errorf("got calls\n%s\nwant a PUT of global rule edge-log", all)
	}
	if got := run("global:edge-log"); got != "curl http://127.0.0.1:9180/apisix/admin/global_rules/edge-log\n" {
		t.Errorf("global:edge-log alone: got calls %q, want the global rule only", got)
	}
}
