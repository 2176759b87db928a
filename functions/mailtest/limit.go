package function

import (
	"sync"
	"time"
)

// limiter allows at most limit tests of one integration in any minute, in
// this instance: a sliding window of the tests' times.
type limiter struct {
	mu     sync.Mutex
	limit  int
	window time.Duration
	recent map[string][]time.Time
}

func newLimiter(limit int) *limiter {
	return &limiter{limit: limit, window: time.Minute, recent: map[string][]time.Time{}}
}

// allow records a test of id at now, or says how long until one is
// allowed.
func (l *limiter) allow(id string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.recent[id][:0]
	for _, t := range l.recent[id] {
		if now.Sub(t) < l.window {
			kept = append(kept, t)
		}
	}
	if len(kept) >= l.limit {
		l.recent[id] = kept
		wait := l.window - now.Sub(kept[0])
		if wait < time.Second {
			wait = time.Second
		}
		return wait, false
	}
	l.recent[id] = append(kept, now)
	// Forget integrations not tested for a while, so the map stays small.
	if len(l.recent) > 10000 {
		for k, ts := range l.recent {
			if len(ts) == 0 || now.Sub(ts[len(ts)-1]) >= l.window {
				delete(l.recent, k)
			}
		}
	}
	return 0, true
}
