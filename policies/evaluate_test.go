package policies

import (
	"strings"
	"testing"
	"time"
)

func mustSet(t testing.TB, docs ...string) *Set {
	t.Helper()
	var ps []*Policy
	for i, d := range docs {
		p, err := Parse("test.yaml", []byte(d))
		if err != nil {
			t.Fatalf("doc %d: %v", i, err)
		}
		ps = append(ps, p...)
	}
	s, err := Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const evalPolicies = `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: main}
spec:
  rules:
    - name: allow-read
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [GET], paths: ["/data/**"]}]
    - name: deny-secret
      effect: deny
      subjects: ["spiffe://example.org/agent/**"]
      actions: [{paths: ["/data/secret/**"]}]
    - name: stepup-delete
      effect: step_up
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [DELETE]}]
    - name: allow-delete
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [DELETE]}]
    - name: intent-only
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      intents: [report.write]
      actions: [{methods: [POST], paths: ["/reports"]}]
    - name: mandate-only
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      requireMandate: true
      actions: [{methods: [PUT]}]
    - name: labelled
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      labels: {zone: internal, tier: ""}
      actions: [{methods: [PATCH]}]
    - name: hosts
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      hosts: ["api.internal", "*.svc.internal"]
      actions: [{methods: [OPTIONS]}]
    - name: grpc
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      destinations: ["spiffe://example.org/svc/*"]
      actions: [{grpc: ["kv.v1.Store/Get", "kv.v1.Admin/*"]}]
    - name: cond-allow
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [POST], paths: ["/cond"]}]
      when: request.headers["x-n"] == "1"
    - name: cond-deny
      effect: deny
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [POST], paths: ["/cond-deny"]}]
      when: request.headers["x-n"] == "1"
    - name: cond-stepup
      effect: step_up
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [POST], paths: ["/cond-stepup"]}]
      when: int(request.headers["x-n"]) > 10
    - name: allow-cond-deny-path
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [POST], paths: ["/cond-deny", "/cond-stepup"]}]
    - name: clock
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [POST], paths: ["/clock"]}]
      when: now < timestamp("2030-01-01T00:00:00Z")
---
apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: shadow}
spec:
  mode: dry_run
  rules:
    - name: would-allow
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
    - name: would-deny-delete
      effect: deny
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [DELETE]}]
    - name: would-stepup-broken
      effect: step_up
      subjects: ["spiffe://example.org/agent/*"]
      actions: [{methods: [HEAD]}]
      when: request.headers["missing"] == "x"
`

func TestEvaluate(t *testing.T) {
	set := mustSet(t, evalPolicies)
	const agent = "spiffe://example.org/agent/a1"
	req := func(method, path string) *Request {
		return &Request{Subject: agent, Method: method, Path: path, Now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	}
	with := func(r *Request, f func(*Request)) *Request { f(r); return r }
	type want struct {
		effect    Effect
		reason    Reason
		rule      string
		dry       string // "effect/rule" or ""
		cacheable bool
	}
	tests := []struct {
		name string
		r    *Request
		want want
	}{
		{"allow", req("GET", "/data/x"), want{EffectAllow, ReasonAllowed, "allow-read", "allow/would-allow", true}},
		{"deny overrides allow", req("GET", "/data/secret/k"), want{EffectDeny, ReasonDeniedByRule, "deny-secret", "allow/would-allow", true}},
		{"deny applies at depth", with(req("GET", "/data/secret/k"), func(r *Request) { r.Subject = agent + "/sub" }), want{EffectDeny, ReasonDeniedByRule, "deny-secret", "", true}},
		{"no match other subject", with(req("GET", "/data/x"), func(r *Request) { r.Subject = "spiffe://example.org/svc/a" }), want{EffectDeny, ReasonNoMatch, "", "", true}},
		{"no match path", req("GET", "/other"), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"step_up over allow", req("DELETE", "/x"), want{EffectStepUp, ReasonStepUpRequired, "stepup-delete", "deny/would-deny-delete", true}},
		{"intent required", req("POST", "/reports"), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"intent matches", with(req("POST", "/reports"), func(r *Request) { r.Intent = "report.write" }), want{EffectAllow, ReasonAllowed, "intent-only", "allow/would-allow", true}},
		{"other intent", with(req("POST", "/reports"), func(r *Request) { r.Intent = "report.read" }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"mandate required", req("PUT", "/x"), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"mandate present", with(req("PUT", "/x"), func(r *Request) { r.Mandate = &Mandate{ID: "m"} }), want{EffectAllow, ReasonAllowed, "mandate-only", "allow/would-allow", true}},
		{"labels match", with(req("PATCH", "/x"), func(r *Request) { r.Labels = map[string]string{"zone": "internal", "tier": ""} }), want{EffectAllow, ReasonAllowed, "labelled", "allow/would-allow", true}},
		{"label missing", with(req("PATCH", "/x"), func(r *Request) { r.Labels = map[string]string{"zone": "internal"} }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"label differs", with(req("PATCH", "/x"), func(r *Request) { r.Labels = map[string]string{"zone": "public", "tier": ""} }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"host suffix", with(req("OPTIONS", "/"), func(r *Request) { r.Host = "a.b.svc.internal" }), want{EffectAllow, ReasonAllowed, "hosts", "allow/would-allow", true}},
		{"host suffix needs a label", with(req("OPTIONS", "/"), func(r *Request) { r.Host = "svc.internal" }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"host lookalike", with(req("OPTIONS", "/"), func(r *Request) { r.Host = "api.internal.evil" }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"grpc method", with(req("POST", "/kv.v1.Store/Get"), func(r *Request) {
			r.GRPCService, r.GRPCMethod, r.Destination = "kv.v1.Store", "Get", "spiffe://example.org/svc/kv"
		}), want{EffectAllow, ReasonAllowed, "grpc", "allow/would-allow", true}},
		{"grpc other method", with(req("POST", "/kv.v1.Store/Put"), func(r *Request) {
			r.GRPCService, r.GRPCMethod, r.Destination = "kv.v1.Store", "Put", "spiffe://example.org/svc/kv"
		}), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"grpc wildcard method", with(req("POST", "/kv.v1.Admin/Drop"), func(r *Request) {
			r.GRPCService, r.GRPCMethod, r.Destination = "kv.v1.Admin", "Drop", "spiffe://example.org/svc/kv"
		}), want{EffectAllow, ReasonAllowed, "grpc", "allow/would-allow", true}},
		{"grpc wrong destination", with(req("POST", "/kv.v1.Store/Get"), func(r *Request) {
			r.GRPCService, r.GRPCMethod, r.Destination = "kv.v1.Store", "Get", "spiffe://example.org/other/kv"
		}), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"grpc entry ignores plain http", req("POST", "/kv.v1.Store/Get"), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"condition true", with(req("POST", "/cond"), func(r *Request) { r.Headers = map[string]string{"x-n": "1"} }), want{EffectAllow, ReasonAllowed, "cond-allow", "allow/would-allow", true}},
		{"condition false", with(req("POST", "/cond"), func(r *Request) { r.Headers = map[string]string{"x-n": "2"} }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", true}},
		{"allow condition error", req("POST", "/cond"), want{EffectDeny, ReasonConditionError, "cond-allow", "allow/would-allow", true}},
		{"deny condition error fails closed", req("POST", "/cond-deny"), want{EffectDeny, ReasonConditionError, "cond-deny", "allow/would-allow", true}},
		{"deny condition false lets allow through", with(req("POST", "/cond-deny"), func(r *Request) { r.Headers = map[string]string{"x-n": "0"} }), want{EffectAllow, ReasonAllowed, "allow-cond-deny-path", "allow/would-allow", true}},
		{"step_up condition error fails closed", with(req("POST", "/cond-stepup"), func(r *Request) { r.Headers = map[string]string{"x-n": "ten"} }), want{EffectDeny, ReasonConditionError, "cond-stepup", "allow/would-allow", true}},
		{"step_up condition true", with(req("POST", "/cond-stepup"), func(r *Request) { r.Headers = map[string]string{"x-n": "11"} }), want{EffectStepUp, ReasonStepUpRequired, "cond-stepup", "allow/would-allow", true}},
		{"now makes it uncacheable", req("POST", "/clock"), want{EffectAllow, ReasonAllowed, "clock", "allow/would-allow", false}},
		{"now is read from the request", with(req("POST", "/clock"), func(r *Request) { r.Now = time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC) }), want{EffectDeny, ReasonNoMatch, "", "allow/would-allow", false}},
		{"dry-run condition error reports deny", req("HEAD", "/"), want{EffectDeny, ReasonNoMatch, "", "deny/would-stepup-broken", true}},
		{"empty subject", with(req("GET", "/data/x"), func(r *Request) { r.Subject = "" }), want{EffectDeny, ReasonNoMatch, "", "", true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := set.Evaluate(tt.r)
			dry := ""
			if d.DryRun != nil {
				if d.DryRun.Policy != "shadow" {
					t.Errorf("dry-run policy %q", d.DryRun.Policy)
				}
				dry = d.DryRun.Effect.String() + "/" + d.DryRun.Rule
			}
			got := want{d.Effect, d.Reason, d.Rule, dry, d.Cacheable}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if d.Rule != "" && d.Policy != "main" {
				t.Errorf("policy %q", d.Policy)
			}
		})
	}
}

func TestEvaluateEmpty(t *testing.T) {
	r := &Request{Subject: "spiffe://example.org/a"}
	var nilSet *Set
	empty, err := Compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Set{"nil": nilSet, "empty": empty} {
		if d := s.Evaluate(r); d.Effect != EffectDeny || d.Reason != ReasonNoPolicy {
			t.Errorf("%s set: %+v", name, d)
		}
		if s.Len() != 0 || len(s.Policies()) != 0 || len(s.HeaderKeys()) != 0 || s.ReadsAllHeaders() {
			t.Errorf("%s set accessors not empty", name)
		}
	}
	set := mustSet(t, evalPolicies)
	if d := set.Evaluate(nil); d.Effect != EffectDeny {
		t.Errorf("nil request: %+v", d)
	}
}

// TestDecidingRuleIsFirstInLoadOrder checks determinism across policies.
func TestDecidingRuleIsFirstInLoadOrder(t *testing.T) {
	pol := func(name string, rules ...string) string {
		return header + "metadata: {name: " + name + "}\nspec:\n  rules:\n" + strings.Join(rules, "")
	}
	r := func(name, effect string) string {
		return "    - {name: " + name + ", effect: " + effect + ", subjects: [\"spiffe://example.org/**\"]}\n"
	}
	set := mustSet(t, pol("p1", r("a1", "allow"), r("d1", "deny")), pol("p2", r("d2", "deny"), r("a2", "allow")))
	for i := 0; i < 20; i++ {
		d := set.Evaluate(&Request{Subject: "spiffe://example.org/x"})
		if d.Policy != "p1" || d.Rule != "d1" || d.Effect != EffectDeny {
			t.Fatalf("decision %+v, want p1/d1 deny", d)
		}
	}
	set = mustSet(t, pol("p2", r("a2", "allow")), pol("p1", r("a1", "allow")))
	if d := set.Evaluate(&Request{Subject: "spiffe://example.org/x"}); d.Policy != "p2" || d.Rule != "a2" {
		t.Fatalf("decision %+v, want p2/a2", d)
	}
}

func TestCostLimit(t *testing.T) {
	set := mustSet(t, header+`metadata: {name: p}
spec:
  rules:
    - name: heavy
      effect: allow
      subjects: ["spiffe://example.org/a"]
      when: 'request.headers["x"].split(",").map(a, request.headers["x"].split(",").map(b, a + b)).size() > 0'
`)
	big := strings.Repeat("a,", 5000)
	d := set.Evaluate(&Request{Subject: "spiffe://example.org/a", Headers: map[string]string{"x": big}})
	if d.Effect != EffectDeny || d.Reason != ReasonConditionError {
		t.Fatalf("expensive condition: %+v, want deny condition_error", d)
	}
	d = set.Evaluate(&Request{Subject: "spiffe://example.org/a", Headers: map[string]string{"x": "a,b"}})
	if d.Effect != EffectAllow {
		t.Fatalf("cheap input: %+v", d)
	}
}

func TestMandateVariables(t *testing.T) {
	set := mustSet(t, header+`metadata: {name: p}
spec:
  rules:
    - name: by-mandate
      effect: allow
      subjects: ["spiffe://example.org/a"]
      when: >-
        mandate != null && mandate.task == task && mandate.id == "m1" &&
        mandate.issuer == "spiffe://example.org/cp" && mandate.intent == intent &&
        chain == mandate.chain && size(chain) == 2 && chain[0] == "spiffe://example.org/root" &&
        labels["r"] == "x" && request.method == "GET" && request.path == "/p" &&
        request.host == "h" && destination == "spiffe://example.org/d" && subject.endsWith("/a")
    - name: no-mandate
      effect: allow
      subjects: ["spiffe://example.org/b"]
      when: mandate == null && size(chain) == 0
    - name: reads-field-without-mandate
      effect: allow
      subjects: ["spiffe://example.org/c"]
      when: mandate.task == task
`)
	m := &Mandate{ID: "m1", Issuer: "spiffe://example.org/cp", Task: "T", Intent: "i",
		Chain: []string{"spiffe://example.org/root", "spiffe://example.org/a"}}
	r := &Request{Subject: "spiffe://example.org/a", Destination: "spiffe://example.org/d", Host: "h",
		Method: "GET", Path: "/p", Task: "T", Intent: "i", Mandate: m, Labels: map[string]string{"r": "x"}}
	if d := set.Evaluate(r); d.Effect != EffectAllow {
		t.Errorf("mandate request: %+v", d)
	}
	r.Task = "other"
	if d := set.Evaluate(r); d.Effect != EffectDeny {
		t.Errorf("mandate for another task: %+v", d)
	}
	if d := set.Evaluate(&Request{Subject: "spiffe://example.org/b"}); d.Effect != EffectAllow {
		t.Errorf("no mandate: %+v", d)
	}
	// Without a mandate, mandate.task is an error, not "" == "".
	if d := set.Evaluate(&Request{Subject: "spiffe://example.org/c"}); d.Effect != EffectDeny || d.Reason != ReasonConditionError {
		t.Errorf("mandate field without mandate: %+v", d)
	}
}

// TestAllowedIfApproved: an approval may lift a step-up only where an
// allow rule would let the request through anyway.
func TestAllowedIfApproved(t *testing.T) {
	set := mustSet(t, evalPolicies)
	const agent = "spiffe://example.org/agent/a1"
	tests := []struct {
		name string
		r    *Request
		want bool
	}{
		{"step_up with a matching allow rule", &Request{Subject: agent, Method: "DELETE", Path: "/x"}, true},
		{"step_up over an unconditional allow", &Request{Subject: agent, Method: "POST", Path: "/cond-stepup",
			Headers: map[string]string{"x-n": "11"}}, true},
	}
	only := mustSet(t, `apiVersion: mandate.dev/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - {name: s, effect: step_up, subjects: ["spiffe://example.org/agent/*"], actions: [{methods: [POST]}]}
    - {name: a, effect: allow, subjects: ["spiffe://example.org/agent/*"], actions: [{methods: [POST]}], when: 'request.path == "/ok"'}
`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := set.Evaluate(tt.r)
			if d.Effect != EffectStepUp || d.AllowedIfApproved != tt.want {
				t.Fatalf("effect %v AllowedIfApproved %v, want step_up and %v", d.Effect, d.AllowedIfApproved, tt.want)
			}
		})
	}
	if d := only.Evaluate(&Request{Subject: agent, Method: "POST", Path: "/ok"}); !d.AllowedIfApproved {
		t.Fatal("allow rule matched, yet not AllowedIfApproved")
	}
	if d := only.Evaluate(&Request{Subject: agent, Method: "POST", Path: "/other"}); d.Effect != EffectStepUp || d.AllowedIfApproved {
		t.Fatalf("no allow rule matches, yet %+v", d)
	}
	if d := set.Evaluate(&Request{Subject: agent, Method: "GET", Path: "/data/x"}); d.AllowedIfApproved {
		t.Fatal("AllowedIfApproved set on an allow decision")
	}
}
