package plane

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestAuditRetention: the trail is bounded by count and by age; a flood of
// writes leaves at most MaxEntries entries after a sweep, and entries older
// than MaxAge (by the store's clock) go.
func TestAuditRetention(t *testing.T) {
	ctx := context.Background()
	write := func(e *env, now time.Time) {
		for i := range 30 {
			if _, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: fmt.Sprintf("t-%d", i),
				Expires: now.Add(time.Hour)}, "op"); err != nil {
				t.Fatal(err)
			}
		}
	}
	e := open(t, t.TempDir(), WithAuditRetention(store.AuditRetention{MaxEntries: 10}))
	write(e, time.Now())
	if n, err := e.p.SweepAudit(ctx); err != nil || n != 20 {
		t.Fatalf("swept %d, %v; want 20", n, err)
	}
	if all, err := e.p.AuditLog(ctx, time.Time{}, 1000, false); err != nil || len(all) != 10 || all[9].Object == "" {
		t.Fatalf("%d entries left, %v", len(all), err)
	}

	past := &fakeClock{now: time.Now().Add(-3 * time.Hour)}
	old := open(t, t.TempDir(), WithClock(past.Now), WithAuditRetention(store.AuditRetention{MaxAge: time.Hour}))
	write(old, past.Now())
	if n, err := old.p.SweepAudit(ctx); err != nil || n != 30 {
		t.Fatalf("age sweep: %d, %v; want 30", n, err)
	}
}

// TestSweepRemovesExpiredApprovals: a step-up approval that expired more
// than the retention ago leaves the store and xDS with the sweep (before,
// expired approvals stayed published forever); a live one stays.
func TestSweepRemovesExpiredApprovals(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	e := open(t, t.TempDir(), WithClock(clk.Now), WithRevocationRetention(time.Hour), WithSweepInterval(time.Minute))
	for name, until := range map[string]time.Duration{"short": 5 * time.Minute, "long": 3 * time.Hour} {
		a := &mandatev1.Approval{Name: name, Subject: "spiffe://example.org/agent/a", Method: "GET", ApprovedBy: "op",
			Expires: timestamppb.New(clk.Now().Add(until))}
		if _, err := e.p.PutApproval(ctx, a, "op"); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(time.Hour + 6*time.Minute)
	if _, err := e.p.SweepRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	left := e.p.Approvals()
	if len(left) != 1 || left[0].GetName() != "long" {
		t.Fatalf("approvals after the sweep: %v, want only the live one", left)
	}
	stored, _, _ := load(ctx, e.st, mandatev1.ApprovalTypeURL, func() *mandatev1.Approval { return &mandatev1.Approval{} })
	if len(stored) != 1 || stored["long"] == nil {
		t.Fatalf("stored approvals after the sweep: %v", stored)
	}
}
