package clickhouselogger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
)

// quoteIdent back-quotes an identifier (already restricted to [A-Za-z0-9_]
// by validation; quoting keeps reserved words usable).
func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "") + "`" }

// modernServer reports whether v has the types of createTableSQL's modern
// variant (DateTime64 came in 20.1, LowCardinality without a setting in
// 19.x; 21 leaves a margin).
func modernServer(v *driver.ServerVersion) bool { return v != nil && v.Version.Major >= 21 }

// chClient is the flusher's connection to ClickHouse: one pool per address
// of clickhouse.addrs, batches spread over them (servers.go). Up to
// insert_concurrency inserts run at once (each with its own column buffers
// and connection); pings of down servers run beside them.
type chClient struct {
	cfg     Config
	servers []*server
	inserts *prometheus.CounterVec

	mu   sync.Mutex
	next int // round-robin cursor: where the next batch starts (mu)

	encMu sync.Mutex
	encs  []*columns // idle column buffers, at most insert_concurrency (encMu)

	life   context.Context // ends pings when the client closes
	end    context.CancelFunc
	probes sync.WaitGroup

	// beforeInsert, tests only, is called before a batch is sent to addr;
	// afterBlock after each of its blocks but the last.
	beforeInsert func(addr string)
	afterBlock   func(addr string)
}

// newClient builds one pool per address; nothing is dialed until the first
// insert or ping.
func newClient(cfg Config) (*chClient, error) {
	c := &chClient{cfg: cfg, inserts: newInsertsVec()}
	c.life, c.end = context.WithCancel(context.Background())
	for _, addr := range cfg.Addrs {
		opts := &clickhouse.Options{
			Protocol: clickhouse.Native,
			Addr:     []string{addr},
			Auth: clickhouse.Auth{
				Database: cfg.Database,
				Username: cfg.Username,
				Password: cfg.Password,
			},
			DialTimeout:     cfg.DialTimeout.D(),
			ReadTimeout:     cfg.ReadTimeout.D(),
			MaxOpenConns:    cfg.InsertConcurrency + 1, // one more for a ping
			MaxIdleConns:    cfg.InsertConcurrency + 1,
			ConnMaxLifetime: 10 * time.Minute,
			ClientInfo: clickhouse.ClientInfo{Products: []struct{ Name, Version string }{
				{Name: "apisix-edge-runner", Version: "clickhouselogger"}}},
		}
		switch cfg.Compression {
		case "lz4":
			opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
		case "zstd":
			opts.Compression = &clickhouse.Compression{Method: clickhouse.CompressionZSTD}
		}
		var tc *tls.Config
		if cfg.TLS.Enabled {
			var err error
			if tc, err = cfg.TLS.Config(); err != nil {
				c.close()
				return nil, fmt.Errorf("clickhouse %w", err)
			}
		}
		opts.DialContext = dialer(cfg.DialTimeout.D(), cfg.ReadTimeout.D(), tc)
		conn, err := clickhouse.Open(opts)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
		}
		c.servers = append(c.servers, &server{
			addr: addr, index: len(c.servers), conn: conn, created: map[string]bool{}, wait: cfg.Retries.Backoff.D(),
			ok: c.inserts.WithLabelValues(addr, "ok"), failed: c.inserts.WithLabelValues(addr, "error"),
		})
	}
	return c, nil
}

// close ends the pings and closes every pool.
func (c *chClient) close() {
	if c == nil {
		return
	}
	c.end()
	c.probes.Wait()
	for _, s := range c.servers {
		_ = s.conn.Close()
	}
}

// ping pings every server at once and records each result. It returns nil
// as soon as one answers (the others finish in the background), or when ctx
// ends first, ctx's error.
func (c *chClient) ping(ctx context.Context) error {
	res := make(chan error, len(c.servers))
	for _, s := range c.servers {
		c.probes.Add(1)
		go func() {
			defer c.probes.Done()
			res <- c.pingServer(s)
		}()
	}
	var errs []error
	for range c.servers {
		select {
		case err := <-res:
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		case <-ctx.Done():
			return fmt.Errorf("ping clickhouse: %w", ctx.Err())
		}
	}
	return errors.Join(errs...)
}

// ensureTable creates table on s once per process when create_table is on
// (one insert at a time creates it: the others wait).
func (c *chClient) ensureTable(ctx context.Context, s *server, table string) error {
	if !c.cfg.CreateTable {
		return nil
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	if s.created[table] {
		return nil
	}
	v, err := s.conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("create table %s on %s: server version: %w", table, s.addr, err)
	}
	if err := c.createTable(ctx, s.conn, table, modernServer(v)); err != nil {
		return fmt.Errorf("create table %s on %s: %w", table, s.addr, err)
	}
	s.created[table] = true
	return nil
}

// getColumns takes idle column buffers, or new ones.
func (c *chClient) getColumns() *columns {
	c.encMu.Lock()
	defer c.encMu.Unlock()
	if n := len(c.encs); n > 0 {
		cs := c.encs[n-1]
		c.encs = c.encs[:n-1]
		return cs
	}
	return &columns{}
}

// putColumns gives back buffers taken by getColumns, emptied; they keep
// their capacity for the next batch.
func (c *chClient) putColumns(cs *columns) {
	cs.reset()
	c.encMu.Lock()
	defer c.encMu.Unlock()
	if len(c.encs) < max(c.cfg.InsertConcurrency, 1) {
		c.encs = append(c.encs, cs)
	}
}

