package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

// statusDoc is the part of the runner's /status that the matrix reads.
type statusDoc struct {
	Backends map[string]struct {
		State  string         `json:"state"`
		Detail map[string]any `json:"detail"`
	} `json:"backends"`
	Plugins struct {
		Logger loggerSnap `json:"clickhouselogger"`
	} `json:"plugins"`
}

// loggerSnap mirrors the clickhouselogger's /status counters.
type loggerSnap struct {
	Enqueued       int64            `json:"enqueued"`
	Inserted       int64            `json:"inserted"`
	Dropped        map[string]int64 `json:"dropped"`
	Spooled        int64            `json:"spooled"`
	Replayed       int64            `json:"replayed"`
	QueueRows      int64            `json:"queue_rows"`
	SpoolRows      int64            `json:"spool_rows"`
	SpoolInherited int64            `json:"spool_inherited"`
}

func (l loggerSnap) dropped() int64 {
	var n int64
	for _, v := range l.Dropped {
		n += v
	}
	return n
}

// pending are the rows neither inserted nor dropped: in memory or spooled.
func (l loggerSnap) pending() int64 { return l.QueueRows + l.SpoolRows }

// balanced reports the logger's accounting identity:
// enqueued + spool_inherited = inserted + dropped + queue_rows + spool_rows.
func (l loggerSnap) balanced() bool {
	return l.Enqueued+l.SpoolInherited == l.Inserted+l.dropped()+l.pending()
}

func (d *statusDoc) backendState(name string) string {
	if b, ok := d.Backends[name]; ok {
		return b.State
	}
	return ""
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

// adminGet reads base+path from the runner's admin listener; errors are
// prefixed with the path's name ("status: …"). The status code is left to
// the caller.
func adminGet(ctx context.Context, base, path string) (body []byte, code int, err error) {
	name := strings.TrimPrefix(path, "/")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	return b, resp.StatusCode, nil
}

func fetchStatus(ctx context.Context, base string) (*statusDoc, error) {
	b, code, err := adminGet(ctx, base, "/status")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("status: HTTP %d", code)
	}
	var d statusDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return &d, nil
}

// fetchMetrics reads /metrics into series → value (testbed.ParseMetrics),
// whatever the status code.
func fetchMetrics(ctx context.Context, base string) (map[string]float64, error) {
	b, _, err := adminGet(ctx, base, "/metrics")
	if err != nil {
		return nil, err
	}
	return testbed.ParseMetrics(string(b)), nil
}

// metricValue sums the series of metric name whose label set contains sel
// (e.g. `outcome="accepted"`; "" for all); 0 for a nil m.
func metricValue(m map[string]float64, name, sel string) float64 {
	var sum float64
	for series, v := range m {
		labels, ok := strings.CutPrefix(series, name)
		if !ok || (labels != "" && labels[0] != '{') || !strings.Contains(labels, sel) {
			continue
		}
		sum += v
	}
	return sum
}

// poll is one /status reading taken during a run.
type poll struct {
	at  time.Time
	doc *statusDoc // nil when the admin listener did not answer
}

// poller reads /status every interval until stopped.
type poller struct {
	mu    sync.Mutex
	polls []poll
	stop  chan struct{}
	once  sync.Once
	done  chan struct{}
}

func startPoller(base string, every time.Duration) *poller {
	p := &poller{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			d, err := fetchStatus(ctx, base)
			cancel()
			if err != nil {
				d = nil
			}
			p.mu.Lock()
			p.polls = append(p.polls, poll{at: time.Now(), doc: d})
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// close stops the poller; it may be called more than once.
func (p *poller) close() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

// all returns the readings so far.
func (p *poller) all() []poll {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]poll(nil), p.polls...)
}

// lastBefore returns the last successful reading taken before t.
func (p *poller) lastBefore(t time.Time) *statusDoc {
	var d *statusDoc
	for _, x := range p.all() {
		if x.at.After(t) {
			break
		}
		if x.doc != nil {
			d = x.doc
		}
	}
	return d
}

// firstAfter returns the time of the first successful reading after t for
// which cond holds.
func (p *poller) firstAfter(t time.Time, cond func(*statusDoc) bool) (time.Time, bool) {
	for _, x := range p.all() {
		if x.at.Before(t) || x.doc == nil {
			continue
		}
		if cond(x.doc) {
			return x.at, true
		}
	}
	return time.Time{}, false
}
