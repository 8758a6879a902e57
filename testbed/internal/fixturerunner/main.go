// Command fixturerunner is a small plugin runner built on
// apisix-go-plugin-runner. The testbed tests drive it through the Gateway.
//
// Plugins (conf values are JSON):
//
//	fx-stop       {"status":403,"headers":{"X-A":"1"},"body":"denied"}  answers Stop
//	fx-rewrite    {"path":"/new","set_headers":{},"del_headers":[],"set_args":{},
//	               "del_args":[],"resp_headers":{}}                      answers Rewrite
//	fx-echo       {"var":"remote_addr","body":true}   copies a var and the body into
//	                                                  X-Echo-Var / X-Echo-Body
//	fx-resp       {"status":0,"headers":{},"body":"","read_body":false,"read_var":""}
//	                                                  post-resp answer
//	fx-sleep      {"ms":100}                          sleeps in RequestFilter
//	fx-panic      {}                                  panics in RequestFilter
//	fx-slowparse  {"ms":300}                          sleeps in ParseConf
//	fx-badconf    anything                            ParseConf fails
package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apache/apisix-go-plugin-runner/pkg/runner"
	"go.uber.org/zap/zapcore"
)

func main() {
	for _, p := range []plugin.Plugin{
		&stopPlugin{}, &rewritePlugin{}, &echoPlugin{}, &respPlugin{},
		&sleepPlugin{}, &panicPlugin{}, &slowParsePlugin{}, &badConfPlugin{},
	} {
		if err := plugin.RegisterPlugin(p); err != nil {
			panic(err)
		}
	}
	runner.Run(runner.RunnerConfig{LogLevel: zapcore.WarnLevel, LogOutput: os.Stderr})
}

func parse[T any](in []byte) (any, error) {
	var c T
	if err := json.Unmarshal(in, &c); err != nil {
		return nil, err
	}
	return c, nil
}

type stopConf struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

type stopPlugin struct{ plugin.DefaultPlugin }

func (*stopPlugin) Name() string                     { return "fx-stop" }
func (*stopPlugin) ParseConf(in []byte) (any, error) { return parse[stopConf](in) }
func (*stopPlugin) RequestFilter(conf any, w http.ResponseWriter, _ pkgHTTP.Request) {
	c := conf.(stopConf)
	for k, v := range c.Headers {
		w.Header().Set(k, v)
	}
	if c.Status != 0 {
		w.WriteHeader(c.Status)
	}
	_, _ = w.Write([]byte(c.Body))
}

type rewriteConf struct {
	Path        string            `json:"path"`
	SetHeaders  map[string]string `json:"set_headers"`
	DelHeaders  []string          `json:"del_headers"`
	SetArgs     map[string]string `json:"set_args"`
	DelArgs     []string          `json:"del_args"`
	RespHeaders map[string]string `json:"resp_headers"`
}

type rewritePlugin struct{ plugin.DefaultPlugin }

func (*rewritePlugin) Name() string                     { return "fx-rewrite" }
func (*rewritePlugin) ParseConf(in []byte) (any, error) { return parse[rewriteConf](in) }
func (*rewritePlugin) RequestFilter(conf any, _ http.ResponseWriter, r pkgHTTP.Request) {
	c := conf.(rewriteConf)
	if c.Path != "" {
		r.SetPath([]byte(c.Path))
	}
	for k, v := range c.SetHeaders {
		r.Header().Set(k, v)
	}
	for _, k := range c.DelHeaders {
		r.Header().Del(k)
	}
	for k, v := range c.SetArgs {
		r.Args().Set(k, v)
	}
	for _, k := range c.DelArgs {
		r.Args().Del(k)
	}
	for k, v := range c.RespHeaders {
		r.RespHeader().Set(k, v)
	}
}

type echoConf struct {
	Var  string `json:"var"`
	Body bool   `json:"body"`
}

type echoPlugin struct{ plugin.DefaultPlugin }

func (*echoPlugin) Name() string                     { return "fx-echo" }
func (*echoPlugin) ParseConf(in []byte) (any, error) { return parse[echoConf](in) }
func (*echoPlugin) RequestFilter(conf any, w http.ResponseWriter, r pkgHTTP.Request) {
	c := conf.(echoConf)
	if c.Var != "" {
		v, err := r.Var(c.Var)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		if v == nil {
			r.Header().Set("X-Echo-Var-Absent", "true")
		} else {
			r.Header().Set("X-Echo-Var", string(v))
		}
	}
	if c.Body {
		b, err := r.Body()
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		r.Header().Set("X-Echo-Body", string(b))
	}
}

type respConf struct {
	Status   int               `json:"status"`
	Headers  map[string]string `json:"headers"`
	Body     string            `json:"body"`
	ReadBody bool              `json:"read_body"`
	ReadVar  string            `json:"read_var"`
}

type respPlugin struct{ plugin.DefaultPlugin }

func (*respPlugin) Name() string                     { return "fx-resp" }
func (*respPlugin) ParseConf(in []byte) (any, error) { return parse[respConf](in) }
func (*respPlugin) ResponseFilter(conf any, w pkgHTTP.Response) {
	c := conf.(respConf)
	if c.ReadBody {
		b, err := w.ReadBody()
		if err == nil {
			w.Header().Set("X-Orig-Body", string(b))
		}
	}
	if c.ReadVar != "" {
		v, err := w.Var(c.ReadVar)
		if err == nil {
			w.Header().Set("X-Var", string(v))
		}
	}
	for k, v := range c.Headers {
		w.Header().Set(k, v)
	}
	if c.Status != 0 {
		w.WriteHeader(c.Status)
	}
	if c.Body != "" {
		_, _ = w.Write([]byte(c.Body))
	}
}

type msConf struct {
	MS int `json:"ms"`
}

type sleepPlugin struct{ plugin.DefaultPlugin }

func (*sleepPlugin) Name() string                     { return "fx-sleep" }
func (*sleepPlugin) ParseConf(in []byte) (any, error) { return parse[msConf](in) }
func (*sleepPlugin) RequestFilter(conf any, _ http.ResponseWriter, _ pkgHTTP.Request) {
	time.Sleep(time.Duration(conf.(msConf).MS) * time.Millisecond)
}

type panicPlugin struct{ plugin.DefaultPlugin }

func (*panicPlugin) Name() string                  { return "fx-panic" }
func (*panicPlugin) ParseConf([]byte) (any, error) { return struct{}{}, nil }
func (*panicPlugin) RequestFilter(any, http.ResponseWriter, pkgHTTP.Request) {
	panic("fx-panic")
}

type slowParsePlugin struct{ plugin.DefaultPlugin }

func (*slowParsePlugin) Name() string { return "fx-slowparse" }
func (*slowParsePlugin) ParseConf(in []byte) (any, error) {
	c, err := parse[msConf](in)
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Duration(c.(msConf).MS) * time.Millisecond)
	return c, nil
}

type badConfPlugin struct{ plugin.DefaultPlugin }

func (*badConfPlugin) Name() string                  { return "fx-badconf" }
func (*badConfPlugin) ParseConf([]byte) (any, error) { return nil, errors.New("bad conf") }
func (*badConfPlugin) RequestFilter(_ any, w http.ResponseWriter, _ pkgHTTP.Request) {
	w.WriteHeader(http.StatusTeapot)
}
