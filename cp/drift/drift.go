// Package drift turns the out-of-intent denials replicas report into
// control-plane action: per drift rule, it counts denials in a sliding
// window against the subject that made them (across all its tasks), and
// against a task only when the request carried a verified mandate of that
// task (the report names the mandate): a task id declared in a header can
// neither harm another tenant's task nor reset the count by changing on
// every request. Past the rule's threshold it revokes or downgrades the
// subject or task by itself, at most once per key per window, recording
// why in the revocation record and the audit trail. A global limit bounds
// the actions per minute (mandate_cp_drift_actions_limited_total counts
// those it held back).
//
// Rules come from a YAML document or from flags:
//
//	apiVersion: mandate.dev/v1
//	kind: DriftPolicy
//	rules:
//	  - name: agents
//	    subjects: ["spiffe://example.org/agent/**"]   # default: every subject
//	    threshold: 5          # act on the 6th denial within the window
//	    window: 1m
//	    action: downgrade     # or revoke
//	    downgradeIntents: [read]
//	    duration: 1h          # how long the record lasts (default 1h)
//	    countDeniedByRule: true  # denials by a deny rule count too (default true)
package drift

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/yamldoc"
	"github.com/mandate-dev/mandate/policies/pattern"
)

// Plane is what drift needs of cp/plane.
type Plane interface {
	Revoke(ctx context.Context, r revocation.Record, actor string) (string, error)
	Audit(ctx context.Context, actor, action, object, detail string) error
}

// Actions.
const (
	ActionRevoke    = "revoke"
	ActionDowngrade = "downgrade"
)

// Rule is one drift rule.
type Rule struct {
	Name             string   `json:"name"`
	Subjects         []string `json:"subjects,omitempty"`
	Threshold        int      `json:"threshold"`
	Window           Duration `json:"window"`
	Action           string   `json:"action"`
	DowngradeIntents []string `json:"downgradeIntents,omitempty"`
	Duration         Duration `json:"duration,omitempty"`
	// CountDeniedByRule counts denials by an explicit deny rule
	// (denied_by_rule) besides out-of-scope and unmatched ones; nil
	// means true.
	CountDeniedByRule *bool `json:"countDeniedByRule,omitempty"`
}

// Duration is a time.Duration written as "1m" in YAML.
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if len(b) < 2 || b[0] != '"' {
		return fmt.Errorf("duration %s: want a string such as \"1m\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

type document struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name,omitempty"`
	} `json:"metadata,omitempty"`
	Rules []Rule `json:"rules"`
}

// ParsePolicy reads a DriftPolicy document (strict: unknown fields and
// duplicate keys are errors).
func ParsePolicy(name string, data []byte) ([]Rule, error) {
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("drift: %s: document over 1 MiB", name)
	}
	var doc document
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("drift: %w", yamldoc.Located(name, data, err))
	}
	if doc.APIVersion != "mandate.dev/v1" || doc.Kind != "DriftPolicy" {
		return nil, fmt.Errorf("drift: %s: want apiVersion mandate.dev/v1, kind DriftPolicy", name)
	}
	if _, err := compileRules(doc.Rules); err != nil {
		return nil, fmt.Errorf("drift: %w", yamldoc.Located(name, data, err))
	}
	return doc.Rules, nil
}

type rule struct {
	Rule
	subjects     []pattern.Pattern
	window       time.Duration
	duration     time.Duration
	deniedByRule bool
}

