package clickhouselogger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apisix-edge/edge-runner/core"
	"go.uber.org/zap"
)

// flusher is the state of the flusher goroutine and of the inserts it
// starts. The flusher goroutine pops batches and hands each to an insert
// of its own, up to clickhouse.insert_concurrency at once (with 1, it
// delivers each batch itself, one after the other); mu guards the backend's
// health that the inserts and the flusher both read and record.
//
// Behaviour, in short:
//   - a batch is tried up to retries.max_attempts times, waiting
//     retries.backoff (doubling, capped at retries.max_backoff) between
//     tries; meanwhile new rows wait in memory up to max_pending;
//   - a batch that exhausted its attempts is spooled (spool on) or dropped
//     (insert_failed), and ClickHouse is marked down;
//   - while down with the spool on, batches go straight to the spool and
//     the server is pinged every retries.max_backoff; when it answers, the
//     spool is replayed oldest first, between live batches;
//   - while down with the spool off, every batch still gets its attempts:
//     memory absorbs what it can, the rest is dropped and counted.
type flusher struct {
	client *chClient // nil when it cannot be built (bad TLS files)

	mu        sync.Mutex
	down      bool          // mu
	nextProbe time.Time     // mu
	probeWait time.Duration // mu
	// partial: the backend is degraded only because some servers of
	// clickhouse.addrs are down while others take the batches (mu).
	partial bool

	stopping atomic.Bool

	// slots holds a token per insert in flight (insert_concurrency);
	// inflight counts the deliveries started by dispatch.
	slots    chan struct{}
	inflight sync.WaitGroup

	// The flusher goroutine's own.
	lastScan     time.Time
	fileFailures map[string]int // spool files the server refused, by name
	lastDropped  uint64         // drops already reported in the log

	// beforeInsert, tests only, is handed to the client (chClient's).
	beforeInsert func(addr string)
}

// errStopping ends a retry wait when the runner shuts down.
var errStopping = errors.New("shutting down")

func (l *Logger) run(ctx context.Context) {
	defer close(l.done)
	f := &l.fl
	f.fileFailures = map[string]int{}
	f.probeWait = l.cfg.Retries.Backoff.D()
	f.slots = make(chan struct{}, max(l.cfg.InsertConcurrency, 1))
	if l.cfg.Spool.Enabled {
		s, err := openSpool(l.cfg.Spool.Dir, l.cfg.Spool.MaxBytes, l.now)
		if err != nil {
			l.deps.Log.Error("clickhouselogger: spool unavailable: undeliverable rows will be dropped (reason spool_full)", zap.Error(err))
		} else {
			l.spool.Store(s)
			if n := s.rows.Load(); n > 0 {
				l.deps.Log.Warn("clickhouselogger: spool holds rows from an earlier runner: they are replayed when ClickHouse answers",
					zap.Int64("rows", n), zap.Int64("bytes", s.bytes.Load()))
			}
		}
	}
	var err error
	f.client, err = newClient(l.cfg)
	if err != nil {
		l.deps.Log.Error("clickhouselogger: cannot connect to ClickHouse: rows will not be inserted", zap.Error(err))
		l.backend.Set(core.StateDown, err)
		f.mu.Lock()
		f.down = true
		f.mu.Unlock()
	} else {
		f.client.beforeInsert = f.beforeInsert
		if err := l.deps.Metrics.Register(f.client.inserts); err != nil {
			l.deps.Log.Warn("clickhouselogger: per-server insert counters not exported", zap.Error(err))
		}
		if sp := l.spool.Load(); sp != nil && sp.rows.Load() > 0 {
			// Rows from an earlier runner wait: find out now whether they
			// can go. Otherwise ClickHouse is first contacted with the first
			// batch, so a runner whose routes do not use the logger never
			// reports it (its state stays unknown, not down).
			l.probe()
		}
	}
	l.updateStatus()

	t := time.NewTicker(l.cfg.FlushInterval.D())
	defer t.Stop()
	for {
		select {
		case <-l.q.ready:
			l.flushFull()
		case <-t.C:
			l.tick()
		case <-l.stop:
			l.drain()
			return
		case <-ctx.Done():
			l.drain()
			return
		}
	}
}

