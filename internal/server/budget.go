package server

import (
	"runtime/debug"
	"sync/atomic"
	"time"
)

// frameBudget bounds, runner-wide, the bytes held by frames still being
// received: buffers grow with the bytes that actually arrive, never with
// the length a frame announces, and every growth is charged here first. A
// growth that does not fit is refused: the connection is closed and the
// refusal counted, so half-sent frames cannot add up to an out-of-memory
// kill (which would mean 503 on every route until APISIX respawns us).
type frameBudget struct {
	max      int64
	used     atomic.Int64
	big      atomic.Bool  // a frame of releaseAfter or more was given back
	released atomic.Int64 // last release to the OS, unix nanoseconds
}

// take charges n bytes, and reports false (charging nothing) if the budget
// would be exceeded.
func (b *frameBudget) take(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// give returns n bytes. When the large frames are all gone again after
// holding at least releaseAfter, their memory is handed back to the
// operating system at once (at most every releaseEvery) instead of by the
// runtime's slow background scavenger: a burst of half frames must not
// leave the runner's RSS high.
func (b *frameBudget) give(n int64) {
	if n == 0 {
		return
	}
	if n >= releaseAfter {
		b.big.Store(true)
	}
	if b.used.Add(-n) != 0 || !b.big.Load() {
		return
	}
	now := time.Now().UnixNano()
	last := b.released.Load()
	if now-last < int64(releaseEvery) || !b.released.CompareAndSwap(last, now) {
		return
	}
	b.big.Store(false)
	go debug.FreeOSMemory()
}

const (
	releaseAfter = 4 << 20
	releaseEvery = 2 * time.Second
)
