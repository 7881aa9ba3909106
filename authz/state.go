package authz

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
)

// State is an immutable snapshot of everything a decision reads besides
// the request: policies, revocations and approvals. Every change builds a
// new State with a new Epoch, and decisions cached under an older epoch
// are never served again.
type State struct {
	Policies    *policies.Set
	Revocations *revocation.Set
	Approvals   *ApprovalSet
	// Epoch increases with every change (assigned by StateStore).
	Epoch uint64
	// PolicyEpoch increases only when Policies change: it tags decision
	// cache entries. Revocations and approvals are consulted on every
	// request, outside the cache, so changing them keeps the cache warm
	// (a fill computed before a revocation is harmless: the revocation is
	// checked before any cached decision is used).
	PolicyEpoch uint64
	// Loaded is when this state was installed.
	Loaded time.Time

	// keySel says which headers and MCP arguments the policies read, for
	// the cache key.
	keySel attrs.KeySelection
}

// PolicyVersion returns the policy set's version, or "" without one.
func (s *State) PolicyVersion() string {
	if s == nil || s.Policies == nil {
		return ""
	}
	return s.Policies.Version()
}

// StateStore holds the current State. Readers never block; writers are
// serialized. The zero value holds no state: decisions deny (not ready)
// until the first Update.
type StateStore struct {
	cur         atomic.Pointer[State]
	mu          sync.Mutex
	epoch       uint64
	policyEpoch uint64
	now         func() time.Time
}

// NewStateStore returns an empty store.
func NewStateStore(now func() time.Time) *StateStore {
	if now == nil {
		now = time.Now
	}
	return &StateStore{now: now}
}

// Load returns the current state, or nil before the first Update.
func (s *StateStore) Load() *State { return s.cur.Load() }

// Update installs the state fn derives from the current one (a copy of it,
// or an empty State before the first update). Missing parts are filled
// with empty sets. It returns the installed state.
func (s *StateStore) Update(fn func(next *State)) *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := &State{}
	if cur := s.cur.Load(); cur != nil {
		*next = *cur
	}
	fn(next)
	if next.Revocations == nil {
		next.Revocations = revocation.Empty()
	}
	if next.Approvals == nil {
		next.Approvals = &ApprovalSet{}
	}
	if cur := s.cur.Load(); cur == nil || cur.Policies != next.Policies {
		next.keySel = attrs.NewKeySelection(next.Policies)
	}
	s.epoch++
	next.Epoch = s.epoch
	if cur := s.cur.Load(); cur == nil || cur.Policies != next.Policies {
		s.policyEpoch++
	}
	next.PolicyEpoch = s.policyEpoch
	next.Loaded = s.now()
	s.cur.Store(next)
	return next
}