// flushFull delivers every full batch waiting.
func (l *Logger) flushFull() {
	for b := l.q.pop(false); b != nil; b = l.q.pop(false) {
		l.dispatch(b)
		if l.stopRequested() {
			return
		}
	}
}

// tick runs every flush_interval: it flushes partial batches, probes a down
// server, replays the spool and refreshes /status.
func (l *Logger) tick() {
	f := &l.fl
	// Take what was queued before this tick, full or not; rows queued while
	// flushing wait for the next round, so a steady trickle cannot keep the
	// flusher here.
	for n := l.q.batchCount(); n > 0; n-- {
		b := l.q.pop(true)
		if b == nil {
			break
		}
		l.dispatch(b)
		if l.stopRequested() {
			return
		}
	}
	f.mu.Lock()
	down, nextProbe, partial := f.down, f.nextProbe, f.partial
	f.mu.Unlock()
	if down && f.client != nil && !time.Now().Before(nextProbe) {
		l.probe()
	} else if f.client != nil {
		f.client.probeDue() // servers down while others take the batches
		if partial && f.client.outage() == nil {
			l.markUp() // they are back, with or without traffic
		}
	}
	l.replay()
	l.updateStatus()
	l.reportDrops()
}

func (l *Logger) stopRequested() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// probe pings the server and records the state.
func (l *Logger) probe() {
	f := &l.fl
	ctx, cancel := context.WithTimeout(l.hard, l.cfg.DialTimeout.D()+time.Second)
	err := f.client.ping(ctx)
	cancel()
	if err != nil {
		l.markDown(err)
		return
	}
	l.markUp()
}

func (l *Logger) markUp() {
	f := &l.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
	f.probeWait = l.cfg.Retries.Backoff.D()
	f.partial = false
	if err := f.client.outage(); err != nil {
		// Other servers of clickhouse.addrs take the batches.
		f.partial = true
		l.backend.Set(core.StateDegraded, err)
		return
	}
	l.backend.Set(core.StateOK, nil)
}

func (l *Logger) markDown(err error) {
	f := &l.fl
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = true
	f.partial = false
	f.nextProbe = time.Now().Add(f.probeWait)
	f.probeWait = min(2*f.probeWait, l.cfg.Retries.MaxBackoff.D())
	l.backend.Set(core.StateDown, err)
}

// tableOf resolves a row's table.
func (l *Logger) tableOf(r *row) string {
	if r.table != "" {
		return r.table
	}
	return l.cfg.Table
}

// isDown reports whether the backend is marked down, and when it is
// probed next.
func (f *flusher) isDown() (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down, f.nextProbe
}

// dispatch delivers one popped batch: at once with insert_concurrency 1,
// else in a goroutine of its own once fewer than insert_concurrency are in
// flight (it waits for one to end). The batch stays counted in memory
// (max_pending) until its delivery ends.
func (l *Logger) dispatch(b []row) {
	f := &l.fl
	if cap(f.slots) <= 1 {
		l.deliver(b)
		return
	}
	f.slots <- struct{}{}
	f.inflight.Add(1)
	go func() {
		defer func() {
			<-f.slots
			f.inflight.Done()
		}()
		l.deliver(b)
		// As after a tick's deliveries: /status shows where the rows went
		// (the spool's size) without waiting for the next tick.
		l.updateStatus()
	}()
}

// deliver resolves one popped batch and releases it.
func (l *Logger) deliver(b []row) {
	defer l.q.release(b)
	first := l.tableOf(&b[0])
	same := true
	for i := range b {
		if l.tableOf(&b[i]) != first {
			same = false
			break
		}
	}
	if same {
		l.deliverTable(first, b)
		return
	}
	groups := map[string][]row{}
	var order []string
	for i := range b {
		t := l.tableOf(&b[i])
		if _, ok := groups[t]; !ok {
			order = append(order, t)
		}
		groups[t] = append(groups[t], b[i])
	}
	for _, t := range order {
		l.deliverTable(t, groups[t])
	}
}

