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

// ev is a denial of a request carrying a verified mandate of task.
func ev(subject, task string, at time.Time) OutOfIntent {
	return OutOfIntent{Subject: subject, Task: task, Intent: "triage", MandateID: "m-" + task, Reason: "mandate_out_of_scope", Time: at}
}

// declared is a denial of a request that declared task in a header, with
// no mandate.
func declared(subject, task string, at time.Time) OutOfIntent {
	return OutOfIntent{Subject: subject, Task: task, Intent: "triage", Reason: "no_matching_rule", Time: at}
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
	// Counted against the task of the verified mandate and the subject.
	if err != nil || len(acts) != 2 {
		t.Fatalf("6th event: %v %v", acts, err)
	}
	if len(plane.revs) != 2 {
		t.Fatalf("revocations = %+v", plane.revs)
	}
	wantReason := "drift: 6 out-of-intent requests in 1m0s, last: mandate_out_of_scope (rule agents)"
	for i, want := range []struct {
		kind  revocation.Kind
		value string
	}{{revocation.KindSubject, a}, {revocation.KindTask, "t1"}} {
		r := plane.revs[i]
		if r.Kind != want.kind || r.Value != want.value || r.Reason != wantReason || len(r.Intents) != 0 || plane.actors[i] != cpActor ||
			!r.Expires.Equal(clock.Now().Add(DefaultDuration)) {
			t.Fatalf("record %d = %+v", i, r)
		}
	}
	if len(plane.audits) != 2 || !strings.Contains(plane.audits[1], "drift.revoke task/t1") || !strings.Contains(plane.audits[1], wantReason) {
		t.Fatalf("audit = %v", plane.audits)
	}
	// Once: more denials while the record is in force do nothing.
	for i := 0; i < 20; i++ {
		if acts, _ := d.Observe(ctx, []OutOfIntent{ev(a, "t1", clock.Now())}); len(acts) != 0 {
			t.Fatal("acted twice")
		}
	}
}

// TestDeclaredTaskCountsAgainstTheSubjectOnly: a workload with no mandate
// declaring another tenant's task id (x-mandate-task) in denied requests
// gets itself revoked, never the task; and declaring a new task id on
// every request does not reset its count. Before, the task was revoked
// and the subject never was.
func TestDeclaredTaskCountsAgainstTheSubjectOnly(t *testing.T) {
	d, plane, clock := newDetector(t, []Rule{revokeRule}, nil)
	ctx := context.Background()
	attacker := "spiffe://example.org/agent/attacker"
	for i := 0; i < 5; i++ {
		if _, err := d.Observe(ctx, []OutOfIntent{declared(attacker, "T-1", clock.Now())}); err != nil {
			t.Fatal(err)
		}
	}
	acts, err := d.Observe(ctx, []OutOfIntent{declared(attacker, "T-1", clock.Now())})
	if err != nil || len(acts) != 1 || len(plane.revs) != 1 {
		t.Fatalf("6th denial: %v %v %+v", acts, err, plane.revs)
	}
	if r := plane.revs[0]; r.Kind != revocation.KindSubject || r.Value != attacker {
		t.Fatalf("revoked %s %s, want the attacker itself", r.Kind, r.Value)
	}
	for i := 0; i < 50; i++ {
		d.Observe(ctx, []OutOfIntent{declared(attacker, "T-1", clock.Now())})
	}
	for _, r := range plane.revs {
		if r.Kind == revocation.KindTask {
			t.Fatalf("a header-declared task was revoked: %+v", r)
		}
	}

	// A new task id on every request: still the same subject.
	evader := "spiffe://example.org/agent/evader"
	var batch []OutOfIntent
	for i := 0; i < 6; i++ {
		batch = append(batch, declared(evader, fmt.Sprintf("fresh-%d", i), clock.Now()))
	}
	acts, _ = d.Observe(ctx, batch)
	if len(acts) != 1 || acts[0].Kind != "subject" || acts[0].Value != evader {
		t.Fatalf("evader: %+v", acts)
	}
}

// TestDeniedByRuleCountsUnlessTurnedOff: denials by a deny rule count by
// default and not when the rule says countDeniedByRule: false.
func TestDeniedByRuleCountsUnlessTurnedOff(t *testing.T) {
	off := false
	quiet := revokeRule
	quiet.CountDeniedByRule = &off
	for _, tt := range []struct {
		name string
		rule Rule
		acts int
	}{{"default", revokeRule, 1}, {"off", quiet, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			d, _, clock := newDetector(t, []Rule{tt.rule}, nil)
			var batch []OutOfIntent
			for i := 0; i < 6; i++ {
				e := declared("spiffe://example.org/agent/a", "", clock.Now())
				e.Reason = ReasonDeniedByRule
				batch = append(batch, e)
			}
			if acts, _ := d.Observe(context.Background(), batch); len(acts) != tt.acts {
				t.Fatalf("%d actions, want %d", len(acts), tt.acts)
			}
		})
	}
}

// TestGlobalActionLimit: a drift flood from many identities takes at most
// MaxActions actions a minute; the rest are counted as limited, and act
// once the minute has passed.
func TestGlobalActionLimit(t *testing.T) {
	d, plane, clock := newDetector(t, []Rule{revokeRule}, func(c *Config) { c.MaxActions = 2 })
	ctx := context.Background()
	var batch []OutOfIntent
	for s := 0; s < 5; s++ {
		for i := 0; i < 6; i++ {
			batch = append(batch, declared(fmt.Sprintf("spiffe://example.org/agent/flood-%d", s), "", clock.Now()))
		}
	}
	acts, _ := d.Observe(ctx, batch)
	if len(acts) != 2 || len(plane.revs) != 2 || d.Limited() != 3 {
		t.Fatalf("%d actions, %d records, %v limited; want 2, 2, 3", len(acts), len(plane.revs), d.Limited())
	}
	clock.Advance(61 * time.Second)
	for i := range batch {
		batch[i].Time = clock.Now()
	}
	acts, _ = d.Observe(ctx, batch)
	if len(acts) != 2 {
		t.Fatalf("after a minute: %d actions, want 2 more", len(acts))
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
	if err != nil || len(acts) != 2 { // the subject and the mandate's task
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
		evs = append(evs, ev(fmt.Sprintf("spiffe://example.org/agent/a%d", i), fmt.Sprintf("task-%d", i), clock.Now()))
	}
	if _, err := d.Observe(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.keys) != 400 { // 200 subjects, 200 tasks
		t.Fatalf("%d keys tracked, want 400", len(d.keys))
	}
	for k, tr := range d.keys {
		if cap(tr.times) > 4 {
			t.Fatalf("key %q holds room for %d times after one event", k, cap(tr.times))
		}
	}
}
