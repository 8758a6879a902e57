package clickhouselogger

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// tableColumn is one built-in column of the log table.
type tableColumn struct {
	name string
	old  string // type on servers before 21 (18.16 included)
	lc   bool   // LowCardinality on newer servers
	def  string // DEFAULT expression, "" for the type's zero
}

// builtinColumns are the table's columns, in the order the flusher fills
// them. Every INSERT names them (ClickHouse 18.16 needs it for a batch
// insert; it also lets operators add columns of their own, with defaults).
// The columns after resp_header_values came with the log-phase path: a
// post-resp row fills them with their defaults.
var builtinColumns = []tableColumn{
	{name: "ts", old: "DateTime"},
	{name: "route_id", old: "String", lc: true},
	{name: "method", old: "String", lc: true},
	{name: "host", old: "String", lc: true},
	{name: "path", old: "String"},
	{name: "status", old: "UInt16"},
	{name: "latency_ms", old: "UInt32"},
	{name: "client_ip", old: "String"},
	{name: "user_agent", old: "String"},
	{name: "request_id", old: "String"},
	{name: "tenant", old: "String", lc: true},
	{name: "consumer", old: "String"},
	{name: "req_header_names", old: "Array(String)"},
	{name: "req_header_values", old: "Array(String)"},
	{name: "resp_header_names", old: "Array(String)"},
	{name: "resp_header_values", old: "Array(String)"},
	{name: "source", old: "String", lc: true, def: "'post_resp'"},
	{name: "service_id", old: "String", lc: true},
	{name: "upstream_addr", old: "String"},
	{name: "upstream_latency_ms", old: "UInt32"},
	{name: "apisix_latency_ms", old: "UInt32"},
	{name: "bytes_sent", old: "UInt64"},
	{name: "request_length", old: "UInt64"},
	{name: "rl_status", old: "String", lc: true},
	{name: "rl_limit", old: "Int64", def: "-1"},
	{name: "rl_remaining", old: "Int64", def: "-1"},
	{name: "retry_after", old: "Int64", def: "-1"},
}

// Values of the source column.
var sourceNames = [...]string{sourcePostResp: "post_resp", sourceLog: "http_logger"}

func isBuiltinColumn(name string) bool {
	for _, c := range builtinColumns {
		if strings.EqualFold(c.name, name) {
			return true
		}
	}
	return false
}

// columnType returns the DDL type of c for the server kind.
func (c tableColumn) columnType(modern bool) string {
	t := c.old
	if modern {
		if c.name == "ts" {
			t = "DateTime64(3, 'UTC')"
		} else if c.lc {
			t = "LowCardinality(" + t + ")"
		}
	}
	if c.def != "" {
		t += " DEFAULT " + c.def
	}
	return t
}

// insertColumnList is the column list of every INSERT: the built-in
// columns, then the custom ones.
func insertColumnList(custom []IngestColumn) string {
	var b strings.Builder
	for i, c := range builtinColumns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.name)
	}
	for _, c := range custom {
		b.WriteString(", ")
		b.WriteString(quoteIdent(c.Name))
	}
	return b.String()
}

// createTableSQL returns the DDL of the log table with the custom columns.
// Old servers (before 21) get the types that 18.16 knows; newer ones get
// millisecond timestamps and LowCardinality strings. Both take the same
// INSERT.
func createTableSQL(db, table string, modern bool, custom []IngestColumn) string {
	var b strings.Builder
	b.WriteString("CREATE TABLE IF NOT EXISTS " + quoteIdent(db) + "." + quoteIdent(table) + " (\n")
	for i, c := range builtinColumns {
		if i > 0 {
			b.WriteString(",\n")
		}
		b.WriteString("    " + c.name + " " + c.columnType(modern))
	}
	for _, c := range custom {
		b.WriteString(",\n    " + quoteIdent(c.Name) + " " + c.Type)
	}
	b.WriteString("\n) ENGINE = MergeTree()\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (route_id, ts)")
	return b.String()
}

// createTable creates table if missing, then adds the columns it lacks (a
// table created by an earlier release, or before a custom column was
// configured): one ALTER TABLE ADD COLUMN each, which 18.16 and current
// releases both run (18.16 has no ADD COLUMN IF NOT EXISTS, so the
// existing columns are read from system.columns first).
func (c *chClient) createTable(ctx context.Context, conn driver.Conn, table string, modern bool) error {
	custom := c.cfg.Ingest.Columns
	if err := conn.Exec(ctx, createTableSQL(c.cfg.Database, table, modern, custom)); err != nil {
		return err
	}
	have := map[string]bool{}
	rows, err := conn.Query(ctx, "SELECT name FROM system.columns WHERE database = ? AND table = ?", c.cfg.Database, table)
	if err != nil {
		return fmt.Errorf("read columns: %w", err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return fmt.Errorf("read columns: %w", err)
		}
		have[n] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read columns: %w", err)
	}
	type add struct{ name, typ string }
	var adds []add
	for _, col := range builtinColumns {
		if !have[col.name] {
			adds = append(adds, add{col.name, col.columnType(modern)})
		}
	}
	for _, col := range custom {
		if !have[col.Name] {
			adds = append(adds, add{quoteIdent(col.Name), col.Type})
		}
	}
	for _, a := range adds {
		q := "ALTER TABLE " + quoteIdent(c.cfg.Database) + "." + quoteIdent(table) + " ADD COLUMN " + a.name + " " + a.typ
		if err := conn.Exec(ctx, q); err != nil && !strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("add column %s: %w", a.name, err)
		}
	}
	return nil
}

