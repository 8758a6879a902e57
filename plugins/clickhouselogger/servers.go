package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
)

// Spreading batches over clickhouse.addrs.
//
// Round robin is per batch, not per connection. clickhouse-go's own round
// robin (ConnOpenRoundRobin) picks a server when it opens a connection, and
// the pool then reuses that connection for ConnMaxLifetime: the flusher
// sends one batch at a time, so every batch would go to the same server for
// ten minutes and the others would idle. Here each server has its own pool,
// and each batch goes to the healthy server after the one that took the
// previous batch, so two servers take every other batch. The batch is also
// the unit that fails over: it goes whole to one server or to the next, so
// a row is never split across servers, and the accounting counts a batch
// once, where it landed.

// server is one address of clickhouse.addrs: its own connection pool, the
// tables created there, its health and its counters.
type server struct {
	addr  string
	index int // in chClient.servers
	conn  driver.Conn
	// created: the tables create_table made here (createMu, held while one
	// is made).
	createMu sync.Mutex
	created  map[string]bool
	// inflight counts the inserts being sent here.
	inflight atomic.Int32

	ok, failed prometheus.Counter // apisix_edge_log_inserts_total{addr,result}

	mu sync.Mutex
	// err is why the server is down; nil when it is up.
	err error
	// answered: the server's own error (it answered, refusing or failing
	// the insert); false for a network error (it did not answer).
	answered bool
	// until ends the down period: the server is skipped before it, then
	// tried again (answered) or probed with a ping first (not answered).
	until time.Time
	// wait is the next down period: retries.backoff after a successful
	// insert here, doubling at each failure up to retries.max_backoff.
	wait    time.Duration
	probing bool
}

// markDown records a failed insert or ping at now.
func (s *server) markDown(err error, now time.Time, maxWait time.Duration) {
	var ex *clickhouse.Exception
	s.mu.Lock()
	s.err = err
	s.answered = errors.As(err, &ex)
	s.until = now.Add(s.wait)
	s.wait = min(2*s.wait, maxWait)
	s.mu.Unlock()
}

// markUp records that the server answered: a successful insert also resets
// the down period to backoff (a ping alone does not, so a server that
// answers pings but fails inserts is tried less and less often).
func (s *server) markUp(inserted bool, backoff time.Duration) {
	s.mu.Lock()
	s.err = nil
	if inserted {
		s.wait = backoff
	}
	s.mu.Unlock()
}

// eligibility of a server for the next batch.
const (
	serverUp      = iota // take it
	serverSkipped        // down: skip it
	serverProbe          // down, its period over, unanswered: skip it and ping it
)

func (s *server) eligibility(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.err == nil:
		return serverUp
	case now.Before(s.until) || s.probing:
		return serverSkipped
	case s.answered:
		return serverUp // it answers: the next batch is the probe
	default:
		s.probing = true
		return serverProbe
	}
}

// downErr returns why the server is down, or nil.
func (s *server) downErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// newInsertsVec builds apisix_edge_log_inserts_total. Its labels stay
// bounded: the addresses come from the runner config.
func newInsertsVec() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: core.Namespace, Name: "log_inserts_total",
		Help: "Batch INSERTs sent to each ClickHouse server of clickhouse.addrs, by result (ok, error); a batch that failed over counts an error on one server and ok on the next.",
	}, []string{"addr", "result"})
}

// order returns the servers to try for the next batch: the ones up, from
// the cursor on, those with the fewest inserts in flight first (with
// insert_concurrency above 1, a batch does not queue behind another on one
// server while the next is idle, nor follow it onto a frozen one); when
// none is up, every server from the cursor on (a batch always gets its
// tries, as with a single server). The cursor moves past the first server
// returned. Down servers whose period is over and that did not answer are
// pinged in the background meanwhile.
func (c *chClient) order(now time.Time) []*server {
	n := len(c.servers)
	if n == 1 {
		return []*server{c.servers[0]} // the flusher probes a lone server
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ord := make([]*server, 0, n)
	for i := range n {
		s := c.servers[(c.next+i)%n]
		switch s.eligibility(now) {
		case serverUp:
			ord = append(ord, s)
		case serverProbe:
			c.probeAsync(s)
		}
	}
	if len(ord) == 0 {
		for i := range n {
			ord = append(ord, c.servers[(c.next+i)%n])
		}
	} else if len(ord) > 1 {
		busy := make(map[*server]int32, len(ord))
		for _, s := range ord {
			busy[s] = s.inflight.Load()
		}
		slices.SortStableFunc(ord, func(a, b *server) int { return int(busy[a] - busy[b]) })
	}
	c.next = (ord[0].index + 1) % n
	return ord
}

// probeDue pings, in the background, the down servers whose period is over
// and that did not answer, so they come back without waiting for a batch.
// With one server the flusher's own probe does this.
func (c *chClient) probeDue() {
	if len(c.servers) < 2 {
		return
	}
	now := time.Now()
	for _, s := range c.servers {
		if s.eligibility(now) == serverProbe {
			c.probeAsync(s)
		}
	}
}

// probeAsync pings a down server in the background (it must be marked
// probing); the flusher goes on with the other servers meanwhile.
func (c *chClient) probeAsync(s *server) {
	c.probes.Add(1)
	go func() {
		defer c.probes.Done()
		_ = c.pingServer(s)
	}()
}

// pingServer pings one server, bounded by dial_timeout plus a second and by
// the client's life, and records the result.
func (c *chClient) pingServer(s *server) error {
	ctx, cancel := context.WithTimeout(c.life, c.cfg.DialTimeout.D()+time.Second)
	defer cancel()
	err := s.conn.Ping(ctx)
	if err != nil {
		err = fmt.Errorf("ping clickhouse %s: %w", s.addr, err)
		if c.life.Err() == nil { // not the client closing
			s.markDown(err, time.Now(), c.cfg.Retries.MaxBackoff.D())
		}
	} else {
		s.markUp(false, c.cfg.Retries.Backoff.D())
	}
	s.mu.Lock()
	s.probing = false
	s.mu.Unlock()
	return err
}

// outage describes the servers that are down while others take the
// batches (nil when all are up, or when there is only one server).
func (c *chClient) outage() error {
	if c == nil || len(c.servers) < 2 {
		return nil
	}
	var errs []error
	for _, s := range c.servers {
		if err := s.downErr(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("clickhouse: %d of %d servers down: %w", len(errs), len(c.servers), errors.Join(errs...))
}

// downAddrs lists the servers that are down (for /status).
func (c *chClient) downAddrs() []string {
	out := []string{}
	for _, s := range c.servers {
		if s.downErr() != nil {
			out = append(out, s.addr)
		}
	}
	return out
}
