package issuer

import (
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/authz/identity"
)

// maxTasks bounds the task index; the oldest tasks are forgotten first.
const maxTasks = 100_000

// taskIndex remembers, per task, who issued or delegated its mandates and
// how many: enough to let an orchestrator complete the tasks it started.
// It is rebuilt from the audit trail on start.
type taskIndex struct {
	mu    sync.Mutex
	max   int
	tasks map[string]*taskEntry
	order []string // insertion order, for eviction
}

type taskEntry struct {
	callers  map[string]struct{}
	mandates int
	done     *Completed // the completion in force, if any
}

func newTaskIndex(max int) *taskIndex {
	return &taskIndex{max: max, tasks: map[string]*taskEntry{}}
}

func (t *taskIndex) add(task, caller, id string) {
	if task == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.tasks[task]
	if e == nil {
		for len(t.tasks) >= t.max && len(t.order) > 0 {
			delete(t.tasks, t.order[0])
			t.order = t.order[1:]
		}
		e = &taskEntry{callers: map[string]struct{}{}}
		t.tasks[task] = e
		t.order = append(t.order, task)
	}
	if len(e.callers) < 64 {
		e.callers[caller] = struct{}{}
	}
	e.mandates++
}

func (t *taskIndex) issuedBy(task, caller string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.tasks[task]
	if e == nil {
		return false
	}
	_, ok := e.callers[caller]
	return ok
}

// complete records the completion of a task and returns how many
// mandates it had.
func (t *taskIndex) complete(task string, c *Completed) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.tasks[task]
	if e == nil {
		for len(t.tasks) >= t.max && len(t.order) > 0 {
			delete(t.tasks, t.order[0])
			t.order = t.order[1:]
		}
		e = &taskEntry{callers: map[string]struct{}{}}
		t.tasks[task] = e
		t.order = append(t.order, task)
	}
	e.done = c
	return e.mandates
}

// completed returns the completion of task still in force at now.
func (t *taskIndex) completed(task string, now time.Time) (*Completed, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.tasks[task]; e != nil && e.done != nil && now.Before(e.done.Expires) {
		c := *e.done
		return &c, true
	}
	return nil, false
}

// checkSPIFFE checks a workload SPIFFE ID with Mandate's one checker.
func checkSPIFFE(field, s string) (spiffeid.ID, error) {
	id, err := identity.ParseID(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s %q: %w", field, s, err)
	}
	return id, nil
}

// checkLabel accepts what a mandate accepts for task and intent: 1..128 of
// [A-Za-z0-9._:/@-].
func checkLabel(field, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s must be 1..128 bytes", field)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '-'
		if !ok {
			return fmt.Errorf("%s: byte %q not allowed", field, c)
		}
	}
	return nil
}
