package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// columnList is the column list of every INSERT, in the order the flusher
// fills them. Naming the columns is what ClickHouse 18.16 needs for a batch
// insert; it also lets operators add columns of their own (with defaults).
const columnList = "ts, route_id, method, host, path, status, latency_ms, client_ip, user_agent, " +
	"request_id, tenant, consumer, req_header_names, req_header_values, resp_header_names, resp_header_values"

// createTableSQL returns the DDL of the log table. Old servers (before 21)
// get the types that 18.16 knows; newer ones get millisecond timestamps and
// LowCardinality strings. Both take the same INSERT.
func createTableSQL(db, table string, modern bool) string {
	ts, lc := "DateTime", func(t string) string { return t }
	if modern {
		ts = "DateTime64(3, 'UTC')"
		lc = func(t string) string { return "LowCardinality(" + t + ")" }
	}
	return "CREATE TABLE IF NOT EXISTS " + quoteIdent(db) + "." + quoteIdent(table) + " (\n" +
		"    ts " + ts + ",\n" +
		"    route_id " + lc("String") + ",\n" +
		"    method " + lc("String") + ",\n" +
		"    host " + lc("String") + ",\n" +
		"    path String,\n" +
		"    status UInt16,\n" +
		"    latency_ms UInt32,\n" +
		"    client_ip String,\n" +
		"    user_agent String,\n" +
		"    request_id String,\n" +
		"    tenant " + lc("String") + ",\n" +
		"    consumer String,\n" +
		"    req_header_names Array(String),\n" +
		"    req_header_values Array(String),\n" +
		"    resp_header_names Array(String),\n" +
		"    resp_header_values Array(String)\n" +
		") ENGINE = MergeTree()\n" +
		"PARTITION BY toYYYYMMDD(ts)\n" +
		"ORDER BY (route_id, ts)"
}

// quoteIdent back-quotes an identifier (already restricted to [A-Za-z0-9_]
// by validation; quoting keeps reserved words usable).
func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "") + "`" }

// modernServer reports whether v has the types of createTableSQL's modern
// variant (DateTime64 came in 20.1, LowCardinality without a setting in
// 19.x; 21 leaves a margin).
func modernServer(v *driver.ServerVersion) bool { return v != nil && v.Version.Major >= 21 }

// chClient is the flusher's connection to ClickHouse. Only the flusher
// goroutine uses it.
type chClient struct {
	cfg     Config
	conn    driver.Conn
	created map[string]bool // tables this process has created (create_table)
	cols    columns
}

// newClient builds the connection options; nothing is dialed until the
// first insert or ping.
func newClient(cfg Config) (*chClient, error) {
	opts := &clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     cfg.Addrs,
		Auth: clickhouse.Auth{
			Database: cfg.Database,
			Username: cfg.Username,
			Password: cfg.Password,
		},
		DialTimeout:      cfg.DialTimeout.D(),
		ReadTimeout:      cfg.ReadTimeout.D(),
		MaxOpenConns:     2,
		MaxIdleConns:     2,
		ConnMaxLifetime:  10 * time.Minute,
		ConnOpenStrategy: clickhouse.ConnOpenInOrder,
		ClientInfo: clickhouse.ClientInfo{Products: []struct{ Name, Version string }{
			{Name: "apisix-edge-runner", Version: "clickhouselogger"}}},
	}
	switch cfg.Compression {
	case "lz4":
		opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	case "zstd":
		opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionZSTD}
	}
	if cfg.TLS.Enabled {
		tc, err := cfg.TLS.Config()
		if err != nil {
			return nil, fmt.Errorf("clickhouse %w", err)
		}
		opts.TLS = tc
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open clickhouse: %w", err)
	}
	return &chClient{cfg: cfg, conn: conn, created: map[string]bool{}}, nil
}

func (c *chClient) close() {
	if c != nil && c.conn != nil {
		_ = c.conn.Close()
	}
}

