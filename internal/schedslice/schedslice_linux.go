package schedslice

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// set walks /proc/self/task until a pass finds no thread it has not set:
// a thread created meanwhile by a thread already set inherits the slice,
// one created by a thread not yet set is found by the next pass.
func set(d time.Duration) (int, error) {
	done := map[int]bool{}
	for {
		tids, err := threads()
		if err != nil {
			return len(done), err
		}
		fresh := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh++
			if err := setThread(tid, d); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue // the thread ended
				}
				return len(done), err
			}
			done[tid] = true
		}
		if fresh == 0 {
			return len(done), nil
		}
	}
}

// setThread sets the slice of one thread, keeping its policy and nice
// value. Threads under a real-time or deadline policy are left alone.
func setThread(tid int, d time.Duration) error {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return fmt.Errorf("schedslice: read thread %d: %w", tid, err)
	}
	switch a.Policy {
	case unix.SCHED_NORMAL, unix.SCHED_BATCH:
	default:
		return nil
	}
	a.Size = unix.SizeofSchedAttr
	a.Runtime = uint64(d)
	a.Flags = 0
	if err := unix.SchedSetAttr(tid, a, 0); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("schedslice: the kernel refuses a custom slice (Linux 6.12 or later has them): %w", err)
		}
		return fmt.Errorf("schedslice: set thread %d: %w", tid, err)
	}
	return nil
}

func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("schedslice: list threads: %w", err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		tids = append(tids, tid)
	}
	return tids, nil
}
