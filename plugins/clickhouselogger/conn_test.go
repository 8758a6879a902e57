package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// TestInsertInBlocks: a batch of several blocks arrives whole, in order
// of columns and rows, as one part.
func TestInsertInBlocks(t *testing.T) {
	t.Parallel()
	ch := startCH(t)
	n := 2*blockRows + 3
	cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: %d\n", ch.NativeAddr(), n))
	c, err := newClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	blocks := 1
	c.afterBlock = func(string) { blocks++ }
	ctx := context.Background()
	rows := testRows(n, 1_700_000_000_000, "blk")
	if err := c.insert(ctx, cfg.Table, rows); err != nil {
		t.Fatal(err)
	}
	if blocks != 3 {
		t.Errorf("got %d blocks, want 3", blocks)
	}
	conn, err := ch.Conn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var parts, inParts uint64
	if err := conn.QueryRow(ctx, "SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = ? AND active", cfg.Table).Scan(&parts, &inParts); err != nil {
		t.Fatal(err)
	}
	if parts != 1 || inParts != uint64(n) {
		t.Errorf("got %d parts holding %d rows, want 1 holding %d", parts, inParts, n)
	}
	for _, i := range []int{0, blockRows - 1, blockRows, 2 * blockRows, n - 1} {
		r := rows[i]
		var path string
		var status uint16
		var names []string
		if err := conn.QueryRow(ctx, "SELECT path, status, req_header_names FROM "+cfg.Table+" WHERE request_id = ?", r.requestID).Scan(&path, &status, &names); err != nil {
			t.Fatalf("row %d (%s): %v", i, r.requestID, err)
		}
		if path != r.path || status != r.status || fmt.Sprint(names) != fmt.Sprint(nonNil(r.reqNames)) {
			t.Errorf("row %d: got %q %d %v, want %q %d %v", i, path, status, names, r.path, r.status, nonNil(r.reqNames))
		}
	}
}

// TestInsertCutMidBatch: an insert that fails after the first block of
// its batch was sent stores none of the batch, and the server takes the
// next batches. Cut two ways: ClickHouse frozen, its socket buffers
// filling with the next blocks (the insert must fail within read_timeout
// of the stalled write, not wait for ever: clickhouse-go bounds none of
// those writes), and the insert's context ended between two blocks. The
// guard against waiting for ever is far above read_timeout: it only
// turns a hang into a failure.
func TestInsertCutMidBatch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name        string
		rows        int
		readTimeout string // the insert's deadline, and each write's
		cut         func(ch *backing.ClickHouse, cancel context.CancelFunc) error
		thaw        bool
		wantIs      []error
	}{
		// uncompressed 200000-row batches: far more than loopback's socket
		// buffers hold
		{"clickhouse frozen", 200000, "3s", func(ch *backing.ClickHouse, _ context.CancelFunc) error { return ch.Freeze() }, true,
			[]error{errWriteStalled, context.DeadlineExceeded}},
		{"context ended", 3 * blockRows, "1m", func(_ *backing.ClickHouse, cancel context.CancelFunc) error { cancel(); return nil }, false,
			[]error{context.Canceled}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ch := startCH(t)
			n := tt.rows
			cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  batch_size: %d\n  max_pending: %d\n  compression: none\n  read_timeout: %s\n  dial_timeout: 1s\n", ch.NativeAddr(), n, n, tt.readTimeout))
			c, err := newClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			ctx := context.Background()
			if err := c.insert(ctx, cfg.Table, testRows(10, 1_700_000_000_000, "before")); err != nil {
				t.Fatal(err)
			}
			cutCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			var once sync.Once
			cut := false
			c.afterBlock = func(string) {
				once.Do(func() {
					cut = true
					if err := tt.cut(ch, cancel); err != nil {
						t.Error(err)
					}
				})
			}
			done := make(chan error, 1)
			go func() { done <- c.insert(cutCtx, cfg.Table, testRows(n, 1_700_000_000_000, "cut")) }()
			select {
			case err = <-done:
			case <-time.After(90 * time.Second):
				_ = ch.Thaw()
				t.Fatalf("the insert still waits after 90s (read_timeout %s)", tt.readTimeout)
			}
			if tt.thaw {
				if err := ch.Thaw(); err != nil {
					t.Fatal(err)
				}
			}
			if err == nil {
				t.Fatal("the cut insert succeeded")
			}
			if !cut {
				t.Fatalf("the insert failed before its first block was sent, nothing was cut: %v", err)
			}
			matched := false
			for _, want := range tt.wantIs {
				matched = matched || errors.Is(err, want)
			}
			if !matched {
				t.Errorf("got %v, want an error wrapping one of %v", err, tt.wantIs)
			}
			c.afterBlock = nil
			waitFor(t, "an insert after the cut", func() bool {
				return c.insert(ctx, cfg.Table, testRows(10, 1_700_000_000_000, "after")) == nil
			})
			conn, err := ch.Conn()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for _, w := range []struct {
				tag  string
				want uint64
			}{{"before", 10}, {"cut", 0}, {"after", 10}} {
				var got uint64
				if err := conn.QueryRow(ctx, "SELECT count() FROM "+cfg.Table+" WHERE startsWith(request_id, ?)", w.tag+"-").Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != w.want {
					t.Errorf("%s: got %d rows stored, want %d", w.tag, got, w.want)
				}
			}
		})
	}
}

// TestInsertOverTLS: the pool's own dialer (boundedConn) speaks TLS to
// ClickHouse's secure native port, verifying the server's certificate
// against clickhouse.tls.ca_file.
func TestInsertOverTLS(t *testing.T) {
	t.Parallel()
	backing.MustRequire(t, backing.ClickHouseServer)
	dir := t.TempDir()
	certFile, keyFile, err := backing.WriteSelfSignedCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	port, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ch := backing.MustClickHouse(t, backing.ClickHouseOptions{ExtraConfig: fmt.Sprintf(`<tcp_port_secure>%d</tcp_port_secure>
    <openSSL><server>
        <certificateFile>%s</certificateFile><privateKeyFile>%s</privateKeyFile>
        <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>
        <disableProtocols>sslv2,sslv3</disableProtocols>
    </server></openSSL>`, port, certFile, keyFile)})
	secure := fmt.Sprintf("127.0.0.1:%d", port)
	ctx := context.Background()
	for _, tt := range []struct {
		name, tls string
		wantErr   bool
	}{
		{"ca_file verifies the server", fmt.Sprintf("  tls:\n    enabled: true\n    ca_file: %q\n", certFile), false},
		{"an unknown CA is refused", "  tls:\n    enabled: true\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, fmt.Sprintf("  addrs: [%q]\n  create_table: true\n  read_timeout: 2s\n", secure)+tt.tls)
			c, err := newClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			err = c.insert(ctx, cfg.Table, testRows(5, 1_700_000_000_000, "tls"))
			if got := err != nil; got != tt.wantErr {
				t.Fatalf("insert: got error %v, want one: %v", err, tt.wantErr)
			}
			if err != nil {
				t.Logf("refused as expected: %v", err)
				return
			}
			n, err := ch.Count(ctx, cfg.Table)
			if err != nil || n != 5 {
				t.Errorf("got %d rows (%v), want 5", n, err)
			}
		})
	}
}
