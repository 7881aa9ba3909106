package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestLeadership: one leader at a time; a standby takes over when the
// leader resigns or its lease is gone; every instance writes whether it
// leads or not (leadership is for singletons, not for writes).
func TestLeadership(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	a := backend(t, c, []string{c.Members[0].ClientURL}, prefix)
	b := backend(t, c, []string{c.Members[1].ClientURL}, prefix)
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	da, _ := store.New(a)
	db, _ := store.New(b)
	put := func(d *store.DB, name string) error {
		_, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}})
		return err
	}

	la, err := a.Lead(ctx, "a", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := b.Lead(wctx, "b", 2*time.Second); err == nil {
		t.Fatal("a second leader while the first leads")
	}
	cancel()
	if err := put(da, "by-a"); err != nil {
		t.Fatal(err)
	}
	// b campaigns; a resigns; b leads and a may no longer write.
	won := make(chan *Leadership, 1)
	go func() {
		l, err := b.Lead(ctx, "b", 2*time.Second)
		if err != nil {
			t.Error(err)
		}
		won <- l
	}()
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	var lb *Leadership
	select {
	case lb = <-won:
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over after a resignation")
	}
	select {
	case <-la.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the resigned leadership is not reported lost")
	}
	if err := put(da, "by-a-not-leading"); err != nil {
		t.Fatalf("write of an instance that does not lead: %v", err)
	}
	if err := put(db, "by-b"); err != nil {
		t.Fatal(err)
	}
	items, _, _ := db.List(ctx, mandatev1.RevocationTypeURL)
	if len(items) != 3 || items[0].Name != "by-a" || items[1].Name != "by-a-not-leading" || items[2].Name != "by-b" {
		t.Fatalf("stored: %v", items)
	}

	// The leader's lease revoked (as when it dies): Lost fires.
	if _, err := b.Client().Revoke(ctx, lb.sess.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lb.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("a revoked lease is not reported lost")
	}
}
