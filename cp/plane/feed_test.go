package plane

import (
	"context"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// compactingStore is a store whose first feed ends with ErrCompacted
// once release is closed, and whose history then starts at the revision
// of that moment: what was committed while the first feed was held back
// is gone from the feed (a plane that fell behind an etcd compaction).
type compactingStore struct {
	*store.DB
	release   chan struct{}
	calls     atomic.Int32
	compacted atomic.Uint64
}

func (s *compactingStore) Follow(ctx context.Context, after uint64, fn func(uint64, []store.Change) error) error {
	if s.calls.Add(1) == 1 {
		select {
		case <-s.release:
			rev, err := s.DB.Revision(ctx)
			if err != nil {
				return err
			}
			s.compacted.Store(rev)
			return store.ErrCompacted
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if after < s.compacted.Load() {
		return store.ErrCompacted
	}
	return s.DB.Follow(ctx, after, fn)
}

func newFeedPlane(t *testing.T, st Store) (*Plane, *xdsserver.Server) {
	t.Helper()
	ctx := context.Background()
	xopts, err := ServerOptions(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(discard(), xopts...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(ctx, st, xs, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); xs.Close() })
	return p, xs
}

func storePolicy(t *testing.T, db *store.DB, name, src string) uint64 {
	t.Helper()
	b, err := resource.Marshal(pol(name, src))
	if err != nil {
		t.Fatal(err)
	}
	v, err := db.Put(context.Background(), mandatev1.PolicyTypeURL, []store.Item{{Name: name, Value: b}},
		store.AuditEntry{Actor: "other-instance", Action: "policy.apply"})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func policyNames(p *Plane) []string {
	ps, _ := p.Policies()
	var out []string
	for _, x := range ps {
		out = append(out, x.GetName())
	}
	return out
}

// TestPlaneServesOtherWriters: a change committed to the store by
// another writer (another instance on etcd) reaches the plane's copy and
// its xDS server at the store's version, as its own writes do.
func TestPlaneServesOtherWriters(t *testing.T) {
	db := store.NewMemory()
	p, xs := newFeedPlane(t, db)
	v := storePolicy(t, db, "reader", policyA)
	waitFor(t, "the other writer's policy", func() bool { return slices.Equal(policyNames(p), []string{"reader"}) })
	if got := xs.Versions()[mandatev1.PolicyTypeURL]; got != strconv.FormatUint(v, 10) {
		t.Fatalf("xDS serves Policy version %s, the store committed %d", got, v)
	}
	if p.Served() < v {
		t.Fatalf("served revision %d below the commit %d", p.Served(), v)
	}
	// The plane's own write plans on the state the other writer left.
	if _, err := p.ApplyPolicies(context.Background(), []*mandatev1.Policy{pol("writer", policyB)}, "op"); err != nil {
		t.Fatal(err)
	}
	if got := policyNames(p); !slices.Equal(got, []string{"reader", "writer"}) {
		t.Fatalf("policies %v", got)
	}
}

// TestPlaneReloadsAfterCompaction: a feed that can no longer reach back
// to the last revision served (ErrCompacted) makes the plane load the
// whole state again, so what was committed meanwhile is served, not
// lost.
func TestPlaneReloadsAfterCompaction(t *testing.T) {
	db := store.NewMemory()
	st := &compactingStore{DB: db, release: make(chan struct{})}
	p, xs := newFeedPlane(t, st)
	v := storePolicy(t, db, "reader", policyA)
	close(st.release)
	waitFor(t, "the state reloaded", func() bool { return slices.Equal(policyNames(p), []string{"reader"}) })
	if got := xs.Versions()[mandatev1.PolicyTypeURL]; got != strconv.FormatUint(v, 10) {
		t.Fatalf("xDS serves Policy version %s after the reload, the store has %d", got, v)
	}
	// And the plane follows on from there.
	storePolicy(t, db, "writer", policyB)
	waitFor(t, "the next change", func() bool { return slices.Equal(policyNames(p), []string{"reader", "writer"}) })
}
