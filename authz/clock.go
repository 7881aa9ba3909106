package authz

import (
	"sync/atomic"
	"time"
)

// clock reads the time a decision starts at with one monotonic clock
// reading: the wall time is derived from a base time.Now() taken at most
// clockRebase earlier (time.Now reads the wall clock and the monotonic
// one, and where the clock is paravirtualized each reading costs). The
// derived time is what time.Now would return, except after a step of
// the wall clock (a manual change, an NTP step), which it follows within
// clockRebase. Its monotonic reading is exact, so latencies measured
// from it (time.Since) are too.
type clock struct {
	base atomic.Pointer[time.Time]
}

// clockRebase bounds how long a base time is used.
const clockRebase = time.Second

func newClock() *clock {
	c := &clock{}
	t := time.Now()
	c.base.Store(&t)
	return c
}

// now returns the current time.
func (c *clock) now() time.Time {
	b := c.base.Load()
	d := time.Since(*b)
	if d >= 0 && d < clockRebase {
		return b.Add(d)
	}
	t := time.Now()
	c.base.Store(&t) // a concurrent rebase may store its own, as good
	return t
}
