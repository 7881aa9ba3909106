package stepup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fakePlane struct {
	mu        sync.Mutex
	approvals map[string]*mandatev1.Approval
	actors    []string
	audits    []string
	// onPut runs at the start of PutApproval (outside the plane's lock).
	onPut func()
}

func (p *fakePlane) PutApproval(_ context.Context, a *mandatev1.Approval, actor string) (string, error) {
	if p.onPut != nil {
		p.onPut()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.approvals == nil {
		p.approvals = map[string]*mandatev1.Approval{}
	}
	p.approvals[a.GetName()] = proto.Clone(a).(*mandatev1.Approval)
	p.actors = append(p.actors, actor)
	return "3", nil
}

func (p *fakePlane) DeleteApproval(_ context.Context, name, actor string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.approvals[name]; !ok {
		return "", errors.New("not found")
	}
	delete(p.approvals, name)
	p.actors = append(p.actors, actor)
	return "4", nil
}

func (p *fakePlane) Audit(_ context.Context, actor, action, object, detail string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.audits = append(p.audits, actor+" "+action+" "+object+" "+detail)
	return nil
}

const op = "spiffe://example.org/mandate/operator"

func newSvc(t *testing.T, mod func(*Config)) (*Service, *fakePlane, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	plane := &fakePlane{}
	cfg := Config{Plane: plane, Now: clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, plane, clock
}

func event(id string, at time.Time) Event {
	return Event{ID: id, Subject: "spiffe://example.org/agent/a", Task: "t1", Intent: "pay", Method: "POST",
		Path: "/payments", Policy: "payments", Rule: "big", Time: at}
}

func TestObserveDeduplicates(t *testing.T) {
	s, _, clock := newSvc(t, nil)
	t0 := clock.Now()
	s.Observe([]Event{event("ar-1", t0), event("ar-1", t0.Add(time.Second)), event("ar-2", t0)})
	s.Observe([]Event{event("ar-1", t0.Add(2*time.Second))})
	l := s.List(false)
	if len(l) != 2 || l[0].ID != "ar-1" || l[0].Count != 3 || !l[0].FirstSeen.Equal(t0) || !l[0].LastSeen.Equal(t0.Add(2*time.Second)) || l[0].State != StatePending {
		t.Fatalf("List = %+v", l)
	}
	// Pending requests are forgotten PendingTTL after they were last seen.
	clock.Advance(DefaultPendingTTL + time.Second)
	if l := s.List(true); len(l) != 0 {
		t.Fatalf("expired requests still listed: %+v", l)
	}
}

func TestApproveAndDeny(t *testing.T) {
	s, plane, clock := newSvc(t, nil)
	ctx := context.Background()
	s.Observe([]Event{event("ar-1", clock.Now())})
	if _, _, err := s.Approve(ctx, op, "ar-missing", 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approve unknown = %v", err)
	}
	if _, _, err := s.Approve(ctx, op, "ar-1", 2*time.Hour, 0); err == nil {
		t.Fatal("approved for longer than the max window")
	}
	r, v, err := s.Approve(ctx, op, "ar-1", 0, 0)
	if err != nil || v != "3" {
		t.Fatal(v, err)
	}
	a := plane.approvals["ar-1"]
	want := &mandatev1.Approval{Name: "ar-1", Subject: "spiffe://example.org/agent/a", Task: "t1", Method: "POST", Path: "/payments",
		Policy: "payments", Rule: "big", ApprovedBy: op, Expires: a.GetExpires(), Uses: 1}
	if !proto.Equal(a, want) || !a.GetExpires().AsTime().Equal(clock.Now().Add(DefaultWindow)) || plane.actors[0] != op {
		t.Fatalf("approval = %v, want %v", a, want)
	}
	if r.State != StateApproved || r.DecidedBy != op {
		t.Fatalf("request = %+v", r)
	}
	if l := s.List(false); len(l) != 0 {
		t.Fatalf("approved request still pending: %+v", l)
	}
	if l := s.List(true); len(l) != 1 {
		t.Fatalf("--all does not show the approved request: %+v", l)
	}
	// Deny withdraws the approval, with the operator in the audit trail.
	r, v, err = s.Deny(ctx, op, "ar-1", "too risky")
	if err != nil || v != "4" || r.State != StateDenied {
		t.Fatal(r, v, err)
	}
	if _, ok := plane.approvals["ar-1"]; ok {
		t.Fatal("approval not withdrawn")
	}
	if len(plane.audits) != 1 || !strings.HasPrefix(plane.audits[0], op+" approval.deny approval/ar-1") || !strings.Contains(plane.audits[0], "too risky") {
		t.Fatalf("audit = %v", plane.audits)
	}
	// A denied request cannot be approved, nor reopened by new reports.
	s.Observe([]Event{event("ar-1", clock.Now())})
	if _, _, err := s.Approve(ctx, op, "ar-1", 0, 0); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve after deny = %v", err)
	}
	if l := s.List(false); len(l) != 0 {
		t.Fatalf("denied request reopened: %+v", l)
	}
}

// TestFloodNeverEvictsAnotherSubject: 12,000 step-up requests from one
// agent fill its own quota and are dropped past it; another agent's
// pending request stays, also across a restart (pending requests are in
// the store). Before, the flood evicted it.
func TestFloodNeverEvictsAnotherSubject(t *testing.T) {
	st := store.NewMemory()
	s, _, clock := newSvc(t, func(c *Config) { c.Store = st })
	victim := event("ar-victim", clock.Now())
	victim.Subject = "spiffe://example.org/agent/victim"
	s.Observe([]Event{victim})
	var flood []Event
	for i := range 12000 {
		clock.Advance(time.Millisecond)
		flood = append(flood, event(fmt.Sprintf("ar-flood-%05d", i), clock.Now()))
	}
	s.Observe(flood)
	l := s.List(false)
	if len(l) != DefaultMaxPendingPerSubject+1 || s.Dropped() != 12000-DefaultMaxPendingPerSubject {
		t.Fatalf("%d pending, %d dropped", len(l), s.Dropped())
	}
	found := func(s *Service) bool {
		for _, r := range s.List(false) {
			if r.ID == "ar-victim" {
				return true
			}
		}
		return false
	}
	if !found(s) {
		t.Fatal("the flood evicted another subject's request")
	}
	// A restart: the pending requests come back from the store.
	s2, _, _ := newSvc(t, func(c *Config) { c.Store = st; c.Now = clock.Now })
	if err := s2.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !found(s2) || len(s2.List(false)) != DefaultMaxPendingPerSubject+1 {
		t.Fatalf("after a restart: %d pending, victim kept %v", len(s2.List(false)), found(s2))
	}
}

// A Deny that lands while Approve pushes the Approval must not leave the
// approval in force.
func TestDenyDuringApproveWithdraws(t *testing.T) {
	s, plane, clock := newSvc(t, nil)
	ctx := context.Background()
	s.Observe([]Event{event("ar-1", clock.Now())})
	var denyErr error
	plane.onPut = func() { _, _, denyErr = s.Deny(ctx, op, "ar-1", "no") }
	if _, _, err := s.Approve(ctx, op, "ar-1", 0, 0); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve racing a deny = %v, want ErrDecided", err)
	}
	if denyErr != nil {
		t.Fatal(denyErr)
	}
	if _, ok := plane.approvals["ar-1"]; ok {
		t.Fatal("approval still in force after the deny")
	}
	if l := s.List(true); len(l) != 1 || l[0].State != StateDenied {
		t.Fatalf("request = %+v, want denied", l)
	}
}