// deliverTable inserts rows into table, or spools or drops them.
func (l *Logger) deliverTable(table string, rows []row) {
	f := &l.fl
	n := len(rows)
	if f.stopping.Load() {
		l.finalRows(table, rows)
		return
	}
	sp := l.spool.Load()
	down, nextProbe := f.isDown()
	if f.client == nil || (sp != nil && down && time.Now().Before(nextProbe)) {
		l.undeliverable(table, rows, reasonInsertFailed)
		return
	}
	attempts := l.cfg.Retries.MaxAttempts
	if sp != nil && down {
		attempts = 1 // a probe: the spool keeps the rows safe meanwhile
	}
	err := l.insertRetry(table, rows, attempts)
	switch {
	case err == nil:
		l.n.inserted.Add(uint64(n))
	case errors.Is(err, errStopping):
		l.finalRows(table, rows)
	default:
		l.undeliverable(table, rows, reasonInsertFailed)
	}
}

// undeliverable spools rows when the spool is on, else drops them for
// reason.
func (l *Logger) undeliverable(table string, rows []row, reason string) {
	sp := l.spool.Load()
	if sp == nil {
		if l.cfg.Spool.Enabled {
			reason = reasonSpoolFull // the spool is on but could not be opened
		}
		l.n.drop(reason, len(rows))
		return
	}
	if err := sp.write(table, rows); err != nil {
		if !errors.Is(err, errSpoolFull) {
			l.deps.Throttle.Error("clickhouselogger:spool", "clickhouselogger: spool write failed: rows dropped (reason spool_full)", err)
		}
		l.n.drop(reasonSpoolFull, len(rows))
		return
	}
	l.n.spooled.Add(uint64(len(rows)))
}

// insertRetry tries one insert up to attempts times with backoff. It
// returns errStopping when the runner began shutting down during a wait.
func (l *Logger) insertRetry(table string, rows []row, attempts int) error {
	f := &l.fl
	wait := l.cfg.Retries.Backoff.D()
	for a := 1; ; a++ {
		err := l.insertOnce(table, rows)
		if err == nil {
			l.markUp()
			return nil
		}
		l.deps.Throttle.Warn("clickhouselogger:insert", "clickhouselogger: insert failed", err,
			zap.String("table", table), zap.Int("rows", len(rows)), zap.Int("attempt", a))
		last := a >= attempts
		switch {
		case permanent(err):
			// The server answers but refuses the rows: it is not down.
			f.mu.Lock()
			f.partial = false
			f.mu.Unlock()
			l.backend.Set(core.StateDegraded, err)
			return err
		case last:
			l.markDown(err)
			return err
		default:
			if l.backend.State() == core.StateOK || l.backend.State() == core.StateUnknown {
				l.backend.Set(core.StateDegraded, err)
			}
			f.mu.Lock()
			f.partial = false
			f.mu.Unlock()
		}
		if f.stopping.Load() {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-l.stop:
			t.Stop()
			return errStopping
		case <-t.C:
		}
		wait = min(2*wait, l.cfg.Retries.MaxBackoff.D())
	}
}

// insertOnce is one attempt of a batch: one INSERT, on the next server of
// clickhouse.addrs, failing over to the others (each bounded by
// read_timeout, all by the shutdown). The client picks the server.
func (l *Logger) insertOnce(table string, rows []row) error {
	start := time.Now()
	err := l.fl.client.insert(l.hard, table, rows)
	result := "ok"
	if err != nil {
		result = "error"
	}
	l.m.batch.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return err
}

// drain is the shutdown flush: every batch left is inserted if time
// remains, else spooled or dropped (reason shutdown).
func (l *Logger) drain() {
	f := &l.fl
	f.stopping.Store(true)
	for b := l.q.pop(true); b != nil; b = l.q.pop(true) {
		l.dispatch(b)
	}
	f.inflight.Wait()
	l.updateStatus()
	l.reportDrops()
	if f.client != nil {
		f.client.close()
	}
	if sp := l.spool.Load(); sp != nil {
		sp.close()
	}
}

