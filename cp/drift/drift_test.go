package drift

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/revocation"
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
	mu     sync.Mutex
	revs   []revocation.Record
	actors []string
	audits []string
	fail   error
}

func (p *fakePlane) Revoke(_ context.Context, r revocation.Record, actor string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return "", p.fail
	}
	if err := r.Validate(); err != nil {
		return "", err
	}
	p.revs = append(p.revs, r)
	p.actors = append(p.actors, actor)
	return "9", nil
}

func (p *fakePlane) Audit(_ context.Context, actor, action, object, detail string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.audits = append(p.audits, actor+" "+action+" "+object+" "+detail)
	return nil
}

const cpActor = "spiffe://example.org/mandate/cp"

func newDetector(t *testing.T, rules []Rule, mod func(*Config)) (*Detector, *fakePlane, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	plane := &fakePlane{}
	cfg := Config{Plane: plane, Rules: rules, Actor: cpActor, Now: clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, plane, clock
}

var revokeRule = Rule{Name: "agents", Subjects: []string{"spiffe://example.org/agent/*"}, Threshold: 5, Window: Duration(time.Minute), Action: ActionRevoke}

func ev(subject, task string, at time.Time) OutOfIntent {
	return OutOfIntent{Subject: subject, Task: task, Intent: "triage", Reason: "mandate_out_of_scope", Time: at}
}

func TestThresholdRevokesOnce(t *testing.T) {
	d, plane, clock := newDetector(t, []Rule{revokeRule}, nil)
	ctx := context.Background()
	a := "spiffe://example.org/agent/a"
	for i := 0; i < 5; i++ {
		acts, err := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now())})
		if err != nil || len(acts) != 0 {
			t.Fatalf("event %d: acted early: %v %v", i+1, acts, err)
		}
		clock.Advance(5 * time.Second)
	}
	acts, err := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now())})
	if err != nil || len(acts) != 1 {
		t.Fatalf("6th event: %v %v", acts, err)
	}
	if len(plane.revs) != 1 {
		t.Fatalf("revocations = %+v", plane.revs)
	}
	r := plane.revs[0]
	wantReason := "drift: 6 out-of-intent requests in 1m0s, last: mandate_out_of_scope (rule agents)"
	if r.Kind != revocation.KindTask || r.Value != "t1" || r.Reason != wantReason || len(r.Intents) != 0 || plane.actors[0] != cpActor ||
		!r.Expires.Equal(clock.Now().Add(DefaultDuration)) {
		t.Fatalf("record = %+v", r)
	}
	if len(plane.audits) != 1 || !strings.Contains(plane.audits[0], "drift.revoke task/t1") || !strings.Contains(plane.audits[0], wantReason) {
		t.Fatalf("audit = %v", plane.audits)
	}
	// Once: more denials while the record is in force do nothing.
	for i := 0; i < 20; i++ {
		if acts, _ := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now())}); len(acts) != 0 {
			t.Fatal("acted twice")
		}
	}
	// Other tasks are counted apart; a subject without a task is the key.
	batch := make([]OutOfIntent, 6)
	for i := range batch {
		batch[i] = ev(a, "", clock.Now())
	}
	acts, _ = d.Observe(ctx, batch)
	if len(acts) != 1 || plane.revs[1].Kind != revocation.KindSubject || plane.revs[1].Value != a {
		t.Fatalf("subject fallback: %v %+v", acts, plane.revs)
	}
}

func TestWindowSlides(t *testing.T) {
	d, plane, clock := newDetector(t, []Rule{revokeRule}, nil)
	ctx := context.Background()
	a := "spiffe://example.org/agent/a"
	// 30 events 15s apart: never 6 within a minute.
	for i := 0; i < 30; i++ {
		if _, err := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now())}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(15 * time.Second)
	}
	// Events older than the window, or unmatched subjects, do not count.
	old := make([]OutOfIntent, 10)
	for i := range old {
		old[i] = ev(a, "t2", clock.Now().Add(-2*time.Minute))
	}
	other := make([]OutOfIntent, 10)
	for i := range other {
		other[i] = ev("spiffe://example.org/svc/x", "t3", clock.Now())
	}
	d.Observe(ctx, old)
	d.Observe(ctx, other)
	if len(plane.revs) != 0 {
		t.Fatalf("acted: %+v", plane.revs)
	}
}

