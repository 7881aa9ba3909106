package policies

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("examples/*.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("---\n--- x\n...\n"))
	f.Add([]byte(header + "metadata: {name: a}\nspec: {rules: [{name: r, effect: allow, subjects: [\"spiffe://example.org/*\"], when: 'size(request.headers) > 0'}]}\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		set, err := Compile(ps)
		if err != nil {
			return
		}
		d := set.Evaluate(&Request{Subject: "spiffe://example.org/agent/a", Method: "GET", Path: "/",
			Headers: map[string]string{"x": "1"}, Now: time.Unix(0, 0)})
		checkDecision(t, d)
	})
}

func FuzzEvaluate(f *testing.F) {
	set, err := LoadDir("examples")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("spiffe://example.org/agent/support/a1", "spiffe://example.org/svc/tickets", "tickets.internal", "GET", "/tickets/T-1", "", "", "support.read", "T-1", "x-ticket-id", "T-1", false)
	f.Add("spiffe://example.org/agent/payments/p1", "spiffe://example.org/svc/payments", "", "POST", "/refunds", "", "", "payments.refund", "O-1", "x-refund-amount", "99999999999999999999", true)
	f.Add("spiffe://example.org/agent/infra/a", "", "", "POST", "/vault.v1.Secrets/Read", "vault.v1.Secrets", "Read", "", "", "", "", false)
	f.Add("spiffe://example.org//agent", "\x00", "[::1]:80", "get", "//secrets/../x", "", "", "", "", "X-Ticket-Id", "\xff", true)
	f.Fuzz(func(t *testing.T, subject, dest, host, method, path, svc, rpc, intent, task, hk, hv string, withMandate bool) {
		r := &Request{Subject: subject, Destination: dest, Host: host, Method: method, Path: path,
			GRPCService: svc, GRPCMethod: rpc, Intent: intent, Task: task,
			Headers: map[string]string{hk: hv}, Labels: map[string]string{hk: hv}, Now: time.Unix(1, 0)}
		if withMandate {
			r.Mandate = &Mandate{ID: hv, Task: task, Intent: intent, Chain: []string{subject, dest}}
		}
		d := set.Evaluate(r)
		checkDecision(t, d)
		if d2 := set.Evaluate(r); d2.Effect != d.Effect || d2.Rule != d.Rule || d2.Reason != d.Reason {
			t.Fatalf("non-deterministic: %+v then %+v", d, d2)
		}
	})
}

// checkDecision asserts a decision's internal consistency.
func checkDecision(t *testing.T, d Decision) {
	t.Helper()
	switch d.Effect {
	case EffectAllow:
		if d.Reason != ReasonAllowed || d.Rule == "" || d.Policy == "" {
			t.Fatalf("allow without a rule: %+v", d)
		}
	case EffectStepUp:
		if d.Reason != ReasonStepUpRequired || d.Rule == "" {
			t.Fatalf("step_up without a rule: %+v", d)
		}
	case EffectDeny:
		if d.Reason == ReasonAllowed || d.Reason == ReasonStepUpRequired || d.Reason == "" {
			t.Fatalf("deny with reason %q", d.Reason)
		}
	default:
		t.Fatalf("unknown effect %d", d.Effect)
	}
}
