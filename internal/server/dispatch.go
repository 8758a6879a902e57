package server

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"

	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/api7/ext-plugin-proto/go/A6"
	aerr "github.com/api7/ext-plugin-proto/go/A6/Err"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	"github.com/apisix-edge/edge-runner/core"
	flatbuffers "github.com/google/flatbuffers/go"
	"go.uber.org/zap"
)

// maxPluginsPerConf bounds the plugins of one conf. A route runs a handful;
// a conf naming more is rejected (every call answered 500) without parsing
// the rest, so one PrepareConf cannot make the runner parse, or log,
// without limit.
const maxPluginsPerConf = 64

// dispatcher answers the calls: PrepareConf, HTTPReqCall, HTTPRespCall.
type dispatcher struct {
	plugins map[string]plugin.Plugin
	cache   *confCache
	m       *rpcMetrics
}

// dispatch answers one frame. A body that is not the table its type
// announces (the generated accessors then index out of range) is answered
// with a bad-request error, counted, and the connection goes on: its
// framing is intact.
func (d *dispatcher) dispatch(c *conn, typ byte, body []byte) (ansTyp byte, b *flatbuffers.Builder) {
	b = getBuilder()
	defer func() {
		if rec := recover(); rec != nil {
			b.Reset()
			d.m.badFrames.WithLabelValues("malformed").Inc()
			d.m.event("bad_frame:malformed", "frame answered with bad request: malformed body", nil)
			ansTyp = d.errorAnswer(b, aerr.CodeBAD_REQUEST)
		}
	}()
	if len(body) < flatbuffers.SizeUOffsetT && (typ == typePrepareConf || typ == typeHTTPReqCall || typ == typeRespCall) {
		panic("short body")
	}
	switch typ {
	case typePrepareConf:
		return d.prepare(b, body), b
	case typeHTTPReqCall:
		return d.reqCall(c, b, body), b
	case typeRespCall:
		return d.respCall(c, b, body), b
	}
	d.m.badFrames.WithLabelValues("unknown_type").Inc()
	d.m.event("bad_frame:unknown_type", "frame answered with bad request: unknown type", nil)
	return d.errorAnswer(b, aerr.CodeBAD_REQUEST), b
}

func (d *dispatcher) errorAnswer(b *flatbuffers.Builder, code aerr.Code) byte {
	aerr.RespStart(b)
	aerr.RespAddCode(b, code)
	b.Finish(aerr.RespEnd(b))
	return typeError
}

// prepare parses a conf into a plugin chain and answers its token. The
// same key (APISIX's route, phase and conf version) gets the same token
// while the conf lives.
func (d *dispatcher) prepare(b *flatbuffers.Builder, body []byte) byte {
	req := pc.GetRootAsReq(body, 0)
	key := string(req.Key())
	tok, ok := d.cache.byKey(key)
	if !ok {
		tok = d.cache.add(key, d.parse(req, key))
	}
	pc.RespStart(b)
	pc.RespAddConfToken(b, tok)
	b.Finish(pc.RespEnd(b))
	return typePrepareConf
}

