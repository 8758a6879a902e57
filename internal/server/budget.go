package server

import (
	"runtime/debug"
	"sync"
	"time"
)

// frameBudget bounds, runner-wide, the memory held by frames larger than
// smallFrame. Such a frame is received into fixed-size chunks that come
// from a free list or are allocated while the budget allows, so buffers
// grow with the bytes that actually arrive, never with the length a frame
// announces. A frame that needs a chunk the budget cannot give is refused:
// its connection is closed and the refusal counted. Only a complete frame
// is copied into one contiguous buffer (charged too) for decoding, and its
// chunks go back to the free list at once.
//
// Chunks are reused rather than left to the garbage collector, so that
// half-sent frames from many connections cannot add up to more than the
// budget in resident memory either (a collector lets the heap reach twice
// its live size). Once no large frame is held, the free list is dropped
// and the memory handed back to the operating system at once, at most
// every releaseEvery, instead of by the runtime's slow background
// scavenger.
type frameBudget struct {
	max int64

	mu       sync.Mutex
	used     int64    // bytes of chunks (in use or free) and contiguous buffers
	held     int64    // bytes of chunks in use and contiguous buffers
	free     [][]byte // chunks ready for reuse
	released time.Time
	retry    bool // a release is scheduled
}

const (
	chunkSize    = 256 << 10
	releaseEvery = 2 * time.Second
)

// chunk returns a chunk, or false when the budget is exhausted.
func (b *frameBudget) chunk() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.free); n > 0 {
		c := b.free[n-1]
		b.free[n-1] = nil
		b.free = b.free[:n-1]
		b.held += chunkSize
		return c, true
	}
	if b.used+chunkSize > b.max {
		return nil, false
	}
	b.used += chunkSize
	b.held += chunkSize
	return make([]byte, chunkSize), true
}

// putChunks returns chunks to the free list.
func (b *frameBudget) putChunks(cs [][]byte) {
	if len(cs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free = append(b.free, cs...)
	b.held -= int64(len(cs)) * chunkSize
	b.releaseLocked()
}

// take charges a contiguous buffer of n bytes, or reports false.
func (b *frameBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		// free chunks make room before anything is refused
		for len(b.free) > 0 && b.used+n > b.max {
			b.free[len(b.free)-1] = nil
			b.free = b.free[:len(b.free)-1]
			b.used -= chunkSize
		}
		if b.used+n > b.max {
			return false
		}
	}
	b.used += n
	b.held += n
	return true
}

// give returns a contiguous buffer's n bytes.
func (b *frameBudget) give(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.held -= n
	b.releaseLocked()
}

// releaseLocked drops the free list and hands the memory back to the OS
// once no large frame is held.
func (b *frameBudget) releaseLocked() {
	if b.held != 0 || len(b.free) == 0 {
		return
	}
	now := time.Now()
	if wait := releaseEvery - now.Sub(b.released); wait > 0 {
		if !b.retry {
			b.retry = true
			time.AfterFunc(wait, func() {
				b.mu.Lock()
				defer b.mu.Unlock()
				b.retry = false
				b.releaseLocked()
			})
		}
		return
	}
	b.released = now
	b.used -= int64(len(b.free)) * chunkSize
	clear(b.free)
	b.free = nil
	go debug.FreeOSMemory()
}

// inUse returns the bytes charged (held or free for reuse).
func (b *frameBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
