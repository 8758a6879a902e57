package clickhouselogger

import (
	"sync"
	"sync/atomic"
)

// pushResult is what happened to a row handed to the queue.
type pushResult int

const (
	pushed     pushResult = iota
	pushFull              // max_pending rows already in memory
	pushClosed            // shutting down
)

// queue is the bounded in-memory buffer between the request path and the
// flusher. It holds rows in batches of at most batchSize, oldest first; the
// flusher takes whole batches, so nothing is copied or shifted.
//
// inMem counts every row in memory that is not yet resolved: queued, or
// taken by the flusher and not yet inserted, spooled or dropped. It is what
// max_pending bounds, so memory stays bounded while an insert is retried.
type queue struct {
	max       int
	batchSize int
	inMem     atomic.Int64
	// ready has a token when a full batch waits for the flusher.
	ready chan struct{}

	mu      sync.Mutex
	batches [][]row
	free    [][]row // emptied batch buffers for reuse
	closed  bool
}

func newQueue(max, batchSize int) *queue {
	return &queue{max: max, batchSize: batchSize, ready: make(chan struct{}, 1)}
}

// full reports, without locking, whether a push would fail now. The request
// path checks it first so that it asks APISIX for nothing when the row
// would be dropped anyway.
func (q *queue) full() bool { return q.inMem.Load() >= int64(q.max) }

// push appends a copy of *r. It never blocks on the flusher.
func (q *queue) push(r *row) pushResult {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return pushClosed
	}
	if q.inMem.Load() >= int64(q.max) {
		q.mu.Unlock()
		return pushFull
	}
	q.inMem.Add(1)
	n := len(q.batches)
	if n == 0 || len(q.batches[n-1]) >= q.batchSize {
		q.batches = append(q.batches, q.newBuf())
		n++
	}
	b := append(q.batches[n-1], *r)
	q.batches[n-1] = b
	isFull := len(b) >= q.batchSize
	q.mu.Unlock()
	if isFull {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return pushed
}

func (q *queue) newBuf() []row {
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b
	}
	c := q.batchSize
	if c > 1024 {
		c = 1024 // grows by append up to batchSize; small batches stay small
	}
	return make([]row, 0, c)
}

// pop takes the oldest batch: only a full one unless partial is set. The
// rows stay counted in inMem until the flusher calls release.
func (q *queue) pop(partial bool) []row {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.batches) == 0 {
		return nil
	}
	b := q.batches[0]
	if len(b) == 0 || (!partial && len(b) < q.batchSize) {
		return nil
	}
	q.batches[0] = nil
	q.batches = q.batches[1:]
	if len(q.batches) == 0 {
		q.batches = nil // let the backing array go
	}
	return b
}

// release ends the flusher's hold on a batch popped earlier: its rows are
// resolved (inserted, spooled or dropped), and its buffer is reused.
func (q *queue) release(b []row) {
	q.inMem.Add(-int64(len(b)))
	clear(b) // drop the strings now, not when the buffer is reused
	q.mu.Lock()
	if len(q.free) < 4 {
		q.free = append(q.free, b[:0])
	}
	q.mu.Unlock()
}

// close makes every later push fail with pushClosed.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
}

// rows returns the rows in memory (queued or held by the flusher).
func (q *queue) rows() int64 { return q.inMem.Load() }

// batchCount returns the number of batches queued (the last may be
// partial).
func (q *queue) batchCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.batches)
}
