package testbed

import (
	"sync"

	"github.com/api7/ext-plugin-proto/go/A6"
	ei "github.com/api7/ext-plugin-proto/go/A6/ExtraInfo"
	hreq "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	hresp "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"
)

var builderPool = sync.Pool{New: func() any { return flatbuffers.NewBuilder(1024) }}

func getBuilder() *flatbuffers.Builder {
	b := builderPool.Get().(*flatbuffers.Builder)
	b.Reset()
	return b
}

func putBuilder(b *flatbuffers.Builder) {
	if cap(b.Bytes) <= 1<<20 {
		builderPool.Put(b)
	}
}

// kv is one name/value pair to encode; noValue leaves the value field out
// (APISIX does so for an arg without "=").
type kv struct {
	name, value string
	noValue     bool
}

func textEntries(b *flatbuffers.Builder, entries []kv) []flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(entries))
	for i, e := range entries {
		name := b.CreateString(e.name)
		var val flatbuffers.UOffsetT
		if !e.noValue {
			val = b.CreateString(e.value)
		}
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		if !e.noValue {
			A6.TextEntryAddValue(b, val)
		}
		offs[i] = A6.TextEntryEnd(b)
	}
	return offs
}

func offsetVector(b *flatbuffers.Builder, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT,
	offs []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	start(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

// encodePrepareConf builds a PrepareConf request. The conf vector is always
// present (APISIX adds it whenever conf.conf is set).
func encodePrepareConf(b *flatbuffers.Builder, key string, confs []PluginConf) []byte {
	entries := make([]kv, len(confs))
	for i, c := range confs {
		entries[i] = kv{name: c.Name, value: c.Value}
	}
	k := b.CreateString(key)
	vec := offsetVector(b, pc.ReqStartConfVector, textEntries(b, entries))
	pc.ReqStart(b)
	pc.ReqAddKey(b, k)
	pc.ReqAddConf(b, vec)
	b.Finish(pc.ReqEnd(b))
	return b.FinishedBytes()
}

type reqCallFields struct {
	id      uint32
	token   uint32
	srcIP   []byte
	path    string
	args    []kv
	headers []kv
	method  A6.Method
	hasMeth bool
}

func encodeHTTPReqCall(b *flatbuffers.Builder, f *reqCallFields) []byte {
	path := b.CreateString(f.path)
	src := b.CreateByteVector(f.srcIP)
	args := offsetVector(b, hreq.ReqStartArgsVector, textEntries(b, f.args))
	hdrs := offsetVector(b, hreq.ReqStartHeadersVector, textEntries(b, f.headers))
	hreq.ReqStart(b)
	hreq.ReqAddId(b, f.id)
	hreq.ReqAddConfToken(b, f.token)
	hreq.ReqAddSrcIp(b, src)
	hreq.ReqAddPath(b, path)
	hreq.ReqAddArgs(b, args)
	hreq.ReqAddHeaders(b, hdrs)
	if f.hasMeth {
		hreq.ReqAddMethod(b, f.method)
	}
	b.Finish(hreq.ReqEnd(b))
	return b.FinishedBytes()
}

func encodeHTTPRespCall(b *flatbuffers.Builder, id uint32, status int, token uint32, headers []kv) []byte {
	hdrs := offsetVector(b, hresp.ReqStartHeadersVector, textEntries(b, headers))
	hresp.ReqStart(b)
	hresp.ReqAddId(b, id)
	hresp.ReqAddStatus(b, uint16(status))
	hresp.ReqAddConfToken(b, token)
	hresp.ReqAddHeaders(b, hdrs)
	b.Finish(hresp.ReqEnd(b))
	return b.FinishedBytes()
}

// encodeExtraInfoAnswer builds an ExtraInfo answer; a nil result leaves the
// result field out, like APISIX does for a nil value.
func encodeExtraInfoAnswer(b *flatbuffers.Builder, result []byte) []byte {
	var res flatbuffers.UOffsetT
	if result != nil {
		res = b.CreateByteVector(result)
	}
	ei.RespStart(b)
	if result != nil {
		ei.RespAddResult(b, res)
	}
	b.Finish(ei.RespEnd(b))
	return b.FinishedBytes()
}

var methods = map[string]A6.Method{
	"GET": A6.MethodGET, "HEAD": A6.MethodHEAD, "POST": A6.MethodPOST, "PUT": A6.MethodPUT,
	"DELETE": A6.MethodDELETE, "MKCOL": A6.MethodMKCOL, "COPY": A6.MethodCOPY,
	"MOVE": A6.MethodMOVE, "OPTIONS": A6.MethodOPTIONS, "PROPFIND": A6.MethodPROPFIND,
	"PROPPATCH": A6.MethodPROPPATCH, "LOCK": A6.MethodLOCK, "UNLOCK": A6.MethodUNLOCK,
	"PATCH": A6.MethodPATCH, "TRACE": A6.MethodTRACE,
}
