// Package schedslice asks the Linux scheduler (EEVDF, Linux 6.12 or later)
// for a short time slice on every thread of this process.
//
// A thread with a shorter slice gets an earlier virtual deadline when it
// wakes, so it runs soon after its wait ends instead of waiting for
// CPU-bound neighbours to use up their slices. Its share of the CPU is
// unchanged. mandate-cp sets it because every write waits in fdatasync
// (twice on bbolt) and then pushes to its replicas: on a node whose cores
// are busy, each wake-up would otherwise wait up to a slice of every
// runnable neighbour, and those waits are most of a revocation's p99.
package schedslice

import (
	"fmt"
	"time"
)

// The kernel's bounds of a slice.
const (
	Min = 100 * time.Microsecond
	Max = 100 * time.Millisecond
)

// Set gives every thread of the process the slice d, and so every thread
// created later (a new thread inherits it). It returns how many threads
// it set. It fails on a kernel that has no custom slices (before 6.12)
// and on other systems; the process then runs as before.
func Set(d time.Duration) (int, error) {
	if d < Min || d > Max {
		return 0, fmt.Errorf("schedslice: slice %v out of the kernel's range [%v, %v]", d, Min, Max)
	}
	return set(d)
}
