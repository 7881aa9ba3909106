package plane

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
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
