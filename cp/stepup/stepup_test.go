package stepup

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

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
	if _, _, err := s.Approve(ctx, op, "ar-missing", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approve unknown = %v", err)
	}
	if _, _, err := s.Approve(ctx, op, "ar-1", 2*time.Hour); err == nil {
		t.Fatal("approved for longer than the max window")
	}
	r, v, err := s.Approve(ctx, op, "ar-1", 0)
	if err != nil || v != "3" {
		t.Fatal(v, err)
	}
	a := plane.approvals["ar-1"]
	want := &mandatev1.Approval{Name: "ar-1", Subject: "spiffe://example.org/agent/a", Task: "t1", Method: "POST", Path: "/payments",
		Policy: "payments", Rule: "big", ApprovedBy: op, Expires: a.GetExpires()}
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
	if _, _, err := s.Approve(ctx, op, "ar-1", 0); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve after deny = %v", err)
	}
	if l := s.List(false); len(l) != 0 {
		t.Fatalf("denied request reopened: %+v", l)
	}
}

func TestBoundedMemory(t *testing.T) {
	s, _, clock := newSvc(t, func(c *Config) { c.MaxPending = 3 })
	t0 := clock.Now()
	for i, id := range []string{"ar-1", "ar-2", "ar-3", "ar-4"} {
		s.Observe([]Event{event(id, t0.Add(time.Duration(i)*time.Second))})
	}
	l := s.List(true)
	if len(l) != 3 {
		t.Fatalf("%d requests kept, want 3", len(l))
	}
	for _, r := range l {
		if r.ID == "ar-1" {
			t.Fatal("the least recently seen request was not the one evicted")
		}
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
	if _, _, err := s.Approve(ctx, op, "ar-1", 0); !errors.Is(err, ErrDecided) {
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
