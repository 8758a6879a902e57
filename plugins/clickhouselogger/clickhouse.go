package clickhouselogger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
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
// of clickhouse.addrs, batches spread over them (servers.go). Only the
// flusher goroutine inserts; pings of down servers run beside it.
type chClient struct {
	cfg     Config
	servers []*server
	next    int       // round-robin cursor: where the next batch starts
	ord     []*server // order's reused result
	cols    columns
	inserts *prometheus.CounterVec
	// conn is the pool of the server being written to, set by insertOn
	// (createTable runs on it).
	conn driver.Conn

	life   context.Context // ends pings when the client closes
	end    context.CancelFunc
	probes sync.WaitGroup

	// beforeInsert, tests only, is called before a batch is sent to addr.
	beforeInsert func(addr string)
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
			MaxOpenConns:    2,
			MaxIdleConns:    2,
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
		conns := &connSet{}
		opts.DialContext = conns.dialer(cfg.DialTimeout.D(), tc)
		conn, err := clickhouse.Open(opts)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
		}
		c.servers = append(c.servers, &server{
			addr: addr, index: len(c.servers), conn: conn, conns: conns, created: map[string]bool{}, batches: map[string]*reusable{}, wait: cfg.Retries.Backoff.D(),
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
		for t := range s.batches {
			s.dropBatch(t)
		}
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

// ensureTable creates table on s once per process when
// create_table is on.
func (c *chClient) ensureTable(ctx context.Context, s *server, table string) error {
	if !c.cfg.CreateTable || s.created[table] {
		return nil
	}
	v, err := s.conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("create table %s on %s: server version: %w", table, s.addr, err)
	}
	if err := c.createTable(ctx, table, modernServer(v)); err != nil {
		return fmt.Errorf("create table %s on %s: %w", table, s.addr, err)
	}
	s.created[table] = true
	return nil
}

// insert sends rows into table in one batch INSERT with named columns, on
// the next server in round-robin order; when that server fails, on the next
// one, each server tried at most once (see order). Each server gets
// read_timeout, all within ctx. When every server tried failed, the error
// is the last one that another try may fix, else the last refusal:
// permanent reports true only when every server refused the rows.
func (c *chClient) insert(ctx context.Context, table string, rows []row) error {
	cs := &c.cols
	cs.fill(rows, c.cfg.Ingest.Columns)
	defer cs.reset()
	var retryable, refused error
	tried := 0
	ord := c.order(time.Now())
	for _, s := range ord {
		tried++
		err := c.insertOn(ctx, s, table)
		if err == nil {
			s.ok.Inc()
			s.markUp(true, c.cfg.Retries.Backoff.D())
			c.next = (s.index + 1) % len(c.servers)
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
	c.next = (c.next + 1) % len(c.servers)
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

// insertOn sends the filled columns to one server within read_timeout.
func (c *chClient) insertOn(ctx context.Context, s *server, table string) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ReadTimeout.D())
	defer cancel()
	if c.beforeInsert != nil {
		c.beforeInsert(s.addr)
	}
	c.conn = s.conn
	if err := c.ensureTable(ctx, s, table); err != nil {
		return err
	}
	rb := s.batches[table]
	fresh := rb == nil
	if fresh {
		rb = &reusable{}
		rb.ctx, rb.cancel = context.WithCancel(c.life)
	}
	// The batch outlives this insert, and its context is never canceled
	// while it sends: clickhouse-go's Send of a sent batch writes the
	// batch's connection while its context watchdog may read it. This
	// insert's end (read_timeout, the shutdown) closes the server's
	// connections instead, which ends whatever read or write waits on them;
	// a batch that failed in any way is not used again.
	stop := context.AfterFunc(ctx, s.conns.closeAll)
	defer func() {
		if !stop() || err != nil {
			s.dropBatch(table)
			rb.close()
		}
	}()
	if fresh {
		b, err := s.conn.PrepareBatch(rb.ctx, "INSERT INTO "+quoteIdent(c.cfg.Database)+"."+quoteIdent(table)+" ("+insertColumnList(c.cfg.Ingest.Columns)+")")
		if err != nil {
			s.unknownTable(err, table)
			return fmt.Errorf("insert into %s on %s: prepare: %w", table, s.addr, err)
		}
		rb.b = b
		s.keepBatch(table, rb)
	}
	cols := rb.b.Columns()
	if rb.sent {
		for _, col := range cols {
			col.Reset() // empty, the buffers kept
		}
	}
	for i, v := range c.cols.values() {
		var err error
		if lists, ok := v.([][]string); ok {
			err = appendLists(cols[i], lists)
		} else {
			_, err = cols[i].Append(v)
		}
		if err != nil {
			return fmt.Errorf("insert into %s: column %d: %w: %w", table, i, errEncode, err)
		}
	}
	if err := rb.b.Send(); err != nil {
		s.unknownTable(err, table)
		return fmt.Errorf("insert into %s on %s: send: %w", table, s.addr, err)
	}
	rb.sent = true
	return nil
}

// reusable is an INSERT kept from batch to batch on one server, for one
// table, so that the driver's column buffers are allocated once instead of
// grown from empty at every batch (18 MB allocated and 1.5 µs of CPU per
// row of a 10000-row batch, BenchmarkInsertIngest). After its first Send,
// the driver sends the same statement again on a connection from the pool
// at each Send (it reads the server's table header again, and sends the
// block); the columns are emptied in between. Any failure ends it: the
// next batch prepares a new one.
type reusable struct {
	b      driver.Batch
	ctx    context.Context // the batch's: canceled only when it is dropped, never while it sends
	cancel context.CancelFunc
	sent   bool // sent at least once: its columns hold the last batch
}

// close ends the batch; closing it again does nothing.
func (rb *reusable) close() {
	if rb.b != nil {
		_ = rb.b.Close() // ends a statement never sent; nothing after a Send
		rb.b = nil
	}
	rb.cancel()
}

// maxReusable bounds the batches kept per server (one per table; a
// route-level table beyond them prepares its INSERT each time, as before).
const maxReusable = 4

func (s *server) keepBatch(table string, rb *reusable) {
	if len(s.batches) >= maxReusable {
		for t := range s.batches {
			s.dropBatch(t)
			break
		}
	}
	s.batches[table] = rb
}

// dropBatch forgets and closes the batch kept for table, if any.
func (s *server) dropBatch(table string) {
	if rb := s.batches[table]; rb != nil {
		delete(s.batches, table)
		rb.close()
	}
}

// unknownTable notes a table dropped by hand (UNKNOWN_TABLE), to create it
// again before the next batch.
func (s *server) unknownTable(err error, table string) {
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && ex.Code == 60 {
		delete(s.created, table)
	}
}

// emptyListValue is an empty header list, boxed once for every row that
// has one (every row of the ingest).
var emptyListValue any = emptyList

// appendLists appends the rows of an Array(String) column one by one: the
// driver appends a [][]string through reflection, row after row (a tenth
// of an insert's CPU, profiled), but takes a []string without it.
func appendLists(c column.Interface, lists [][]string) error {
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

// connSet tracks the open connections of one server's pool, so that an
// insert past read_timeout, or cut by the shutdown, can close them (the
// driver is then told nothing: its reads and writes fail).
type connSet struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// dialer dials as clickhouse-go does without one (TLS when tc is set),
// tracking the connections.
func (cs *connSet) dialer(timeout time.Duration, tc *tls.Config) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		d := &net.Dialer{Timeout: timeout}
		var nc net.Conn
		var err error
		if tc != nil {
			nc, err = (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, "tcp", addr)
		} else {
			nc, err = d.DialContext(ctx, "tcp", addr)
		}
		if err != nil {
			return nil, err
		}
		t := &trackedConn{Conn: nc, set: cs}
		cs.mu.Lock()
		if cs.conns == nil {
			cs.conns = map[*trackedConn]struct{}{}
		}
		cs.conns[t] = struct{}{}
		cs.mu.Unlock()
		return t, nil
	}
}

// closeAll closes every open connection of the server.
func (cs *connSet) closeAll() {
	cs.mu.Lock()
	open := make([]*trackedConn, 0, len(cs.conns))
	for t := range cs.conns {
		open = append(open, t)
	}
	cs.mu.Unlock()
	for _, t := range open {
		_ = t.Close()
	}
}

// trackedConn is a connection of a connSet; it leaves the set when closed.
type trackedConn struct {
	net.Conn
	set *connSet
}

func (t *trackedConn) Close() error {
	t.set.mu.Lock()
	delete(t.set.conns, t)
	t.set.mu.Unlock()
	return t.Conn.Close()
}

// SyscallConn gives the driver's idle-connection check the socket, as it
// gets it from the connections it dials itself.
func (t *trackedConn) SyscallConn() (syscall.RawConn, error) {
	nc := t.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("no syscall connection")
	}
	return sc.SyscallConn()
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