func compileRules(rs []Rule) ([]rule, error) {
	if len(rs) > 256 {
		return nil, fmt.Errorf("%d rules, limit 256", len(rs))
	}
	out := make([]rule, 0, len(rs))
	seen := map[string]bool{}
	for _, r := range rs {
		cr := rule{Rule: r, window: time.Duration(r.Window), duration: time.Duration(r.Duration),
			deniedByRule: r.CountDeniedByRule == nil || *r.CountDeniedByRule}
		switch {
		case r.Name == "" || len(r.Name) > 128:
			return nil, errors.New("rule name must be 1..128 bytes")
		case seen[r.Name]:
			return nil, fmt.Errorf("rule %q defined twice", r.Name)
		case r.Threshold < 1 || r.Threshold > 10000:
			return nil, fmt.Errorf("rule %q: threshold %d outside [1, 10000]", r.Name, r.Threshold)
		case cr.window < time.Second || cr.window > 24*time.Hour:
			return nil, fmt.Errorf("rule %q: window %v outside [1s, 24h]", r.Name, cr.window)
		case r.Action != ActionRevoke && r.Action != ActionDowngrade:
			return nil, fmt.Errorf("rule %q: action must be revoke or downgrade, got %q", r.Name, r.Action)
		case r.Action == ActionDowngrade && len(r.DowngradeIntents) == 0:
			return nil, fmt.Errorf("rule %q: downgrade needs downgradeIntents", r.Name)
		case r.Action == ActionRevoke && len(r.DowngradeIntents) > 0:
			return nil, fmt.Errorf("rule %q: downgradeIntents given for a revoke", r.Name)
		case cr.duration < 0 || cr.duration > 7*24*time.Hour:
			return nil, fmt.Errorf("rule %q: duration %v outside [0, 168h]", r.Name, cr.duration)
		}
		seen[r.Name] = true
		if cr.duration == 0 {
			cr.duration = DefaultDuration
		}
		for _, in := range r.DowngradeIntents {
			if err := checkLabel("downgradeIntents", in); err != nil {
				return nil, fmt.Errorf("rule %q: %w", r.Name, err)
			}
		}
		subjects := r.Subjects
		if len(subjects) == 0 {
			subjects = []string{"spiffe://**"}
		}
		for _, s := range subjects {
			if !strings.HasPrefix(s, "spiffe://") {
				return nil, fmt.Errorf("rule %q: subject %q is not a SPIFFE ID pattern", r.Name, s)
			}
			p, err := pattern.Compile(s)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", r.Name, err)
			}
			cr.subjects = append(cr.subjects, p)
		}
		out = append(out, cr)
	}
	return out, nil
}

// Defaults.
const (
	DefaultDuration = time.Hour
	DefaultMaxKeys  = 50_000
	// DefaultMaxActions is how many drift actions the detector takes per
	// minute, over every subject and task.
	DefaultMaxActions = 30
)

// ReasonDeniedByRule is the reason code of a denial by an explicit deny
// rule (policies.ReasonDeniedByRule).
const ReasonDeniedByRule = "denied_by_rule"

// Config configures a Detector.
type Config struct {
	Plane Plane
	Rules []Rule
	// Actor is who the records and audit entries name: mandate-cp's own
	// SPIFFE ID.
	Actor string
	// MaxKeys bounds the tracked (rule, task or subject) keys; past it, the
	// least recently seen are forgotten.
	MaxKeys int
	// Skew is how far in the future an event time may be; later ones are
	// counted at the cp's now.
	Skew time.Duration
	// MaxActions bounds the drift actions per minute, over every key
	// (default DefaultMaxActions): a flood of drifting identities cannot
	// turn into a flood of revocations.
	MaxActions int
	Now        func() time.Time
	Logger     *slog.Logger
	// Registerer receives mandate_cp_drift_actions_limited_total.
	Registerer prometheus.Registerer
	// Counts, when set, keeps the counts in the store (cp/store.DB), read
	// before and written after every Observe: the instance that leads
	// next continues counting where the last one stopped, and one action
	// per key per window holds across a change of leader. Nil keeps them
	// in this process only.
	Counts Counts
}

// Counts is where a Detector keeps its per-key counts (cp/store.DB).
type Counts interface {
	DriftCounts(ctx context.Context, keys []string) (map[string][]byte, error)
	PutDriftCounts(ctx context.Context, counts []store.DriftCount) error
}

