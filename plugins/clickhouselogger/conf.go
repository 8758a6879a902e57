package clickhouselogger

import (
	"bytes"
	"errors"
	"strconv"
	"strings"

	"github.com/apisix-edge/edge-runner/core"
)

// Limits of a route conf.
const (
	maxConfHeaders = 32  // req_headers and resp_headers, each
	maxRouteIDLen  = 128 // route_id
)

// Conf is a route's clickhouselogger conf, the JSON value of its
// ext-plugin-post-resp entry. Every field is optional: "{}" (or an empty
// value) logs every request into the runner-level table.
type Conf struct {
	// Table overrides clickhouse.table for this route's rows.
	Table string `json:"table"`
	// ReqHeaders are request headers kept in req_header_names/values. Each
	// costs one ExtraInfo round trip per request.
	ReqHeaders []string `json:"req_headers"`
	// RespHeaders are upstream response headers kept in
	// resp_header_names/values. They come with the response: no round trip.
	RespHeaders []string `json:"resp_headers"`
	// SampleRatio is the share of requests logged, from 0 to 1. If absent, 1.
	SampleRatio *float64 `json:"sample_ratio"`
	// RouteID, if set, is written in route_id instead of APISIX's $route_id,
	// which saves one ExtraInfo round trip per request. Leave it empty when
	// the conf is shared by several routes (a global rule, a service).
	RouteID string `json:"route_id"`
}

// routeConf is a validated Conf, ready for the request path.
type routeConf struct {
	table     string   // "" means the runner-level table
	reqNames  []string // lower-cased, shared by every row of the route
	reqVars   []string // http_<name> nginx variables, same order
	respNames []string // lower-cased
	ratio     float64
	routeID   string
}

// parseConf decodes and validates a route conf. Problems name their field.
func parseConf(in []byte) (*routeConf, error) {
	var c Conf
	var errs []error
	if len(bytes.TrimSpace(in)) > 0 {
		// Decoding problems (unknown fields, wrong types) are reported with
		// the rules broken by the fields that did decode: all at once.
		if err := core.DecodeStrict(in, &c); err != nil {
			errs = append(errs, err)
		}
	}
	rc := &routeConf{table: c.Table, ratio: 1, routeID: c.RouteID}
	if c.Table != "" && !IdentOK(c.Table) {
		errs = append(errs, core.Fieldf("table", "must be letters, digits and '_', not starting with a digit, got %q", c.Table))
	}
	if c.SampleRatio != nil {
		r := *c.SampleRatio
		if !(r >= 0 && r <= 1) {
			errs = append(errs, core.Fieldf("sample_ratio", "must be between 0 and 1, got %v", r))
		}
		rc.ratio = r
	}
	if len(c.RouteID) > maxRouteIDLen {
		errs = append(errs, core.Fieldf("route_id", "must be at most %d bytes, got %d", maxRouteIDLen, len(c.RouteID)))
	}
	var herrs []error
	rc.reqNames, herrs = headerList("req_headers", c.ReqHeaders)
	errs = append(errs, herrs...)
	rc.respNames, herrs = headerList("resp_headers", c.RespHeaders)
	errs = append(errs, herrs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, n := range rc.reqNames {
		rc.reqVars = append(rc.reqVars, HeaderVar(n))
	}
	return rc, nil
}

// headerList validates a list of header names and returns them lower-cased.
func headerList(field string, names []string) ([]string, []error) {
	var errs []error
	if len(names) > maxConfHeaders {
		return nil, []error{core.Fieldf(field, "must list at most %d headers, got %d", maxConfHeaders, len(names))}
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(names))
	for i, n := range names {
		at := field + "[" + strconv.Itoa(i) + "]"
		if !core.ValidHeaderName(n) {
			errs = append(errs, core.Fieldf(at, "must be an HTTP header name, got %q", n))
			continue
		}
		ln := strings.ToLower(n)
		if seen[ln] {
			errs = append(errs, core.Fieldf(at, "duplicate header %q", n))
			continue
		}
		seen[ln] = true
		out = append(out, ln)
	}
	if len(out) == 0 {
		out = nil
	}
	return out, errs
}