func (p *fakePlane) Approvals() []*mandatev1.Approval {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*mandatev1.Approval, 0, len(p.approvals))
	for _, a := range p.approvals {
		out = append(out, a)
	}
	return out
}

// TestClaimCountsUses: an approval allows exactly its uses (default 1,
// or what the operator asked for), counted in the store shared by every
// control-plane instance; unknown and expired approvals allow nothing,
// and without a use store nothing is ever claimed.
func TestClaimCountsUses(t *testing.T) {
	ctx := context.Background()
	var clock *fakeClock
	st := store.NewMemory(store.WithClock(func() time.Time { return clock.Now() }))
	s, _, c := newSvc(t, func(cfg *Config) { cfg.Uses = st })
	clock = c
	s.Observe([]Event{event("ar-1", clock.Now()), event("ar-2", clock.Now())})
	if _, _, err := s.Approve(ctx, op, "ar-1", 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Approve(ctx, op, "ar-2", 0, 3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Approve(ctx, op, "ar-2", 0, MaxUses+1); err == nil {
		t.Fatal("uses over the limit accepted")
	}
	if used, limit, err := s.Claim(ctx, "ar-1"); err != nil || used != 1 || limit != 1 {
		t.Fatalf("first claim: %d/%d %v", used, limit, err)
	}
	if _, _, err := s.Claim(ctx, "ar-1"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("second claim of a one-use approval: %v", err)
	}
	for i := uint32(1); i <= 3; i++ {
		if used, limit, err := s.Claim(ctx, "ar-2"); err != nil || used != i || limit != 3 {
			t.Fatalf("claim %d of 3: %d/%d %v", i, used, limit, err)
		}
	}
	if _, _, err := s.Claim(ctx, "ar-2"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("fourth claim of a three-use approval: %v", err)
	}
	if _, _, err := s.Claim(ctx, "ar-none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown approval: %v", err)
	}
	s.Observe([]Event{event("ar-3", clock.Now())})
	if _, _, err := s.Approve(ctx, op, "ar-3", 0, 0); err != nil {
		t.Fatal(err)
	}
	clock.Advance(DefaultWindow)
	if _, _, err := s.Claim(ctx, "ar-3"); !errors.Is(err, store.ErrExpired) {
		t.Fatalf("expired approval: %v", err)
	}
	bare, _, _ := newSvc(t, nil)
	if _, _, err := bare.Claim(ctx, "ar-1"); err == nil {
		t.Fatal("claimed without a use store")
	}
}

// TestApproveOnAnotherInstance: a replica reports a step-up request to one
// instance of a fleet; an operator approves it through another (both on
// one store). Before, the other instance knew only the requests reported
// to it since it started, and refused the approval as unknown.
func TestApproveOnAnotherInstance(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory()
	t.Cleanup(func() { _ = st.Close() })
	a, _, clock := newSvc(t, func(c *Config) { c.Store = st })
	b, planeB, _ := newSvc(t, func(c *Config) { c.Store = st; c.Now = clock.Now })
	a.Observe([]Event{event("ar-1", clock.Now())})
	r, _, err := b.Approve(ctx, op, "ar-1", 0, 0)
	if err != nil || r.State != StateApproved || planeB.approvals["ar-1"] == nil {
		t.Fatalf("approval through the other instance: %+v, %v", r, err)
	}
	if _, _, err := b.Approve(ctx, op, "ar-unknown", 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approve of an id no instance saw: %v", err)
	}
}
