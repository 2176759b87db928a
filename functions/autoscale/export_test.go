package function

import "time"

// SetClock makes f read the time from now: the tests drive stabilization
// windows and cooldowns with it instead of waiting.
func (f *Function) SetClock(now func() time.Time) { f.now = now }
