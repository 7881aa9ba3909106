package drift

import (
	"context"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
)

// TestCountsSurviveALeaderChange: two detectors share one store, as the
// leader before and the leader after a change of leadership. Three
// denials reach the first and three the second (threshold 5: the 6th
// acts): the subject and the task are acted on exactly once, by the
// second; more denials within the window act no more, whichever detector
// counts them; once the window and the record are over, the counts are
// gone from the store. Before, a new leader started from zero and never
// reached the threshold.
func TestCountsSurviveALeaderChange(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	db, err := store.New(store.NewMemoryBackend(), store.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	plane := &fakePlane{}
	leader := func() *Detector {
		d, err := New(Config{Plane: plane, Rules: []Rule{revokeRule}, Actor: cpActor, Now: clock.Now, Counts: db})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	first, second := leader(), leader()
	const subject = "spiffe://example.org/agent/a"
	deny := func(d *Detector, n int) []Action {
		t.Helper()
		var acts []Action
		for range n {
			clock.Advance(time.Second)
			a, err := d.Observe(ctx, []OutOfIntent{ev(subject, "T-1", clock.Now())})
			if err != nil {
				t.Fatal(err)
			}
			acts = append(acts, a...)
		}
		return acts
	}
	if acts := deny(first, 3); len(acts) != 0 {
		t.Fatalf("first leader acted on 3 denials: %+v", acts)
	}
	acts := deny(second, 3)
	if len(acts) != 2 || acts[0].Count != 6 || acts[1].Count != 6 {
		t.Fatalf("second leader took %+v; want the subject and the task acted on, on the 6th denial", acts)
	}
	// One action per key per window, whoever counts.
	if acts := append(deny(first, 7), deny(second, 7)...); len(acts) != 0 {
		t.Fatalf("more denials within the window acted again: %+v", acts)
	}
	if len(plane.revs) != 2 {
		t.Fatalf("%d records, want 2", len(plane.revs))
	}
	// The counts expire with the window and the record: swept, and a
	// new detector starts afresh.
	clock.Advance(2 * time.Hour)
	res, err := db.SweepExpired(ctx)
	if err != nil || res.DriftCounts != 2 {
		t.Fatalf("sweep: %+v, %v; want the two counts removed", res, err)
	}
	if acts := deny(leader(), 5); len(acts) != 0 {
		t.Fatalf("a fresh window acted on 5 denials: %+v", acts)
	}
}

// TestStoredCountWrittenBeforeActing: when the store refuses the counts,
// the detector does not act (a later leader could not see the action and
// would act again); once the store is back, the next denial acts.
func TestStoredCountWrittenBeforeActing(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	db, err := store.New(store.NewMemoryBackend(), store.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fc := &failingCounts{Counts: db}
	plane := &fakePlane{}
	d, err := New(Config{Plane: plane, Rules: []Rule{revokeRule}, Actor: cpActor, Now: clock.Now, Counts: fc})
	if err != nil {
		t.Fatal(err)
	}
	const subject = "spiffe://example.org/agent/b"
	for range 5 {
		clock.Advance(time.Second)
		if _, err := d.Observe(ctx, []OutOfIntent{declared(subject, "T-2", clock.Now())}); err != nil {
			t.Fatal(err)
		}
	}
	fc.fail = true
	clock.Advance(time.Second)
	if acts, err := d.Observe(ctx, []OutOfIntent{declared(subject, "T-2", clock.Now())}); err == nil || len(acts) != 0 || len(plane.revs) != 0 {
		t.Fatalf("with the store failing: %+v, %v, %d records", acts, err, len(plane.revs))
	}
	fc.fail = false
	clock.Advance(time.Second)
	acts, err := d.Observe(ctx, []OutOfIntent{declared(subject, "T-2", clock.Now())})
	if err != nil || len(acts) != 1 || len(plane.revs) != 1 {
		t.Fatalf("store back: %+v, %v, %d records", acts, err, len(plane.revs))
	}
}

type failingCounts struct {
	Counts
	fail bool
}

func (f *failingCounts) PutDriftCounts(ctx context.Context, c []store.DriftCount) error {
	if f.fail {
		return store.ErrUnavailable
	}
	return f.Counts.PutDriftCounts(ctx, c)
}

// TestStoredCountWithStrayNextIsRefused: a stored count with no times but
// a ring position (never written by a detector; a corrupt or foreign
// value) is counted afresh. Before, it was taken as is and the
// (threshold+1)-th denial of one batch indexed the ring past its end (a
// panic, with d.mu held).
func TestStoredCountWithStrayNextIsRefused(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	db, err := store.New(store.NewMemoryBackend(), store.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const subject = "spiffe://example.org/agent/c"
	key := revokeRule.Name + "\x00" + "subject" + "\x00" + subject
	if err := db.PutDriftCounts(ctx, []store.DriftCount{{Key: key, Value: []byte(`{"n":9,"l":"2030-01-01T00:00:00Z"}`),
		Expires: clock.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	plane := &fakePlane{}
	d, err := New(Config{Plane: plane, Rules: []Rule{revokeRule}, Actor: cpActor, Now: clock.Now, Counts: db})
	if err != nil {
		t.Fatal(err)
	}
	if got := keyOf(&d.rules[0], revocation.KindSubject, subject); got != key {
		t.Fatalf("key %q, want %q", got, key)
	}
	// One batch: the count is loaded once and counted threshold+1 times.
	var evs []OutOfIntent
	for range revokeRule.Threshold + 1 {
		clock.Advance(time.Second)
		evs = append(evs, declared(subject, "T-3", clock.Now()))
	}
	acts, err := d.Observe(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 1 {
		t.Fatalf("%d actions after %d denials, want 1", len(acts), revokeRule.Threshold+1)
	}
}