// finalRows resolves rows during the shutdown: one insert if the deadline
// allows and the server is not known down, then the spool or a drop.
func (l *Logger) finalRows(table string, rows []row) {
	f := &l.fl
	left := time.Until(time.Unix(0, l.drainBy.Load()))
	down, _ := f.isDown()
	if f.client != nil && left > 0 && !(down && l.spool.Load() != nil) {
		if err := l.insertOnce(table, rows); err == nil {
			l.markUp()
			l.n.inserted.Add(uint64(len(rows)))
			return
		} else {
			l.deps.Throttle.Warn("clickhouselogger:insert", "clickhouselogger: insert failed during shutdown", err, zap.String("table", table), zap.Int("rows", len(rows)))
		}
	}
	l.undeliverable(table, rows, reasonShutdown)
}

// replay inserts spooled batches, oldest first, while the server answers.
// Live batches that fill up meanwhile go first.
func (l *Logger) replay() {
	f := &l.fl
	sp := l.spool.Load()
	if down, _ := f.isDown(); sp == nil || f.client == nil || down || !sp.tryLock() {
		return
	}
	if time.Since(f.lastScan) > 10*time.Second {
		// Pick up files written by another runner (the old one during a
		// reload).
		_ = sp.scan()
		f.lastScan = time.Now()
	}
	for !l.stopRequested() {
		file, ok := sp.oldest()
		if !ok {
			return
		}
		table, rows, err := sp.read(file)
		if err == nil && int64(len(rows)) != file.rows {
			err = fmt.Errorf("read spool %s: %d rows, name says %d: %w", file.name, len(rows), file.rows, errSpoolCorrupt)
		}
		if err != nil {
			l.deps.Throttle.Error("clickhouselogger:spool-read", "clickhouselogger: spool file unreadable: its rows are dropped (reason invalid)", err)
			sp.remove(file)
			l.n.drop(reasonInvalid, int(file.rows))
			continue
		}
		f.slots <- struct{}{} // one of the inserts in flight
		err = l.insertRetry(table, rows, 1)
		<-f.slots
		if err != nil {
			if permanent(err) {
				f.fileFailures[file.name]++
				if f.fileFailures[file.name] >= l.cfg.Retries.MaxAttempts {
					delete(f.fileFailures, file.name)
					sp.remove(file)
					l.n.drop(reasonInsertFailed, len(rows))
					continue
				}
			} else {
				l.markDown(err)
			}
			return
		}
		delete(f.fileFailures, file.name)
		sp.remove(file)
		l.n.inserted.Add(uint64(len(rows)))
		l.n.replayed.Add(uint64(len(rows)))
		l.flushFull()
	}
}

// updateStatus refreshes the /status details of the clickhouse backend.
func (l *Logger) updateStatus() {
	b := l.backend
	b.SetDetail("queue_rows", l.q.rows())
	if c := l.fl.client; c != nil && len(c.servers) > 1 {
		b.SetDetail("servers_down", c.downAddrs())
	}
	if sp := l.spool.Load(); sp != nil {
		b.SetDetail("spool_rows", sp.rows.Load())
		b.SetDetail("spool_bytes", sp.bytes.Load())
		b.SetDetail("spool_oldest_age_seconds", int64(sp.age().Seconds()))
	} else if l.cfg.Spool.Enabled {
		b.SetDetail("spool", "unavailable")
	} else {
		b.SetDetail("spool", "off")
	}
}

// reportDrops logs the drops since the last report, throttled: never one
// line per row.
func (l *Logger) reportDrops() {
	total := l.n.droppedTotal()
	if total == l.fl.lastDropped {
		return
	}
	l.fl.lastDropped = total
	fields := make([]zap.Field, 0, len(dropReasons))
	for i, r := range dropReasons {
		if v := l.n.dropped[i].Load(); v > 0 {
			fields = append(fields, zap.Uint64(r, v))
		}
	}
	l.deps.Throttle.Warn("clickhouselogger:drops", "clickhouselogger: access-log rows dropped (totals by reason)", nil, fields...)
}
