package clickhouselogger

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func TestQueue(t *testing.T) {
	q := newQueue(5, 2)
	r := row{method: "GET"}
	var results []pushResult
	for i := 0; i < 6; i++ {
		results = append(results, q.push(&r))
	}
	want := []pushResult{pushed, pushed, pushed, pushed, pushed, pushFull}
	for i := range want {
		if results[i] != want[i] {
			t.Fatalf("push %d: got %v, want %v", i, results[i], want[i])
		}
	}
	if !q.full() || q.rows() != 5 {
		t.Fatalf("got full=%v rows=%d, want full with 5 rows", q.full(), q.rows())
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("got no ready signal after a batch filled")
	}
	// Full batches first, oldest first; a partial one only when asked.
	if b := q.pop(false); len(b) != 2 {
		t.Fatalf("got a batch of %d, want 2", len(b))
	} else {
		// Popped rows stay counted until released: max_pending bounds
		// them too.
		if q.rows() != 5 || q.push(&r) != pushFull {
			t.Fatalf("got rows=%d after pop, want 5 and still full", q.rows())
		}
		q.release(b)
	}
	if q.rows() != 3 {
		t.Fatalf("got rows=%d after release, want 3", q.rows())
	}
	if b := q.pop(false); len(b) != 2 {
		t.Fatalf("got %d, want the second full batch", len(b))
	} else {
		q.release(b)
	}
	if b := q.pop(false); b != nil {
		t.Fatalf("got a partial batch of %d without asking, want nil", len(b))
	}
	if b := q.pop(true); len(b) != 1 {
		t.Fatalf("got %d, want the partial batch of 1", len(b))
	} else {
		q.release(b)
	}
	if q.rows() != 0 || q.pop(true) != nil {
		t.Fatalf("got rows=%d, want an empty queue", q.rows())
	}
	q.close()
	if got := q.push(&r); got != pushClosed {
		t.Fatalf("push after close: got %v, want pushClosed", got)
	}
}

// TestQueueConcurrent: with producers and a consumer racing, every row is
// either accepted and popped exactly once, or refused as full; the bound is
// never exceeded.
func TestQueueConcurrent(t *testing.T) {
	const producers, each, max = 8, 5000, 300
	q := newQueue(max, 64)
	var accepted, refused [producers]int
	var wg sync.WaitGroup
	var finished atomic.Int32
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			defer finished.Add(1)
			r := row{status: uint16(p)}
			for i := 0; i < each; i++ {
				switch q.push(&r) {
				case pushed:
					accepted[p]++
				case pushFull:
					refused[p]++
				}
			}
		}(p)
	}
	done := make(chan struct{})
	popped := 0
	go func() {
		defer close(done)
		for {
			if n := q.rows(); n > max {
				t.Errorf("got %d rows in memory, want at most %d", n, max)
			}
			b := q.pop(true)
			if b == nil {
				select {
				case <-q.ready:
				default:
				}
				if finished.Load() == producers && q.rows() == 0 {
					return
				}
				continue
			}
			popped += len(b)
			q.release(b)
		}
	}()
	wg.Wait()
	<-done
	total := 0
	for p := range accepted {
		total += accepted[p]
		if accepted[p]+refused[p] != each {
			t.Errorf("producer %d: %d accepted + %d refused, want %d", p, accepted[p], refused[p], each)
		}
	}
	if popped != total {
		t.Errorf("got %d rows popped, want %d accepted", popped, total)
	}
}

// TestQueuePushMany: a bulk push fills batches of batch_size in order,
// stops at max_pending (the rest counted full) and refuses everything
// once the queue is closed.
func TestQueuePushMany(t *testing.T) {
	q := newQueue(25, 10)
	rows := make([]row, 12)
	for i := range rows {
		rows[i].tsMilli = int64(i)
	}
	if p, f, c := q.pushMany(rows[:3]); p != 3 || f != 0 || c != 0 {
		t.Fatalf("first push: got %d %d %d, want 3 queued", p, f, c)
	}
	if p, f, c := q.pushMany(rows); p != 12 || f != 0 || c != 0 {
		t.Fatalf("second push: got %d %d %d, want 12 queued", p, f, c)
	}
	if p, f, c := q.pushMany(rows); p != 10 || f != 2 || c != 0 {
		t.Fatalf("third push: got %d %d %d, want 10 queued, 2 full", p, f, c)
	}
	var got []int64
	for b := q.pop(true); b != nil; b = q.pop(true) {
		if len(b) > 10 {
			t.Errorf("a batch of %d rows, want at most 10", len(b))
		}
		for _, r := range b {
			got = append(got, r.tsMilli)
		}
		q.release(b)
	}
	want := []int64{0, 1, 2}
	for range 2 {
		for i := range rows {
			want = append(want, int64(i))
		}
	}
	want = want[:25]
	if !slices.Equal(got, want) {
		t.Errorf("got rows %v, want %v", got, want)
	}
	if q.rows() != 0 {
		t.Errorf("%d rows in memory after release, want 0", q.rows())
	}
	q.close()
	if p, f, c := q.pushMany(rows); p != 0 || f != 0 || c != 12 {
		t.Errorf("after close: got %d %d %d, want 12 closed", p, f, c)
	}
}

// BenchmarkPushMany is the ingest's hand-off of a decoded batch of 1000
// rows to the queue (the flusher's part amortized: a batch of 10000 taken
// and released every ten pushes).
func BenchmarkPushMany(b *testing.B) {
	q := newQueue(1<<20, 10000)
	rows := make([]row, 1000)
	for i := range rows {
		rows[i] = row{tsMilli: 1, status: 200, routeID: "r", method: "GET", host: "h", path: "/p", clientIP: "ip", userAgent: "ua", requestID: "id", source: sourceLog}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		q.pushMany(rows)
		if i++; i == 10 {
			q.release(q.pop(true))
			i = 0
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(rows)), "ns/row")
}
