package jwtcache

import (
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"testing"
)

// TestFilterNeedsNoView runs the filter on headers read through Get and
// Values only (the runner's server then builds no map of every header)
// and on headers read through View, and wants the same outcome: the same
// answer, the same upstream headers, the same consumer.
func TestFilterNeedsNoView(t *testing.T) {
	clk := newClock()
	m := matrixModule(t, clk)
	tok := sign(t, rsKey(t, "rs"), clk.Now(), map[string]any{"tenant_id": "acme"})
	const base = `"provider":"kc","issuer":"https://idp","audience":"api","claims_to_headers":{"sub":"X-User-ID","tenant_id":"X-Tenant-ID"}`
	spoofed := func(h http.Header) http.Header {
		h.Set("X-Edge-Consumer", "mallory")
		h.Set("X-User-ID", "mallory")
		h.Add("X-Tenant-Id", "evil")
		h.Set("Accept", "*/*")
		return h
	}
	for _, tt := range []struct {
		name, conf, method string
		hdr                http.Header
		args               url.Values
		status             int // 0: the request proceeds
	}{
		{"bearer", `{` + base + `}`, "GET", spoofed(http.Header{"Authorization": {"Bearer " + tok}}), nil, 0},
		{"bearer_hidden", `{` + base + `,"hide_credentials":true}`, "GET", spoofed(http.Header{"Authorization": {"Bearer " + tok}}), nil, 0},
		{"cookie_hidden", `{` + base + `,"token_sources":["cookie:at"],"hide_credentials":true}`, "GET",
			spoofed(http.Header{"Cookie": {"theme=dark", "at=" + tok + "; lang=en"}}), nil, 0},
		{"cookie_only_hidden", `{` + base + `,"token_sources":["cookie:at"],"hide_credentials":true}`, "GET",
			http.Header{"Cookie": {"at=" + tok}}, nil, 0},
		{"header_source", `{` + base + `,"token_sources":["header:X-Token"],"hide_credentials":true}`, "GET",
			spoofed(http.Header{"X-Token": {tok}}), nil, 0},
		{"query_source", `{` + base + `,"token_sources":["query:jwt"],"hide_credentials":true}`, "GET",
			spoofed(http.Header{}), url.Values{"jwt": {tok}, "page": {"1"}}, 0},
		{"payload_header", `{` + base + `,"forward_payload_header":"X-JWT-Payload"}`, "GET",
			spoofed(http.Header{"Authorization": {"Bearer " + tok}, "X-Jwt-Payload": {"forged"}}), nil, 0},
		{"anonymous", `{` + base + `,"anonymous":true}`, "GET", spoofed(http.Header{}), nil, 0},
		{"preflight", `{` + base + `,"bypass_cors_preflight":true}`, "OPTIONS",
			spoofed(http.Header{"Origin": {"https://a.example"}, "Access-Control-Request-Method": {"POST"}}), nil, 0},
		{"missing", `{` + base + `}`, "GET", spoofed(http.Header{"Authorization": {"Basic eDp5"}}), nil, http.StatusUnauthorized},
		{"invalid", `{` + base + `}`, "GET", spoofed(http.Header{"Authorization": {"Bearer " + tok + "x"}}), nil, http.StatusUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rc := bind(t, m, tt.conf)
			viewReq := newTestRequest(tt.method, tt.hdr.Clone(), maps.Clone(tt.args))
			viewW := newTestWriter()
			m.RequestFilter(rc, viewW, viewReq)
			if viewW.status != tt.status {
				t.Fatalf("through View: got %d %s, want %d", viewW.status, viewW.body, tt.status)
			}
			rdReq := &readerRequest{testRequest: *newTestRequest(tt.method, nil, maps.Clone(tt.args)), rh: readerHeader{tt.hdr.Clone()}}
			rdW := newTestWriter()
			m.RequestFilter(rc, rdW, rdReq)
			if rdW.status != viewW.status || string(rdW.body) != string(viewW.body) {
				t.Errorf("answer %d %s, through View %d %s", rdW.status, rdW.body, viewW.status, viewW.body)
			}
			if !reflect.DeepEqual(rdReq.rh.h, viewReq.hdr.h) {
				t.Errorf("upstream headers %q, through View %q", rdReq.rh.h, viewReq.hdr.h)
			}
			if !reflect.DeepEqual(rdReq.args, viewReq.args) {
				t.Errorf("args %q, through View %q", rdReq.args, viewReq.args)
			}
			if !reflect.DeepEqual(rdReq.values, viewReq.values) {
				t.Errorf("call values %v, through View %v", rdReq.values, viewReq.values)
			}
		})
	}
}