func TestDowngradeAndRetry(t *testing.T) {
	rule := Rule{Name: "dg", Threshold: 1, Window: Duration(time.Minute), Action: ActionDowngrade, DowngradeIntents: []string{"read"}, Duration: Duration(10 * time.Minute)}
	d, plane, clock := newDetector(t, []Rule{rule}, nil)
	ctx := context.Background()
	a := "spiffe://other.org/x"
	plane.fail = errors.New("store down")
	if _, err := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now()), ev(a, "t1", clock.Now())}); err == nil {
		t.Fatal("failed action not reported")
	}
	plane.fail = nil
	acts, err := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now()), ev(a, "t1", clock.Now())})
	if err != nil || len(acts) != 1 {
		t.Fatalf("retry: %v %v", acts, err)
	}
	r := plane.revs[0]
	if len(r.Intents) != 1 || r.Intents[0] != "read" || !r.Expires.Equal(clock.Now().Add(10*time.Minute)) {
		t.Fatalf("downgrade record = %+v", r)
	}
}

func TestBoundedKeys(t *testing.T) {
	d, _, clock := newDetector(t, []Rule{revokeRule}, func(c *Config) { c.MaxKeys = 100 })
	for i := 0; i < 1000; i++ {
		d.Observe(context.Background(), []OutOfIntent{ev("spiffe://example.org/agent/a", "task-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String(), clock.Now())})
	}
	if n := d.Tracked(); n > 100 {
		t.Fatalf("tracking %d keys, cap 100", n)
	}
}

func TestParsePolicy(t *testing.T) {
	good := "apiVersion: mandate.dev/v1\nkind: DriftPolicy\nrules:\n  - name: a\n    threshold: 5\n    window: 1m\n    action: downgrade\n    downgradeIntents: [read]\n"
	rules, err := ParsePolicy("d.yaml", []byte(good))
	if err != nil || len(rules) != 1 || time.Duration(rules[0].Window) != time.Minute {
		t.Fatal(rules, err)
	}
	bad := []string{
		strings.Replace(good, "threshold: 5", "threshold: 0", 1),
		strings.Replace(good, "window: 1m", "window: 5", 1),
		strings.Replace(good, "action: downgrade", "action: delete", 1),
		strings.Replace(good, "    downgradeIntents: [read]\n", "", 1),
		strings.Replace(good, "kind: DriftPolicy", "kind: Policy", 1),
		good + "    extra: 1\n",
	}
	for i, b := range bad {
		if _, err := ParsePolicy("d.yaml", []byte(b)); err == nil {
			t.Errorf("bad policy %d accepted", i)
		}
	}
}

// A key reported once costs one time, not threshold+1: memory follows the
// events received, whatever threshold the policy sets.
func TestTrackerGrowsWithEvents(t *testing.T) {
	big := Rule{Name: "big", Threshold: 10000, Window: Duration(time.Hour), Action: ActionRevoke}
	d, _, clock := newDetector(t, []Rule{big}, nil)
	var evs []OutOfIntent
	for i := range 200 {
		evs = append(evs, ev("spiffe://example.org/agent/a", fmt.Sprintf("task-%d", i), clock.Now()))
	}
	if _, err := d.Observe(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.keys) != 200 {
		t.Fatalf("%d keys tracked, want 200", len(d.keys))
	}
	for k, tr := range d.keys {
		if cap(tr.times) > 4 {
			t.Fatalf("key %q holds room for %d times after one event", k, cap(tr.times))
		}
	}
}
