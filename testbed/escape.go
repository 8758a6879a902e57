package testbed

// uriSafeEncode reproduces APISIX's core.utils.uri_safe_encode, which calls
// nginx's ngx_escape_uri(..., NGX_ESCAPE_URI): it percent-encodes (upper-case
// hex) control characters, space, '#', '%', '?', DEL and every byte >= 0x80,
// and leaves everything else (including '/', '&', '=') as is. APISIX applies
// it to the path of a Rewrite answer.
func uriSafeEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if mustEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if mustEscape(c) {
			out = append(out, '%', hex[c>>4], hex[c&15])
			continue
		}
		out = append(out, c)
	}
	return string(out)
}

func mustEscape(c byte) bool {
	switch {
	case c <= 0x20, c >= 0x7f:
		return true
	case c == '#', c == '%', c == '?':
		return true
	}
	return false
}
