package issuer

import (
	"sync"
	"time"
)

// orderLimiter holds new orders to at most n per sliding window, per
// account and per process. Unlike a blocking limiter it tells the caller how
// long the wait would be, so a handshake that cannot wait that long fails at
// once with the next possible time instead of hanging.
type orderLimiter struct {
	mu     sync.Mutex
	n      int
	window time.Duration
	events []time.Time // times of the last n reserved orders, oldest first
}

func newOrderLimiter(n int, window time.Duration) *orderLimiter {
	if n <= 0 || window <= 0 {
		return nil
	}
	return &orderLimiter{n: n, window: window}
}

// reserve takes a slot if one is free within maxWait and returns how long
// to wait before using it; otherwise it takes nothing and returns the wait
// that would have been needed and false.
func (l *orderLimiter) reserve(now time.Time, maxWait time.Duration) (time.Duration, bool) {
	if l == nil {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	at := now
	if len(l.events) >= l.n {
		if free := l.events[len(l.events)-l.n].Add(l.window); free.After(now) {
			at = free
		}
	}
	wait := at.Sub(now)
	if wait > maxWait {
		return wait, false
	}
	l.events = append(l.events, at)
	if len(l.events) > l.n {
		l.events = l.events[len(l.events)-l.n:]
	}
	return wait, true
}
