package clickhouselogger

import (
	"reflect"
	"sync/atomic"
	"unsafe"

	"github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPRespCall"
)

// Reading the upstream response headers without changing the response.
//
// The framework's Response.Header() builds a header map and, from then on,
// reports the response as changed: the runner then answers with headers, and
// APISIX sends the client ONLY those (see the protocol notes). A logger must
// answer nothing. The framework keeps the raw HTTPRespCall flatbuffer
// (*hrc.Req) in an unexported field "r" of its *Response
// (apisix-go-plugin-runner v0.5.0, internal/http/response.go), so the
// headers are read from there, read-only.
//
// The accessor fails safe: if the dynamic type is not a pointer to a struct
// with a field "r" of type *hrc.Req (a framework upgrade changed the
// layout), it finds nothing and the response headers are logged as absent.
// It never calls Header().

// respLayout is where the *hrc.Req lives in one dynamic type.
type respLayout struct {
	typ    reflect.Type
	offset uintptr
	ok     bool
}

var (
	hrcReqPtrType = reflect.TypeFor[*hrc.Req]()
	// lastLayout caches the layout of the one type seen in practice.
	lastLayout atomic.Pointer[respLayout]
)

func layoutOf(t reflect.Type) *respLayout {
	if l := lastLayout.Load(); l != nil && l.typ == t {
		return l
	}
	l := &respLayout{typ: t}
	if t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct {
		if f, found := t.Elem().FieldByName("r"); found && f.Type == hrcReqPtrType && len(f.Index) == 1 {
			l.offset, l.ok = f.Offset, true
		}
	}
	lastLayout.Store(l)
	return l
}

// rawRespCall returns the raw HTTPRespCall behind the framework's response
// w, or nil when it cannot be found safely.
func rawRespCall(w any) *hrc.Req {
	if w == nil {
		return nil
	}
	v := reflect.ValueOf(w)
	l := layoutOf(v.Type())
	if !l.ok || v.IsNil() {
		return nil
	}
	p := unsafe.Add(v.UnsafePointer(), l.offset)
	return *(**hrc.Req)(p)
}

// respHeaderValues returns, for each lower-cased name in names, the value of
// that upstream response header ("" when absent; repeated headers joined
// with ", "), each bounded to max bytes. ok is false when the headers could
// not be read (the values are then all "").
func respHeaderValues(w any, names []string, max int) (values []string, ok bool) {
	values = make([]string, len(names))
	defer func() {
		// A malformed flatbuffer makes the generated accessors index out of
		// range: log the row without these headers rather than lose it.
		if recover() != nil {
			clear(values)
			ok = false
		}
	}()
	req := rawRespCall(w)
	if req == nil {
		return values, false
	}
	var e A6.TextEntry
	n := req.HeadersLength()
	for i := 0; i < n; i++ {
		if !req.Headers(&e, i) {
			continue
		}
		name := e.Name()
		for j, want := range names {
			if !asciiEqualFold(name, want) {
				continue
			}
			if values[j] == "" {
				values[j] = bound(string(e.Value()), max)
			} else if len(values[j]) < max {
				values[j] = bound(values[j]+", "+string(e.Value()), max)
			}
		}
	}
	return values, true
}

// asciiEqualFold compares a header name with a lower-cased one, ignoring
// ASCII case, without allocating.
func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