func (d *dispatcher) parse(req *pc.Req, key string) *ruleConf {
	rc := &ruleConf{}
	n := req.ConfLength()
	if n > maxPluginsPerConf {
		rc.reject = true
		d.m.rejectedConfs.WithLabelValues("too_many_plugins").Inc()
		d.m.throttle.Error("conf:too_many_plugins", "conf rejected: every request on its route gets 500", nil,
			zap.String("rule", fmt.Sprintf("must name at most %d plugins, got %d", maxPluginsPerConf, n)), zap.String("conf_key", clip(key)))
		return rc
	}
	var unknown []string
	var te A6.TextEntry
	for i := 0; i < n; i++ {
		if !req.Conf(&te, i) {
			continue
		}
		name := string(te.Name())
		p := d.plugins[name]
		if p == nil {
			rc.reject = true
			unknown = append(unknown, clip(name))
			continue
		}
		conf, err := p.ParseConf(bytes.Clone(te.Value()))
		if err != nil {
			// the guard never fails a conf (core.InvalidConf); a plugin
			// registered without it must not be dropped silently either
			rc.reject = true
			d.m.rejectedConfs.WithLabelValues("invalid_conf").Inc()
			d.m.throttle.Error("conf:parse:"+name, "plugin conf refused: every request on its route gets 500", err, zap.String("plugin", name))
			continue
		}
		rc.entries = append(rc.entries, confEntry{name: name, p: p, conf: conf})
	}
	if len(unknown) > 0 {
		d.m.rejectedConfs.WithLabelValues("unknown_plugin").Inc()
		d.m.throttle.Error("conf:unknown_plugin", "conf names a plugin this runner does not serve: every request on its route gets 500", nil,
			zap.Strings("unknown", unknown), zap.Strings("served", d.names()), zap.String("conf_key", clip(key)))
	}
	return rc
}

func (d *dispatcher) names() []string {
	out := make([]string, 0, len(d.plugins))
	for n := range d.plugins {
		out = append(out, n)
	}
	return out
}

// clip bounds a client-sent string before it is logged.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func (d *dispatcher) unknownToken(b *flatbuffers.Builder) byte {
	d.m.unknownTokens.Inc()
	d.m.event("unknown_token", "call with an unknown conf token: APISIX prepares the conf again (expected after a reload)", nil)
	return d.errorAnswer(b, aerr.CodeCONF_TOKEN_NOT_FOUND)
}

// reqCall runs the chain of an HTTPReqCall (pre-req, post-req) until a
// plugin answers, and answers Stop, Rewrite, or nothing.
func (d *dispatcher) reqCall(c *conn, b *flatbuffers.Builder, body []byte) byte {
	r, w := &c.req, &c.w
	r.init(c, body)
	defer r.end()
	defer w.reset()
	rc := d.cache.get(r.r.ConfToken())
	if rc == nil {
		return d.unknownToken(b)
	}
	if rc.reject {
		d.m.rejectedCalls.Inc()
		core.AnswerInvalidConf(w)
	} else {
		for _, e := range rc.entries {
			e.p.RequestFilter(e.conf, w, r)
			if w.stopped() {
				break
			}
		}
	}
	var action flatbuffers.UOffsetT
	var kind hrc.Action
	switch {
	case w.stopped():
		// APISIX applies no Rewrite with a Stop, so its log phase would not
		// see the consumer an earlier plugin verified: hand it over sealed
		if id, ok := core.VerifiedConsumer(r); ok {
			if s := core.SealConsumer(id); s != "" {
				w.Header().Set(core.LogConsumerHeader, s)
			}
		}
		action, kind = w.stop(b), hrc.ActionStop
	case r.changed():
		action, kind = r.rewrite(b), hrc.ActionRewrite
	}
	hrc.RespStart(b)
	hrc.RespAddId(b, r.r.Id())
	if action != 0 {
		hrc.RespAddActionType(b, kind)
		hrc.RespAddAction(b, action)
	}
	b.Finish(hrc.RespEnd(b))
	return typeHTTPReqCall
}

// respCall runs the chain of an HTTPRespCall (post-resp) until a plugin
// changes the response.
func (d *dispatcher) respCall(c *conn, b *flatbuffers.Builder, body []byte) byte {
	r := &c.resp
	r.init(c, body)
	defer r.end()
	rc := d.cache.get(r.r.ConfToken())
	if rc == nil {
		return d.unknownToken(b)
	}
	if rc.reject {
		d.m.rejectedCalls.Inc()
		r.WriteHeader(http.StatusInternalServerError)
		r.Header().Set("Content-Type", "application/json")
		_, _ = r.Write([]byte(core.InvalidConfBody))
	} else {
		for _, e := range rc.entries {
			e.p.ResponseFilter(e.conf, r)
			if r.changed() {
				break
			}
		}
	}
	b.Finish(r.answer(b))
	return typeRespCall
}
