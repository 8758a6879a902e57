package clickhouselogger

import (
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
