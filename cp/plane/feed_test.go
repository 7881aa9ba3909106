package plane

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

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

// heldStore is a store whose feed delivers nothing while it is held (a
// feed goroutine that has not been scheduled yet, or a slow watch).
type heldStore struct {
	*store.DB
	mu   sync.Mutex
	gate chan struct{} // closed while the feed flows
}

func newHeldStore(db *store.DB) *heldStore {
	s := &heldStore{DB: db, gate: make(chan struct{})}
	close(s.gate)
	return s
}

func (s *heldStore) hold() {
	s.mu.Lock()
	s.gate = make(chan struct{})
	s.mu.Unlock()
}

func (s *heldStore) release() {
	s.mu.Lock()
	close(s.gate)
	s.mu.Unlock()
}

func (s *heldStore) Follow(ctx context.Context, after uint64, fn func(uint64, []store.Change) error) error {
	return s.DB.Follow(ctx, after, func(rev uint64, ch []store.Change) error {
		s.mu.Lock()
		gate := s.gate
		s.mu.Unlock()
		select {
		case <-gate:
			return fn(rev, ch)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}

// TestOwnCommitServedWithoutTheFeed: a write whose commit directly
// follows the last revision served is served by the writer itself, so it
// returns while the feed delivers nothing; a write with another writer's
// commit between them waits for the feed, so that commit is served
// first and never skipped as older than the type's version.
func TestOwnCommitServedWithoutTheFeed(t *testing.T) {
	db := store.NewMemory()
	st := newHeldStore(db)
	p, xs := newFeedPlane(t, st)
	st.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := revokeSubject(ctx, p, "own"); err != nil {
		t.Fatalf("own write with the feed held: %v", err)
	}
	if rs, _ := p.Revocations(true); len(rs) != 1 {
		t.Fatalf("%d revocations served after the own write, want 1", len(rs))
	}
	other := storeRevocation(t, db, "other") // another instance's commit, not yet delivered
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if _, _, err := revokeSubject(short, p, "late"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write after an undelivered commit: %v, want it waiting for the feed", err)
	}
	if got := mustUint(xs.Versions()[mandatev1.RevocationTypeURL]); got >= other {
		t.Fatalf("xDS serves Revocation version %d, past the undelivered commit %d", got, other)
	}
	st.release()
	waitFor(t, "all three revocations served", func() bool {
		rs, _ := p.Revocations(true)
		return len(rs) == 3
	})
}

// TestApplyOnAStaleCopyKeepsOtherWrites: policies applied through this
// instance while another instance's policy commit has not reached it yet
// never drop that policy (the apply replaces the whole set it planned on
// its copy): the commit is refused as stale, and the apply plans again
// once the copy has caught up.
func TestApplyOnAStaleCopyKeepsOtherWrites(t *testing.T) {
	db := store.NewMemory()
	st := newHeldStore(db)
	p, _ := newFeedPlane(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("writer", policyB)}, "op"); err != nil {
		t.Fatal(err)
	}
	st.hold()
	storePolicy(t, db, "reader", policyA) // another instance's apply, not yet delivered
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	_, err := p.ApplyPolicies(short, []*mandatev1.Policy{pol("late", policyLate)}, "op")
	stored, _, lerr := db.List(ctx, mandatev1.PolicyTypeURL)
	if lerr != nil {
		t.Fatal(lerr)
	}
	var names []string
	for _, it := range stored {
		names = append(names, it.Name)
	}
	if !slices.Contains(names, "reader") {
		t.Fatalf("apply on a stale copy (err %v) left the store with %v: the other instance's policy was dropped", err, names)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("apply on a stale copy with the feed held: %v, want it waiting to plan again", err)
	}
	st.release()
	if _, err := p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("late", policyLate)}, "op"); err != nil {
		t.Fatal(err)
	}
	if got := policyNames(p); !slices.Equal(got, []string{"late", "reader", "writer"}) {
		t.Fatalf("policies %v", got)
	}
}

// policyLate is policyA under another policy name.
var policyLate = strings.Replace(policyA, "name: reader", "name: late", 1)

func storeRevocation(t *testing.T, db *store.DB, who string) uint64 {
	t.Helper()
	rec := &mandatev1.Revocation{Name: "r-" + who, Kind: "subject", Value: "spiffe://example.org/agent/" + who,
		Expires: timestamppb.New(future()), CreatedAt: timestamppb.Now(), CreatedBy: "op"}
	b, err := resource.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	v, err := db.Put(context.Background(), mandatev1.RevocationTypeURL, []store.Item{{Name: rec.GetName(), Value: b}},
		store.AuditEntry{Actor: "other-instance", Action: "revoke"})
	if err != nil {
		t.Fatal(err)
	}
	return v
}
