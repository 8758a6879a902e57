package clickhouselogger

import (
	"sync/atomic"

	"github.com/apisix-edge/edge-runner/core"
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a row is dropped (the reason label of rows_dropped_total).
const (
	reasonQueueFull    = "queue_full"    // max_pending rows already in memory
	reasonInsertFailed = "insert_failed" // attempts exhausted, spool off (or a spooled batch the server refuses)
	reasonSpoolFull    = "spool_full"    // the spool could not take the batch (cap reached, or a disk error)
	reasonShutdown     = "shutdown"      // still pending when the shutdown flush ended, spool off
	reasonInvalid      = "invalid"       // a spool file that cannot be read back
)

var dropReasons = []string{reasonQueueFull, reasonInsertFailed, reasonSpoolFull, reasonShutdown, reasonInvalid}

// counters are the logger's row accounting. The request path touches only
// atomics; Prometheus reads them at scrape time through collector, and
// /status through snapshot, so both always agree.
type counters struct {
	enqueued        atomic.Uint64
	inserted        atomic.Uint64
	sampledOut      atomic.Uint64
	spooled         atomic.Uint64
	replayed        atomic.Uint64
	dropped         [5]atomic.Uint64 // indexed like dropReasons
	compositeMisses atomic.Uint64
}

func (c *counters) drop(reason string, n int) {
	for i, r := range dropReasons {
		if r == reason {
			c.dropped[i].Add(uint64(n))
			return
		}
	}
}

func (c *counters) droppedTotal() uint64 {
	var t uint64
	for i := range c.dropped {
		t += c.dropped[i].Load()
	}
	return t
}

// metrics is what the logger registers.
type metrics struct {
	batch *prometheus.HistogramVec
}

func name(n string) string { return prometheus.BuildFQName(core.Namespace, "", n) }

// collector exports the counters and gauges at scrape time.
type collector struct {
	l *Logger

	enqueued, inserted, dropped, sampledOut, spooled, replayed *prometheus.Desc
	queueRows, spoolBytes, spoolAge                            *prometheus.Desc
}

func newCollector(l *Logger) *collector {
	return &collector{
		l:          l,
		enqueued:   prometheus.NewDesc(name("log_rows_enqueued_total"), "Rows handed to the logger's queue after sampling (accepted, or dropped at once as queue_full).", nil, nil),
		inserted:   prometheus.NewDesc(name("log_rows_inserted_total"), "Rows inserted into ClickHouse (from memory or replayed from the spool).", nil, nil),
		dropped:    prometheus.NewDesc(name("log_rows_dropped_total"), "Rows lost, by reason: queue_full, insert_failed, spool_full, shutdown, invalid.", []string{"reason"}, nil),
		sampledOut: prometheus.NewDesc(name("log_rows_sampled_out_total"), "Requests not logged because of a route's sample_ratio.", nil, nil),
		spooled:    prometheus.NewDesc(name("log_rows_spooled_total"), "Rows written to the on-disk spool.", nil, nil),
		replayed:   prometheus.NewDesc(name("log_rows_replayed_total"), "Rows inserted from the spool (also counted in inserted).", nil, nil),
		queueRows:  prometheus.NewDesc(name("log_queue_rows"), "Rows pending in memory (queued or in an insert being tried).", nil, nil),
		spoolBytes: prometheus.NewDesc(name("log_spool_bytes"), "Size of the on-disk spool.", nil, nil),
		spoolAge:   prometheus.NewDesc(name("log_spool_oldest_age_seconds"), "Age of the oldest row in the spool (0 when empty).", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.enqueued, c.inserted, c.dropped, c.sampledOut, c.spooled, c.replayed, c.queueRows, c.spoolBytes, c.spoolAge} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	n := &c.l.n
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.enqueued, n.enqueued.Load())
	counter(c.inserted, n.inserted.Load())
	for i, r := range dropReasons {
		counter(c.dropped, n.dropped[i].Load(), r)
	}
	counter(c.sampledOut, n.sampledOut.Load())
	counter(c.spooled, n.spooled.Load())
	counter(c.replayed, n.replayed.Load())
	ch <- prometheus.MustNewConstMetric(c.queueRows, prometheus.GaugeValue, float64(c.l.q.rows()))
	var bytes, age float64
	if s := c.l.spool.Load(); s != nil {
		bytes, age = float64(s.bytes.Load()), s.age().Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.spoolBytes, prometheus.GaugeValue, bytes)
	ch <- prometheus.MustNewConstMetric(c.spoolAge, prometheus.GaugeValue, age)
}

func newMetrics(reg prometheus.Registerer, l *Logger) *metrics {
	m := &metrics{
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: core.Namespace, Name: "log_batch_seconds",
			Help:    "Latency of one batch INSERT into ClickHouse, by result (ok, error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
	}
	m.batch.WithLabelValues("ok")
	m.batch.WithLabelValues("error")
	reg.MustRegister(m.batch, newCollector(l))
	return m
}