// ping checks the server within ctx.
func (c *chClient) ping(ctx context.Context) error {
	if err := c.conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping clickhouse: %w", err)
	}
	return nil
}

// ensureTable creates table once per process when create_table is on.
func (c *chClient) ensureTable(ctx context.Context, table string) error {
	if !c.cfg.CreateTable || c.created[table] {
		return nil
	}
	v, err := c.conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("create table %s: server version: %w", table, err)
	}
	if err := c.conn.Exec(ctx, createTableSQL(c.cfg.Database, table, modernServer(v))); err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	c.created[table] = true
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
}

func (cs *columns) reset() {
	cs.ts = cs.ts[:0]
	for _, p := range []*[]string{&cs.routeID, &cs.method, &cs.host, &cs.path, &cs.clientIP, &cs.userAgent, &cs.reqID, &cs.tenant, &cs.consumer} {
		clear(*p)
		*p = (*p)[:0]
	}
	cs.status = cs.status[:0]
	cs.latency = cs.latency[:0]
	for _, p := range []*[][]string{&cs.reqNames, &cs.reqValues, &cs.respNames, &cs.respValues} {
		clear(*p)
		*p = (*p)[:0]
	}
}

// fill encodes rows into columns: the work kept off the request path.
func (cs *columns) fill(rows []row) {
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
	}
}

var emptyList = []string{}

func nonNil(l []string) []string {
	if l == nil {
		return emptyList
	}
	return l
}

// insert sends rows into table in one batch INSERT with named columns.
func (c *chClient) insert(ctx context.Context, table string, rows []row) (err error) {
	if err := c.ensureTable(ctx, table); err != nil {
		return err
	}
	b, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+quoteIdent(c.cfg.Database)+"."+quoteIdent(table)+" ("+columnList+")")
	if err != nil {
		var ex *clickhouse.Exception
		if errors.As(err, &ex) && ex.Code == 60 { // UNKNOWN_TABLE: dropped by hand?
			delete(c.created, table) // create it again before the next batch
		}
		return fmt.Errorf("insert into %s: prepare: %w", table, err)
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil && !b.IsSent() {
			err = fmt.Errorf("insert into %s: close: %w", table, cerr)
		}
	}()
	cs := &c.cols
	cs.fill(rows)
	defer cs.reset()
	for i, v := range []any{cs.ts, cs.routeID, cs.method, cs.host, cs.path, cs.status, cs.latency,
		cs.clientIP, cs.userAgent, cs.reqID, cs.tenant, cs.consumer,
		cs.reqNames, cs.reqValues, cs.respNames, cs.respValues} {
		if err := b.Column(i).Append(v); err != nil {
			return fmt.Errorf("insert into %s: column %d: %w: %w", table, i, errEncode, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert into %s: send: %w", table, err)
	}
	return nil
}

// permanent reports whether err is the server refusing these rows for a
// reason another try will not fix soon: the schema (a missing table or
// column, a type mismatch) or the credentials. Other server errors (too
// many parts, memory limits, timeouts) and network errors are retried.
func permanent(err error) bool {
	if errors.Is(err, errEncode) {
		return true
	}
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return false
	}
	switch ex.Code {
	case 8, // THERE_IS_NO_COLUMN
		16,  // NO_SUCH_COLUMN_IN_TABLE
		44,  // ILLEGAL_COLUMN
		47,  // UNKNOWN_IDENTIFIER
		53,  // TYPE_MISMATCH
		60,  // UNKNOWN_TABLE
		81,  // UNKNOWN_DATABASE
		164, // READONLY
		192, // UNKNOWN_USER
		193, // WRONG_PASSWORD
		497, // ACCESS_DENIED
		516: // AUTHENTICATION_FAILED
		return true
	}
	return false
}

// errEncode marks a batch the driver could not encode for the table's
// column types.
var errEncode = errors.New("rows do not fit the table's columns")