// insert sends rows into table in one batch INSERT with named columns, on
// the next server in round-robin order; when that server fails, on the next
// one, each server tried at most once (see order). Each server gets
// read_timeout, all within ctx. When every server tried failed, the error
// is the last one that another try may fix, else the last refusal:
// permanent reports true only when every server refused the rows. Safe for
// concurrent use (insert_concurrency).
func (c *chClient) insert(ctx context.Context, table string, rows []row) error {
	cs := c.getColumns()
	defer c.putColumns(cs)
	var retryable, refused error
	tried := 0
	ord := c.order(time.Now())
	for _, s := range ord {
		tried++
		s.inflight.Add(1)
		err := c.insertOn(ctx, s, table, rows, cs)
		s.inflight.Add(-1)
		if err == nil {
			s.ok.Inc()
			s.markUp(true, c.cfg.Retries.Backoff.D())
			return nil
		}
		s.failed.Inc()
		if errors.Is(err, errEncode) {
			return err // no server takes what cannot be encoded
		}
		if ctx.Err() != nil {
			return err // shutting down: no server gets more time
		}
		s.markDown(err, time.Now(), c.cfg.Retries.MaxBackoff.D())
		if permanent(err) {
			refused = err
		} else {
			retryable = err
		}
	}
	err := retryable
	if err == nil {
		err = refused
	}
	if retryable == nil && len(ord) < len(c.servers) {
		// Refused here, but servers in their down period were skipped:
		// another attempt may reach one that takes the rows.
		return fmt.Errorf("insert into %s: %d servers tried, none took the batch (%w): %w", table, tried, errUntried, err)
	}
	if tried > 1 {
		return fmt.Errorf("insert into %s: %d servers tried, none took the batch: %w", table, tried, err)
	}
	return err
}

// insertOn sends rows to one server within read_timeout, in blocks of at
// most blockRows: cs holds one block at a time, filled just before it is
// sent, and the driver's column buffers, grown by the first block, are
// reused by the next. ClickHouse squashes the blocks of one INSERT into
// one part at its end (settings below), so a batch is still one part,
// written whole or not at all.
func (c *chClient) insertOn(ctx context.Context, s *server, table string, rows []row, cs *columns) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ReadTimeout.D())
	defer cancel()
	if c.beforeInsert != nil {
		c.beforeInsert(s.addr)
	}
	if err := c.ensureTable(ctx, s, table); err != nil {
		return err
	}
	if len(rows) > blockRows {
		// The blocks of this INSERT are one part, written when the last
		// has come (and none if it never comes): the server squashes them
		// up to min_insert_block_size_rows, which this batch does not
		// reach, and no byte threshold cuts them before.
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
			"min_insert_block_size_rows": len(rows) + 1, "min_insert_block_size_bytes": 0}))
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+quoteIdent(c.cfg.Database)+"."+quoteIdent(table)+" ("+insertColumnList(c.cfg.Ingest.Columns)+")")
	if err != nil {
		var ex *clickhouse.Exception
		if errors.As(err, &ex) && ex.Code == 60 { // UNKNOWN_TABLE: dropped by hand?
			s.createMu.Lock()
			delete(s.created, table) // create it again before the next batch
			s.createMu.Unlock()
		}
		return fmt.Errorf("insert into %s on %s: prepare: %w", table, s.addr, err)
	}
	defer func() {
		if !b.IsSent() {
			// An error before Send. Not Close: it would end the INSERT,
			// and ClickHouse would store the blocks already sent. Abort
			// drops the connection, and the server the INSERT with it.
			_ = b.Abort()
		}
	}()
	for lo := 0; lo < len(rows); lo += blockRows {
		if lo > 0 {
			// The previous block goes; its buffers take the next. A write
			// has a deadline of its own (boundedConn), not the insert's:
			// no block starts once the insert's has passed, so an insert
			// ends within read_timeout and one write's timeout.
			err := ctx.Err()
			if err == nil {
				err = b.Flush()
			}
			if err != nil {
				return fmt.Errorf("insert into %s on %s: send: %w", table, s.addr, err)
			}
			if c.afterBlock != nil {
				c.afterBlock(s.addr)
			}
		}
		cs.fill(rows[lo:min(lo+blockRows, len(rows))], c.cfg.Ingest.Columns)
		for i, v := range cs.values() {
			var err error
			if lists, ok := v.([][]string); ok {
				err = appendLists(b.Column(i), lists)
			} else {
				err = b.Column(i).Append(v)
			}
			if err != nil {
				return fmt.Errorf("insert into %s: column %d: %w: %w", table, i, errEncode, err)
			}
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert into %s on %s: send: %w", table, s.addr, err)
	}
	return nil
}

// emptyListValue is an empty header list, boxed once for every row that
// has one (every row of the ingest).
var emptyListValue any = emptyList

// appendLists appends the rows of an Array(String) column one by one: the
// driver appends a [][]string through reflection, row after row (a tenth
// of an insert's CPU, profiled), but takes a []string without it.
func appendLists(c driver.BatchColumn, lists [][]string) error {
	for _, l := range lists {
		v := emptyListValue
		if len(l) > 0 {
			v = l
		}
		if err := c.AppendRow(v); err != nil {
			return err
		}
	}
	return nil
}

// permanent reports whether err is the server refusing these rows for a
// reason another try will not fix soon: the schema (a missing table or
// column, a type mismatch) or the credentials. Other server errors (too
// many parts, memory limits, timeouts) and network errors are retried, and
// so is a refusal while other servers of addrs were not tried.
func permanent(err error) bool {
	if errors.Is(err, errUntried) {
		return false
	}
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

// errUntried marks a batch refused by the servers tried while others were
// skipped in their down period.
var errUntried = errors.New("other servers down, not tried")

// errEncode marks a batch the driver could not encode for the table's
// column types.
var errEncode = errors.New("rows do not fit the table's columns")
