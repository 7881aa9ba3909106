package authz

import (
	"testing"
	"time"
)

// TestClockFollowsTimeNow: the derived time's wall clock stays within
// the readings of time.Now around it, across rebases, and its monotonic
// reading orders it with them.
func TestClockFollowsTimeNow(t *testing.T) {
	c := newClock()
	old := time.Now().Add(-2 * clockRebase)
	for i := range 2000 {
		if i == 1000 {
			c.base.Store(&old) // a base past its age is replaced
		}
		before := time.Now()
		got := c.now()
		after := time.Now()
		if got.Before(before) || got.After(after) {
			t.Fatalf("%d: %v not between %v and %v (monotonic)", i, got, before, after)
		}
		// Without a wall-clock step, the wall readings agree too (to
		// rounding of the monotonic-to-wall offset).
		const slack = time.Millisecond
		if w := got.Round(0); w.Before(before.Round(0).Add(-slack)) || w.After(after.Round(0).Add(slack)) {
			t.Fatalf("%d: wall %v not between %v and %v", i, w, before.Round(0), after.Round(0))
		}
	}
	if b := c.base.Load(); !b.After(old) {
		t.Fatal("a base older than clockRebase was kept")
	}
}
