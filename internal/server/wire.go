package server

import (
	"sync"

	flatbuffers "github.com/google/flatbuffers/go"
)

// The ext-plugin wire format (api7/ext-plugin-proto, as APISIX 3.18 speaks
// it): each frame is one type byte, a 3-byte big-endian length, then one
// FlatBuffers table. One call is in flight per connection; during a call the
// runner may ask APISIX ExtraInfo questions on the same connection.
const (
	typeError       = 0
	typePrepareConf = 1
	typeHTTPReqCall = 2
	typeExtraInfo   = 3
	typeRespCall    = 4

	frameHeaderLen = 4
	// maxFrameLen is the largest body a 3-byte length can announce; APISIX
	// refuses larger answers.
	maxFrameLen = 1<<24 - 1
)

// builders recycles FlatBuffers builders between answers. A builder that
// grew past maxPooledBuilder (a large Stop body) is dropped instead, so the
// pool never pins much memory.
var builders = sync.Pool{New: func() any { return flatbuffers.NewBuilder(1024) }}

const maxPooledBuilder = 256 << 10

func getBuilder() *flatbuffers.Builder { return builders.Get().(*flatbuffers.Builder) }

func putBuilder(b *flatbuffers.Builder) {
	if b == nil || cap(b.Bytes) > maxPooledBuilder {
		return
	}
	b.Reset()
	builders.Put(b)
}
