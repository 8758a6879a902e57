package jwtcache

import (
	"net/http"
	"testing"
)

// BenchmarkRequestFilterCacheHit is the whole plugin on a repeated token:
// token extraction, cache hit, claim checks, header hygiene and rewrites.
func BenchmarkRequestFilterCacheHit(b *testing.B) {
	clk := newClock()
	m := matrixModule(b, clk)
	rc := bind(b, m, `{"provider":"kc","issuer":"https://idp","audience":"api","claims_to_headers":{"sub":"X-User-ID"}}`)
	tok := sign(b, rsKey(b, "rs"), clk.Now(), nil)
	h := http.Header{"Authorization": {"Bearer " + tok}}
	r := newTestRequest("GET", http.Header{}, nil)
	w := newTestWriter()
	r.reset(h)
	m.RequestFilter(rc, w, r)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r.reset(h)
		m.RequestFilter(rc, w, r)
		if w.status != 0 {
			b.Fatal(w.status)
		}
	}
}
