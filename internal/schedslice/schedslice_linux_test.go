package schedslice

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slices returns the slice of every thread of the process.
func slices(t *testing.T) map[int]uint64 {
	t.Helper()
	tids, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]uint64{}
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue // ended
		}
		out[tid] = a.Runtime
	}
	return out
}

// TestSetCoversEveryThread: after Set, every thread of the process has
// the slice, and so has a thread created afterwards.
func TestSetCoversEveryThread(t *testing.T) {
	const d = 300 * time.Microsecond
	n, err := Set(d)
	if err != nil && strings.Contains(err.Error(), "refuses a custom slice") {
		t.Skipf("this kernel has no custom slices: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("set %d threads; a Go test process runs several", n)
	}
	for tid, s := range slices(t) {
		if s != uint64(d) {
			t.Fatalf("thread %d has slice %v after Set(%v)", tid, time.Duration(s), d)
		}
	}
	// Threads made after Set: each goroutine below holds a thread of its
	// own until all have reported, more than the process had.
	before := len(slices(t))
	const k = 16
	got, hold := make(chan uint64), make(chan struct{})
	for range k {
		go func() {
			runtime.LockOSThread() // the thread ends with the goroutine
			a, err := unix.SchedGetAttr(0, 0)
			if err != nil {
				got <- 0
			} else {
				got <- a.Runtime
			}
			<-hold
		}()
	}
	for range k {
		if s := <-got; s != uint64(d) {
			t.Fatalf("a thread made after Set has slice %v, want %v", time.Duration(s), d)
		}
	}
	after := len(slices(t))
	close(hold)
	if after < k {
		t.Fatalf("%d threads while %d goroutines hold one each (%d before)", after, k, before)
	}
}

func TestSetRefusesOutOfRange(t *testing.T) {
	for _, d := range []time.Duration{0, Min - 1, Max + 1, -time.Millisecond} {
		if _, err := Set(d); err == nil {
			t.Errorf("Set(%v) accepted", d)
		}
	}
}