// OutOfIntent is one reported denial (validated).
type OutOfIntent struct {
	Subject, Task, Intent, MandateID, Reason string
	Time                                     time.Time
}

// Action is what the detector did.
type Action struct {
	Rule, Kind, Value, RecordID, Version string
	Count                                int
	Reason                               string
}

type tracker struct {
	times    []time.Time // ring of the last threshold+1 event times
	next     int
	last     time.Time
	lastWhy  string
	actedTil time.Time
}

// Detector counts out-of-intent denials. It is safe for concurrent use.
type Detector struct {
	cfg     Config
	log     *slog.Logger
	rules   []rule
	limited prometheus.Counter

	// observe serializes Observe when counts are stored: each reads the
	// counts of its keys, counts, and writes them back.
	observe sync.Mutex

	mu      sync.Mutex
	keys    map[string]*tracker
	actions []time.Time // times of the actions of the last minute
}

// New validates cfg.
func New(cfg Config) (*Detector, error) {
	if cfg.Plane == nil {
		return nil, errors.New("drift: Plane is required")
	}
	if cfg.Actor == "" {
		return nil, errors.New("drift: Actor is required")
	}
	rules, err := compileRules(cfg.Rules)
	if err != nil {
		return nil, fmt.Errorf("drift: %w", err)
	}
	if cfg.MaxKeys == 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Skew == 0 {
		cfg.Skew = 30 * time.Second
	}
	if cfg.MaxActions == 0 {
		cfg.MaxActions = DefaultMaxActions
	}
	if cfg.MaxActions < 0 {
		return nil, errors.New("drift: negative MaxActions")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	d := &Detector{cfg: cfg, log: l, rules: rules, keys: map[string]*tracker{},
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "cp", Name: "drift_actions_limited_total",
			Help: "Drift actions not taken because the global limit on drift actions per minute was reached.",
		})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(d.limited); err != nil {
			return nil, fmt.Errorf("drift: register metrics: %w", err)
		}
	}
	return d, nil
}

type pending struct {
	rule  *rule
	kind  revocation.Kind
	value string
	count int
	why   string
}

