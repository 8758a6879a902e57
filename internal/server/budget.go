package server

import "sync/atomic"

// frameBudget bounds, runner-wide, the bytes held by frames still being
// received: buffers grow with the bytes that actually arrive, never with
// the length a frame announces, and every growth is charged here first. A
// growth that does not fit is refused: the connection is closed and the
// refusal counted, so half-sent frames cannot add up to an out-of-memory
// kill (which would mean 503 on every route until APISIX respawns us).
type frameBudget struct {
	max  int64
	used atomic.Int64
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

func (b *frameBudget) give(n int64) {
	if n != 0 {
		b.used.Add(-n)
	}
}
