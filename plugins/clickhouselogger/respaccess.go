package clickhouselogger

import "github.com/apisix-edge/edge-runner/core"

// Reading the upstream response headers without changing the response.
//
// A pkg/http Response's Header() may report the response as changed (the
// reference framework does on any call), and APISIX then sends the client
// ONLY the runner's headers (see the protocol notes). A logger must answer
// nothing, so it reads them through core.ResponseHeaderVisitor, which the
// runner's own server implements read-only. Under another runner (the
// reference framework's runner.Run) the response does not implement it and
// the response headers are logged as absent; Header() is never called.

// respHeaderValues returns, for each lower-cased name in names, the value of
// that upstream response header ("" when absent; repeated headers joined
// with ", "), each bounded to max bytes. ok is false when the headers could
// not be read (the values are then all "").
func respHeaderValues(w any, names []string, max int) (values []string, ok bool) {
	values = make([]string, len(names))
	v, isVisitor := w.(core.ResponseHeaderVisitor)
	if !isVisitor || v == nil {
		return values, false
	}
	defer func() {
		// A malformed flatbuffer makes the generated accessors index out of
		// range: log the row without these headers rather than lose it.
		if recover() != nil {
			clear(values)
			ok = false
		}
	}()
	v.VisitHeaders(func(name, value []byte) {
		for j, want := range names {
			if !asciiEqualFold(name, want) {
				continue
			}
			if values[j] == "" {
				values[j] = bound(string(value), max)
			} else if len(values[j]) < max {
				values[j] = bound(values[j]+", "+string(value), max)
			}
		}
	})
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