// columns are the flusher's reusable column buffers.
type columns struct {
	ts                                                      []time.Time
	routeID, method, host, path, clientIP, userAgent, reqID []string
	tenant, consumer                                        []string
	status                                                  []uint16
	latency                                                 []uint32
	reqNames, reqValues, respNames, respValues              [][]string

	source, serviceID, upstreamAddr, rlStatus []string
	upstreamMs, apisixMs                      []uint32
	bytesSent, requestLen                     []uint64
	rlLimit, rlRemaining, retryAfter          []int64

	custom []customColumn
}

func (cs *columns) strs() []*[]string {
	return []*[]string{&cs.routeID, &cs.method, &cs.host, &cs.path, &cs.clientIP, &cs.userAgent, &cs.reqID, &cs.tenant, &cs.consumer,
		&cs.source, &cs.serviceID, &cs.upstreamAddr, &cs.rlStatus}
}

func (cs *columns) reset() {
	cs.ts = cs.ts[:0]
	for _, p := range cs.strs() {
		clear(*p)
		*p = (*p)[:0]
	}
	cs.status = cs.status[:0]
	cs.latency = cs.latency[:0]
	for _, p := range []*[][]string{&cs.reqNames, &cs.reqValues, &cs.respNames, &cs.respValues} {
		clear(*p)
		*p = (*p)[:0]
	}
	cs.upstreamMs, cs.apisixMs = cs.upstreamMs[:0], cs.apisixMs[:0]
	cs.bytesSent, cs.requestLen = cs.bytesSent[:0], cs.requestLen[:0]
	cs.rlLimit, cs.rlRemaining, cs.retryAfter = cs.rlLimit[:0], cs.rlRemaining[:0], cs.retryAfter[:0]
	for i := range cs.custom {
		cs.custom[i].reset()
	}
}

// fill encodes rows into columns: the work kept off the request path.
// custom are the configured custom columns; a row built before a change of
// them (a spooled one) is matched by name.
func (cs *columns) fill(rows []row, custom []IngestColumn) {
	if len(cs.custom) != len(custom) {
		cs.custom = make([]customColumn, len(custom))
	}
	for i, c := range custom {
		cs.custom[i].name, cs.custom[i].typ = c.Name, c.Type
	}
	cs.reset()
	for i := range rows {
		r := &rows[i]
		cs.ts = append(cs.ts, time.UnixMilli(r.tsMilli).UTC())
		cs.routeID = append(cs.routeID, r.routeID)
		cs.method = append(cs.method, r.method)
		cs.host = append(cs.host, r.host)
		cs.path = append(cs.path, r.path)
		cs.status = append(cs.status, r.status)
		cs.latency = append(cs.latency, r.latencyMs)
		cs.clientIP = append(cs.clientIP, r.clientIP)
		cs.userAgent = append(cs.userAgent, r.userAgent)
		cs.reqID = append(cs.reqID, r.requestID)
		cs.tenant = append(cs.tenant, r.tenant)
		cs.consumer = append(cs.consumer, r.consumer)
		cs.reqNames = append(cs.reqNames, nonNil(r.reqNames))
		cs.reqValues = append(cs.reqValues, nonNil(r.reqValues))
		cs.respNames = append(cs.respNames, nonNil(r.respNames))
		cs.respValues = append(cs.respValues, nonNil(r.respValues))
		src := sourceNames[sourcePostResp]
		if int(r.source) < len(sourceNames) {
			src = sourceNames[r.source]
		}
		cs.source = append(cs.source, src)
		cs.serviceID = append(cs.serviceID, r.serviceID)
		cs.upstreamAddr = append(cs.upstreamAddr, r.upstreamAddr)
		cs.upstreamMs = append(cs.upstreamMs, r.upstreamMs)
		cs.apisixMs = append(cs.apisixMs, r.apisixMs)
		cs.bytesSent = append(cs.bytesSent, r.bytesSent)
		cs.requestLen = append(cs.requestLen, r.requestLen)
		cs.rlStatus = append(cs.rlStatus, r.rlStatus)
		cs.rlLimit = append(cs.rlLimit, optional(r.rlLimit, r.rlHave&haveRLLimit != 0))
		cs.rlRemaining = append(cs.rlRemaining, optional(r.rlRemaining, r.rlHave&haveRLRemaining != 0))
		cs.retryAfter = append(cs.retryAfter, optional(r.retryAfter, r.rlHave&haveRetryAfter != 0))
		for j := range cs.custom {
			cs.custom[j].append(customValue(r, j, cs.custom[j].name))
		}
	}
}

