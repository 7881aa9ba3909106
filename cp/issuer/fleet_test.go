package issuer

import (
	"context"
	"testing"
	"time"
)

// TestKeyringFollowsAnotherInstancesRotation: two instances share one
// store. The leader rotates; the other, whose copy of the keys says the
// old key is due, takes the leader's new key from the store instead of
// rotating again, signs with it, and publishes it: it never publishes a
// set without the key the leader signs with. Before, it rotated once more
// and published its own set, dropping the leader's new key, so the
// leader's mandates failed verification on the replicas.
func TestKeyringFollowsAnotherInstancesRotation(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	planes := []*fakePlane{newFakePlane(t, clock.Now), {}}
	planes[1].st = planes[0].st // one store, two instances
	var rings []*Keyring
	for _, p := range planes {
		k, err := NewKeyring(KeyringConfig{Plane: p, Store: p.st, Issuer: "spiffe://example.org/mandate/cp",
			Rotation: 24 * time.Hour, Overlap: time.Hour, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Load(ctx); err != nil {
			t.Fatal(err)
		}
		rings = append(rings, k)
	}
	first, _, _ := rings[0].Signer()
	if s, _, _ := rings[1].Signer(); s.KeyID() != first.KeyID() {
		t.Fatalf("the second instance signs with %s, the first with %s", s.KeyID(), first.KeyID())
	}

	clock.Advance(24*time.Hour + time.Minute)
	if changed, err := rings[0].Tick(ctx); err != nil || !changed {
		t.Fatalf("leader's rotation: %v %v", changed, err)
	}
	next, _, _ := rings[0].Signer()
	if changed, err := rings[1].Tick(ctx); err != nil || !changed {
		t.Fatalf("second instance's tick: %v %v (want it to take the leader's key)", changed, err)
	}
	sks, err := planes[0].st.SigningKeys(ctx)
	if err != nil || len(sks) != 2 {
		t.Fatalf("store holds %d signing keys (%v), want the old and the leader's new one", len(sks), err)
	}
	if s, _, _ := rings[1].Signer(); s.KeyID() != next.KeyID() {
		t.Fatalf("second instance signs with %s, want the leader's new key %s", s.KeyID(), next.KeyID())
	}
	pub := planes[1].published()
	if len(pub) != 2 || pub[1].ID != next.KeyID() {
		t.Fatalf("second instance publishes %v, want the old key and %s", pub, next.KeyID())
	}
}
