package plane

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func revokeSubject(ctx context.Context, p *Plane, who string) (*mandatev1.Revocation, string, error) {
	return p.RevokeRecord(ctx, revocation.Record{Kind: revocation.KindSubject,
		Value: "spiffe://example.org/agent/" + who, Expires: future()}, "op")
}

// TestRevokeIsOneCommit: a Revoke stores its record, its audit entry and
// the type's version in one synced bbolt commit (the store's revision
// moves by one, and the version answered is that revision), and the file
// reopened holds the record and its entry.
func TestRevokeIsOneCommit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := open(t, dir)
	before, err := e.st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, v, err := revokeSubject(ctx, e.p, "a")
	if err != nil {
		t.Fatal(err)
	}
	after, err := e.st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != before+1 || v != strconv.FormatUint(after, 10) {
		t.Fatalf("a Revoke moved the store from revision %d to %d and answered version %s; want one commit", before, after, v)
	}
	e.p.Close()
	e.close()
	st, err := boltstore.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	items, sv, err := st.List(ctx, mandatev1.RevocationTypeURL)
	if err != nil || sv != after || len(items) != 1 || items[0].Name != rec.GetName() {
		t.Fatalf("reopened: %d records at %d (%v), want %s at %d", len(items), sv, err, rec.GetName(), after)
	}
	log, err := st.AuditLog(ctx, time.Time{}, 0)
	if err != nil || !slices.ContainsFunc(log, func(a store.AuditEntry) bool { return a.Object == "revocation/"+rec.GetName() }) {
		t.Fatalf("reopened audit trail %+v (%v) has no entry for %s", log, err, rec.GetName())
	}
}

// failingBackend fails every commit while fail is set: the transaction
// runs, then is rolled back, as when the disk refuses the write.
type failingBackend struct {
	store.Backend
	fail atomic.Bool
}

var errDisk = errors.New("disk refused the write")

func (f *failingBackend) Update(ctx context.Context, fn func(store.Tx) error) (uint64, error) {
	if !f.fail.Load() {
		return f.Backend.Update(ctx, fn)
	}
	_, err := f.Backend.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errDisk
	})
	return 0, err
}

// TestFailedCommitNeverPushed: a Revoke whose commit fails answers the
// error and is never served: the xDS version stays, and the next
// successful write serves its own record and the earlier ones only.
func TestFailedCommitNeverPushed(t *testing.T) {
	ctx := context.Background()
	be := &failingBackend{Backend: store.NewMemoryBackend()}
	st, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	p, xs := newFeedPlane(t, st)
	first, v1, err := revokeSubject(ctx, p, "first")
	if err != nil {
		t.Fatal(err)
	}
	be.fail.Store(true)
	if _, _, err := revokeSubject(ctx, p, "lost"); !errors.Is(err, errDisk) {
		t.Fatalf("revoke on a failing disk: %v", err)
	}
	if v := xs.Versions()[mandatev1.RevocationTypeURL]; v != v1 {
		t.Fatalf("xDS version %s after a failed commit, want %s", v, v1)
	}
	be.fail.Store(false)
	second, v2, err := revokeSubject(ctx, p, "second")
	if err != nil {
		t.Fatal(err)
	}
	rs, v := p.Revocations(true)
	var names []string
	for _, r := range rs {
		names = append(names, r.GetValue())
	}
	want := []string{first.GetValue(), second.GetValue()}
	if v != v2 || !slices.Equal(names, want) {
		t.Fatalf("served %v at %s, want %v at %s", names, v, want, v2)
	}
}

// TestWritePhasesTimed: a Revoke's commit, publish and wait until served
// are each observed once in mandate_cp_write_phase_seconds.
func TestWritePhasesTimed(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	if _, _, err := revokeSubject(ctx, e.p, "a"); err != nil {
		t.Fatal(err)
	}
	for _, phase := range []string{writePhaseCommit, writePhasePublish, writePhaseServed} {
		var m dto.Metric
		if err := e.p.phases.WithLabelValues("Revocation", phase).(prometheus.Metric).Write(&m); err != nil {
			t.Fatal(err)
		}
		if n := m.GetHistogram().GetSampleCount(); n != 1 {
			t.Fatalf("revocation write phase %s observed %d times, want 1", phase, n)
		}
	}
}

// lostAnswerBackend commits the first write it is given and then answers
// as if the answer was lost (an etcd leader that died with the write in
// flight); later writes go through.
type lostAnswerBackend struct {
	store.Backend
	lose atomic.Bool
	// refuse: every later write is refused before it reaches the store.
	refuse atomic.Bool
}

func (l *lostAnswerBackend) Update(ctx context.Context, fn func(store.Tx) error) (uint64, error) {
	if l.refuse.Load() && !l.lose.Load() {
		return 0, &store.UnavailableError{Backend: "test", Err: errors.New("no quorum")}
	}
	rev, err := l.Backend.Update(ctx, fn)
	if err == nil && l.lose.CompareAndSwap(true, false) {
		return 0, store.OutcomeUnknown(&store.UnavailableError{Backend: "test", Err: errors.New("answer lost")})
	}
	return rev, err
}

// lostAnswerPlane returns a plane over a lostAnswerBackend.
func lostAnswerPlane(t *testing.T) (*lostAnswerBackend, *store.DB, *Plane) {
	t.Helper()
	be := &lostAnswerBackend{Backend: store.NewMemoryBackend()}
	st, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := newFeedPlane(t, st)
	return be, st, p
}

// TestRevokeWrittenAgainWhenTheAnswerIsLost: a Revoke whose store write
// committed but whose answer was lost is written again: it succeeds, the
// record is stored and served once, under the name chosen before the
// first attempt.
func TestRevokeWrittenAgainWhenTheAnswerIsLost(t *testing.T) {
	ctx := context.Background()
	be, st, p := lostAnswerPlane(t)
	be.lose.Store(true)
	rec, _, err := revokeSubject(ctx, p, "lost-answer")
	if err != nil {
		t.Fatalf("revoke whose answer was lost: %v", err)
	}
	if be.lose.Load() {
		t.Fatal("the backend never lost an answer")
	}
	items, _, err := st.List(ctx, mandatev1.RevocationTypeURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Name != rec.GetName() {
		t.Fatalf("stored %v, want the one record %s", items, rec.GetName())
	}
	if rs, _ := p.Revocations(true); len(rs) != 1 {
		t.Fatalf("%d revocations served, want 1", len(rs))
	}
}

// TestRevokeRefusedAfterALostAnswerSaysSo: when the write again is refused
// up front, the Revoke still answers that its outcome is unknown (the
// first attempt may be applied), not the refusal.
func TestRevokeRefusedAfterALostAnswerSaysSo(t *testing.T) {
	ctx := context.Background()
	be, st, p := lostAnswerPlane(t)
	be.refuse.Store(true)
	be.lose.Store(true)
	if _, _, err := revokeSubject(ctx, p, "unknown"); !errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("revoke whose answer was lost, then refused: %v, want the outcome unknown", err)
	}
	if items, _, err := st.List(ctx, mandatev1.RevocationTypeURL); err != nil || len(items) != 1 {
		t.Fatalf("stored %d records (%v): the first attempt committed, as the answer warns", len(items), err)
	}
}