// Observe counts events and acts on every key that crossed its threshold.
// It returns the actions taken; errors of individual actions are logged and
// joined.
func (d *Detector) Observe(ctx context.Context, events []OutOfIntent) ([]Action, error) {
	now := d.cfg.Now()
	// Each event counts against these keys (at most two), under its rule.
	type hit struct {
		r    *rule
		kind revocation.Kind
		val  string
		t    time.Time
		why  string
	}
	var hits []hit
	for _, ev := range events {
		r := d.match(ev.Subject)
		if r == nil {
			continue
		}
		if ev.Reason == ReasonDeniedByRule && !r.deniedByRule {
			continue
		}
		t := ev.Time
		if t.After(now.Add(d.cfg.Skew)) || t.IsZero() {
			t = now
		}
		if !t.After(now.Add(-r.window)) {
			continue // too old to count
		}
		// Against the subject always; against the task only through a
		// verified mandate of it (a header-declared task is the caller's
		// word, and may be anybody's task).
		hits = append(hits, hit{r, revocation.KindSubject, ev.Subject, t, ev.Reason})
		if ev.MandateID != "" && ev.Task != "" {
			hits = append(hits, hit{r, revocation.KindTask, ev.Task, t, ev.Reason})
		}
	}
	if len(hits) == 0 {
		return nil, nil
	}
	touched := map[string]*rule{}
	for _, h := range hits {
		touched[keyOf(h.r, h.kind, h.val)] = h.r
	}
	if d.cfg.Counts != nil {
		d.observe.Lock()
		defer d.observe.Unlock()
		if err := d.load(ctx, touched); err != nil {
			return nil, err
		}
	}
	var todo []pending
	d.mu.Lock()
	for _, h := range hits {
		if p := d.countLocked(h.r, h.kind, h.val, h.t, now, h.why); p != nil {
			todo = append(todo, *p)
		}
	}
	todo = d.limitLocked(now, todo)
	d.mu.Unlock()
	if d.cfg.Counts != nil {
		// Stored before acting: a leader that takes over after an
		// action sees it taken.
		if err := d.store(ctx, touched, now); err != nil {
			d.mu.Lock()
			for _, p := range todo {
				if tr := d.keys[keyOf(p.rule, p.kind, p.value)]; tr != nil {
					tr.actedTil = time.Time{}
				}
			}
			d.mu.Unlock()
			return nil, err
		}
	}

	var acts []Action
	var errs []error
	for _, p := range todo {
		a, err := d.act(ctx, now, p)
		if err != nil {
			d.log.Error("drift action failed", "rule", p.rule.Name, "value", p.value, "err", err)
			errs = append(errs, err)
			// Let a later denial try again.
			key := keyOf(p.rule, p.kind, p.value)
			d.mu.Lock()
			if tr := d.keys[key]; tr != nil {
				tr.actedTil = time.Time{}
			}
			d.mu.Unlock()
			if d.cfg.Counts != nil {
				if err := d.store(ctx, map[string]*rule{key: p.rule}, now); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		acts = append(acts, a)
	}
	return acts, errors.Join(errs...)
}

func keyOf(r *rule, kind revocation.Kind, value string) string {
	return r.Name + "\x00" + kind.String() + "\x00" + value
}

// countLocked counts one event against a key and returns the action due
// when the key crossed its threshold within the window.
func (d *Detector) countLocked(r *rule, kind revocation.Kind, value string, t, now time.Time, why string) *pending {
	key := keyOf(r, kind, value)
	tr := d.keys[key]
	if tr == nil {
		if len(d.keys) >= d.cfg.MaxKeys {
			d.evictLocked(now)
		}
		tr = &tracker{}
		d.keys[key] = tr
	}
	if now.Before(tr.actedTil) {
		return nil // acted already within the window, or the record is still in force
	}
	// The ring grows with the events seen, up to threshold+1: a key
	// reported once costs one time, not threshold+1.
	if len(tr.times) <= r.Threshold {
		tr.times = append(tr.times, t)
	} else {
		tr.times[tr.next] = t
		tr.next = (tr.next + 1) % len(tr.times)
	}
	if t.After(tr.last) {
		tr.last = t
	}
	tr.lastWhy = why
	if len(tr.times) <= r.Threshold {
		return nil
	}
	oldest, newest := tr.times[tr.next], tr.times[tr.next]
	for _, x := range tr.times {
		oldest = minTime(oldest, x)
		newest = maxTime(newest, x)
	}
	if newest.Sub(oldest) > r.window {
		return nil
	}
	// At most one action per key per window, and none while the record
	// it made is in force.
	tr.actedTil = now.Add(max(r.duration, r.window))
	tr.times, tr.next = tr.times[:0], 0
	return &pending{rule: r, kind: kind, value: value, count: r.Threshold + 1,
		why: fmt.Sprintf("drift: %d out-of-intent requests in %v, last: %s (rule %s)", r.Threshold+1, r.window, tr.lastWhy, r.Name)}
}

// limitLocked keeps the actions the global per-minute limit allows; the
// others are counted and dropped, their keys free to cross again.
func (d *Detector) limitLocked(now time.Time, todo []pending) []pending {
	keep := d.actions[:0]
	for _, at := range d.actions {
		if now.Sub(at) < time.Minute {
			keep = append(keep, at)
		}
	}
	d.actions = keep
	out := todo[:0]
	for _, p := range todo {
		if len(d.actions) >= d.cfg.MaxActions {
			d.limited.Inc()
			d.log.Warn("drift action held back by the global limit", "rule", p.rule.Name, "kind", p.kind.String(),
				"value", p.value, "max_per_minute", d.cfg.MaxActions)
			if tr := d.keys[keyOf(p.rule, p.kind, p.value)]; tr != nil {
				tr.actedTil = time.Time{}
			}
			continue
		}
		d.actions = append(d.actions, now)
		out = append(out, p)
	}
	return out
}

// Limited returns how many actions the global limit held back.
func (d *Detector) Limited() float64 {
	m := &dto.Metric{}
	if err := d.limited.Write(m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func (d *Detector) act(ctx context.Context, now time.Time, p pending) (Action, error) {
	rec := revocation.Record{
		ID: recordID(p.rule.Name, p.kind, p.value, now), Kind: p.kind, Value: p.value,
		Expires: now.Add(p.rule.duration), Reason: p.why, CreatedAt: now,
	}
	action := "drift.revoke"
	if p.rule.Action == ActionDowngrade {
		rec.Intents = slices.Clone(p.rule.DowngradeIntents)
		action = "drift.downgrade"
	}
	v, err := d.cfg.Plane.Revoke(ctx, rec, d.cfg.Actor)
	if err != nil {
		return Action{}, fmt.Errorf("drift: %s %s %s: %w", p.rule.Action, p.kind, p.value, err)
	}
	detail := fmt.Sprintf("record=%s version=%s: %s", rec.ID, v, p.why)
	if err := d.cfg.Plane.Audit(ctx, d.cfg.Actor, action, p.kind.String()+"/"+p.value, detail); err != nil {
		d.log.Error("drift audit failed", "err", err)
	}
	d.log.Warn("drift threshold crossed", "rule", p.rule.Name, "action", p.rule.Action, "kind", p.kind.String(),
		"value", p.value, "record", rec.ID, "version", v, "reason", p.why)
	return Action{Rule: p.rule.Name, Kind: p.kind.String(), Value: p.value, RecordID: rec.ID, Version: v, Count: p.count, Reason: p.why}, nil
}

// recordID is deterministic per (rule, target, second) so that a retried
// action cannot create two records within a second.
func recordID(rule string, k revocation.Kind, value string, now time.Time) string {
	h := fnv64(rule + "\x00" + k.String() + "\x00" + value)
	return fmt.Sprintf("drift-%016x-%d", h, now.Unix())
}

func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func (d *Detector) match(subject string) *rule {
	for i := range d.rules {
		for _, p := range d.rules[i].subjects {
			if p.Match(subject) {
				return &d.rules[i]
			}
		}
	}
	return nil
}

// evictLocked forgets idle keys (last event outside every window and no
// record in force), or else the least recently seen one.
func (d *Detector) evictLocked(now time.Time) {
	var victimKey string
	var victim *tracker
	for k, t := range d.keys {
		if now.After(t.actedTil) && now.Sub(t.last) > 24*time.Hour {
			delete(d.keys, k)
			continue
		}
		if victim == nil || t.last.Before(victim.last) {
			victimKey, victim = k, t
		}
	}
	if len(d.keys) >= d.cfg.MaxKeys && victim != nil {
		delete(d.keys, victimKey)
	}
}

// Tracked returns how many keys are tracked.
func (d *Detector) Tracked() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keys)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// FlagRules builds the single rule of the --drift-* flags: every subject,
// threshold denials within window, then action (downgrade to intents). A
// threshold of 0 disables drift detection (no rules).
func FlagRules(threshold int, window time.Duration, action string, intents []string) ([]Rule, error) {
	if threshold == 0 {
		return nil, nil
	}
	r := []Rule{{Name: "flags", Threshold: threshold, Window: Duration(window), Action: action}}
	if action == ActionDowngrade {
		r[0].DowngradeIntents = intents
	}
	if _, err := compileRules(r); err != nil {
		return nil, fmt.Errorf("drift: flags: %w", err)
	}
	return r, nil
}