// blockRows is the most rows of one block of an INSERT: what the
// flusher's and the driver's column buffers hold at a time, whatever
// batch_size is. Measured through the ingest (edgeperf, 50000-row
// batches): 4096 to 16384 cost the runner the same, 32768 more.
const blockRows = 8192

// values returns the columns in insertColumnList's order.
func (cs *columns) values() []any {
	v := []any{cs.ts, cs.routeID, cs.method, cs.host, cs.path, cs.status, cs.latency,
		cs.clientIP, cs.userAgent, cs.reqID, cs.tenant, cs.consumer,
		cs.reqNames, cs.reqValues, cs.respNames, cs.respValues,
		cs.source, cs.serviceID, cs.upstreamAddr, cs.upstreamMs, cs.apisixMs, cs.bytesSent, cs.requestLen,
		cs.rlStatus, cs.rlLimit, cs.rlRemaining, cs.retryAfter}
	for i := range cs.custom {
		v = append(v, cs.custom[i].value())
	}
	return v
}

func optional(v int64, have bool) int64 {
	if !have {
		return -1
	}
	return v
}

// customValue returns the value of custom column j (named name) of r: by
// position when the row was built with the current columns, else by name.
func customValue(r *row, j int, name string) string {
	if j < len(r.customNames) && r.customNames[j] == name {
		if j < len(r.customValues) {
			return r.customValues[j]
		}
		return ""
	}
	for k, n := range r.customNames {
		if n == name && k < len(r.customValues) {
			return r.customValues[k]
		}
	}
	return ""
}

var emptyList = []string{}

func nonNil(l []string) []string {
	if l == nil {
		return emptyList
	}
	return l
}

// customColumn is the buffer of one custom column; only the slice of its
// type is used.
type customColumn struct {
	name, typ string
	strs      []string
	u16       []uint16
	u32       []uint32
	u64       []uint64
	i64       []int64
	f64       []float64
	ts        []time.Time
}

func (c *customColumn) reset() {
	clear(c.strs)
	c.strs, c.u16, c.u32, c.u64, c.i64, c.f64, c.ts = c.strs[:0], c.u16[:0], c.u32[:0], c.u64[:0], c.i64[:0], c.f64[:0], c.ts[:0]
}

// append converts s, as received, to the column's type: a value that does
// not parse is the type's zero.
func (c *customColumn) append(s string) {
	switch c.typ {
	case "UInt16":
		c.u16 = append(c.u16, uint16(parseUnsigned(s, math.MaxUint16)))
	case "UInt32":
		c.u32 = append(c.u32, uint32(parseUnsigned(s, math.MaxUint32)))
	case "UInt64":
		c.u64 = append(c.u64, parseUnsigned(s, math.MaxUint64))
	case "Int64":
		c.i64 = append(c.i64, parseSigned(s))
	case "Float64":
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			f = 0
		}
		c.f64 = append(c.f64, f)
	case "DateTime":
		c.ts = append(c.ts, parseDateTime(s))
	default:
		c.strs = append(c.strs, s)
	}
}

func (c *customColumn) value() any {
	switch c.typ {
	case "UInt16":
		return c.u16
	case "UInt32":
		return c.u32
	case "UInt64":
		return c.u64
	case "Int64":
		return c.i64
	case "Float64":
		return c.f64
	case "DateTime":
		return c.ts
	}
	return c.strs
}

// parseUnsigned parses an integer (or a decimal, truncated), clamped to
// [0, max]; 0 when s is not a number.
func parseUnsigned(s string, max uint64) uint64 {
	s = strings.TrimSpace(s)
	if v, err := strconv.ParseUint(s, 10, 64); err == nil {
		return min(v, max)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0) {
		return 0
	}
	if f >= float64(max) {
		return max
	}
	return uint64(f)
}

func parseSigned(s string) int64 {
	s = strings.TrimSpace(s)
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) {
		return 0
	}
	if f >= math.MaxInt64 {
		return math.MaxInt64
	}
	if f <= math.MinInt64 {
		return math.MinInt64
	}
	return int64(f)
}

// maxDateTime is the last second a DateTime holds on every server.
var maxDateTime = time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC)

// parseDateTime reads Unix seconds (fractions allowed), Unix milliseconds
// (above 1e11) or RFC 3339; anything else is the epoch.
func parseDateTime(s string) time.Time {
	s = strings.TrimSpace(s)
	var t time.Time
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 && !math.IsInf(f, 0) {
		if f > 1e11 {
			f /= 1000
		}
		if f > float64(maxDateTime.Unix()) {
			return maxDateTime
		}
		sec, frac := math.Modf(f)
		t = time.Unix(int64(sec), int64(frac*1e9))
	} else if p, err := time.Parse(time.RFC3339Nano, s); err == nil {
		t = p
	}
	if t.Before(time.Unix(0, 0)) {
		return time.Unix(0, 0).UTC()
	}
	if t.After(maxDateTime) {
		return maxDateTime
	}
	return t.UTC()
}
