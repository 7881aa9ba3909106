package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

// flowsBudget bounds TestFlows (a guard against hangs, not a speed goal: a
// loaded 2-core machine takes 3 minutes): one deployment shared by scenarios 1, 2, 3,
// 5 and 6, which do not interfere (fresh tasks, paths and mandates each).
const flowsBudget = 6 * time.Minute

// TestFlows runs the mandate scenarios that share one deployment.
func TestFlows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), flowsBudget)
	defer cancel()
	d := deploy(ctx, t, options{
		agents:     []string{idSupport, idPlanner, idResearcher, idPay, idDrifter, idWorker},
		delegators: []string{idPlanner},
		cpArgs: []string{"--drift-threshold", "5", "--drift-window", "1m", "--drift-action", "revoke",
			"--approval-window", "5m"},
	})
	t.Run("1-task-intent-mtls", func(t *testing.T) { scenarioTask(t, ctx, d) })
	t.Run("2-replay-other-identity", func(t *testing.T) { scenarioReplay(t, ctx, d) })
	t.Run("3-delegation", func(t *testing.T) { scenarioDelegation(t, ctx, d) })
	t.Run("4-complete-under-load", func(t *testing.T) { scenarioCompleteUnderLoad(t, ctx, d) })
	t.Run("4b-orchestrator-complete-wait", func(t *testing.T) { orchestratorCompleteWait(t, ctx, d) })
	t.Run("5-step-up", func(t *testing.T) { scenarioStepUp(t, ctx, d) })
	t.Run("6-drift", func(t *testing.T) { scenarioDrift(t, ctx, d) })
}

// allowed asserts r is an allow: 200, the upstream got it without the
// mandate header, and the decision log holds want for it.
func allowed(t *testing.T, ctx context.Context, d *deployment, r agentproto.Response, want decision) decision {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.Status, r.Body)
	}
	id := echoedDecision(t, r)
	rec := d.waitDecision(t, ctx, id)
	want.Result = "allow"
	expectDecision(t, rec, want)
	return rec
}

// denied asserts r is a denial with status and reason, logged as want, and
// that nothing reached the upstream under prefix (checked by the caller
// with the upstream's count).
func denied(t *testing.T, ctx context.Context, d *deployment, r agentproto.Response, status int, reason string, want decision) denyBody {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if o := r.Headers["X-Frontproxy-Outcome"]; len(o) != 1 || o[0] != "denied" {
		t.Fatalf("x-frontproxy-outcome %v, want denied (an authz deny, not an error)", o)
	}
	b := parseDeny(t, r)
	if b.Reason != reason {
		t.Fatalf("deny reason %q, want %q", b.Reason, reason)
	}
	rec := d.waitDecision(t, ctx, b.DecisionID)
	if want.Result == "" {
		want.Result = "deny"
	}
	want.Reason = reason
	expectDecision(t, rec, want)
	return b
}

// upstreamCount asserts how many requests the upstream received under prefix.
func upstreamCount(t *testing.T, ctx context.Context, d *deployment, prefix string, want int) {
	t.Helper()
	if got := len(d.seenWithPrefix(t, ctx, prefix)); got != want {
		t.Fatalf("upstream received %d requests under %s, want %d", got, prefix, want)
	}
}

// Scenario 1: an agent with a mandate does its task; the same agent outside
// its intent is denied, and so is a request without mTLS.
func scenarioTask(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("T1")
	base := "/s1/" + task
	tok, mid := d.issue(ctx, idSupport, task, "support.read", "--methods", "GET", "--paths", base+"/tickets/**", "--ttl", "5m")
	a := d.agent(t, idSupport)

	r := do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/tickets/42", Mandate: tok})
	if r.SPIFFEID != idSupport {
		t.Fatalf("agent ran as %s", r.SPIFFEID)
	}
	allowed(t, ctx, d, r, decision{Subject: idSupport, Task: task, Intent: "support.read", MandateID: mid, Rule: "mandated-work"})
	upstreamCount(t, ctx, d, base, 1)

	// Outside the mandate's scope (another path, another method).
	r = do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/admin/users", Mandate: tok})
	denied(t, ctx, d, r, 403, "mandate_out_of_scope", decision{Subject: idSupport, Task: task, MandateID: mid})
	r = do(t, ctx, a, agentproto.Command{Method: "DELETE", Path: base + "/tickets/42", Mandate: tok})
	denied(t, ctx, d, r, 403, "mandate_out_of_scope", decision{Subject: idSupport, Task: task, MandateID: mid})
	// Declaring another intent than the mandate's.
	r = do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/tickets/42", Mandate: tok,
		Headers: map[string]string{"x-mandate-intent": "support.write"}})
	denied(t, ctx, d, r, 403, "intent_mismatch", decision{Subject: idSupport})
	// No mandate at all.
	r = do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/tickets/42"})
	denied(t, ctx, d, r, 403, "no_matching_rule", decision{Subject: idSupport})
	// The same request, mandate included, without mTLS: no principal.
	r = do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/tickets/42", Mandate: tok, Plain: true})
	denied(t, ctx, d, r, 403, "no_principal", decision{})
	upstreamCount(t, ctx, d, base, 1)
}

// Scenario 2: a mandate replayed by another identity is denied.
func scenarioReplay(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("T2")
	base := "/s2/" + task
	tok, mid := d.issue(ctx, idSupport, task, "support.read", "--methods", "GET", "--paths", base+"/**", "--ttl", "5m")
	thief := d.agent(t, idResearcher)
	r := do(t, ctx, thief, agentproto.Command{Method: "GET", Path: base + "/tickets/1", Mandate: tok})
	if r.SPIFFEID != idResearcher {
		t.Fatalf("thief ran as %s", r.SPIFFEID)
	}
	denied(t, ctx, d, r, 403, "mandate_wrong_holder", decision{Subject: idResearcher})
	// Claiming the holder's identity in headers changes nothing.
	r = do(t, ctx, thief, agentproto.Command{Method: "GET", Path: base + "/tickets/1", Mandate: tok,
		Headers: map[string]string{"x-envoy-downstream-service-cluster": idSupport, "x-forwarded-client-cert": "URI=" + idSupport}})
	denied(t, ctx, d, r, 403, "mandate_wrong_holder", decision{Subject: idResearcher})
	upstreamCount(t, ctx, d, base, 0)
	// The holder itself is served.
	owner := d.agent(t, idSupport)
	r = do(t, ctx, owner, agentproto.Command{Method: "GET", Path: base + "/tickets/1", Mandate: tok})
	allowed(t, ctx, d, r, decision{Subject: idSupport, MandateID: mid})
	upstreamCount(t, ctx, d, base, 1)
}

// Scenario 3: delegation planner -> researcher with a narrower scope works;
// a widening is refused; revoking the planner's mandate kills the
// researcher's.
func scenarioDelegation(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("T3")
	base := "/s3/" + task
	parent, pid := d.issue(ctx, idPlanner, task, "research", "--methods", "GET,POST", "--paths", base+"/**", "--ttl", "5m")
	parentExp := d.expiry(ctx, parent)
	planner := d.ctl // the planner's own mandatectl copy (caller = parent subject)

	out := planner(ctx, "ctl:"+idPlanner, "delegate", "--parent", parent, "--to", idResearcher,
		"--methods", "GET", "--paths", base+"/papers/**", "--ttl", "2m")
	if out.code != 0 {
		t.Fatalf("narrower delegation refused: %s", out)
	}
	child, cid := strings.TrimSpace(out.stdout), mandateID(t, out.stderr)

	for _, wide := range [][]string{
		{"--methods", "GET", "--paths", "/s3/**"},            // wider paths
		{"--methods", "GET,DELETE", "--paths", base + "/**"}, // a method the parent lacks
	} {
		args := append([]string{"delegate", "--parent", parent, "--to", idResearcher}, wide...)
		if out := planner(ctx, "ctl:"+idPlanner, args...); out.code == 0 {
			t.Errorf("widening delegation %v accepted: %s", wide, out)
		}
	}
	// A longer lifetime than the parent's is cut to the parent's expiry.
	out = planner(ctx, "ctl:"+idPlanner, "delegate", "--parent", parent, "--to", idResearcher,
		"--methods", "GET", "--paths", base+"/papers/**", "--ttl", "9m")
	if out.code == 0 {
		if exp := d.expiry(ctx, strings.TrimSpace(out.stdout)); exp.After(parentExp) {
			t.Errorf("child expires %s, after its parent (%s)", exp, parentExp)
		}
	}
	// Only the holder may delegate: the orchestrator (not the subject) cannot.
	if out := d.ctl(ctx, "orchestrator", "delegate", "--parent", parent, "--to", idResearcher,
		"--methods", "GET", "--paths", base+"/papers/**"); out.code == 0 {
		t.Errorf("delegation by a non-holder accepted: %s", out)
	}

	researcher := d.agent(t, idResearcher)
	plannerAgent := d.agent(t, idPlanner)
	r := do(t, ctx, researcher, agentproto.Command{Method: "GET", Path: base + "/papers/1", Mandate: child})
	rec := allowed(t, ctx, d, r, decision{Subject: idResearcher, Task: task, Intent: "research", MandateID: cid})
	if strings.Join(rec.Chain, " ") != idPlanner+" "+idResearcher {
		t.Errorf("logged chain %v, want [planner researcher]", rec.Chain)
	}
	// The child's scope is narrower than the parent's.
	r = do(t, ctx, researcher, agentproto.Command{Method: "POST", Path: base + "/papers/1", Mandate: child})
	denied(t, ctx, d, r, 403, "mandate_out_of_scope", decision{Subject: idResearcher, MandateID: cid})
	r = do(t, ctx, researcher, agentproto.Command{Method: "GET", Path: base + "/notes/1", Mandate: child})
	denied(t, ctx, d, r, 403, "mandate_out_of_scope", decision{Subject: idResearcher, MandateID: cid})
	r = do(t, ctx, plannerAgent, agentproto.Command{Method: "POST", Path: base + "/notes/1", Mandate: parent})
	allowed(t, ctx, d, r, decision{Subject: idPlanner, MandateID: pid})
	upstreamCount(t, ctx, d, base, 2)

	out = d.mustCtl(ctx, "operator", "revoke", "--mandate", pid, "--for", "10m", "--reason", "e2e: planner compromised", "--wait")
	if !strings.Contains(out.stdout, "enforced by 2/2 replicas") {
		t.Fatalf("revoke --wait: %s", out)
	}
	// Both replicas enforce it: send enough requests to reach both.
	for range 4 {
		r = do(t, ctx, researcher, agentproto.Command{Method: "GET", Path: base + "/papers/1", Mandate: child})
		denied(t, ctx, d, r, 403, "revoked", decision{Subject: idResearcher, MandateID: cid})
		r = do(t, ctx, plannerAgent, agentproto.Command{Method: "POST", Path: base + "/notes/1", Mandate: parent})
		denied(t, ctx, d, r, 403, "revoked", decision{Subject: idPlanner, MandateID: pid})
	}
	upstreamCount(t, ctx, d, base, 2)
	// A new delegation from the revoked parent is refused too.
	if out := planner(ctx, "ctl:"+idPlanner, "delegate", "--parent", parent, "--to", idResearcher,
		"--methods", "GET", "--paths", base+"/papers/**"); out.code == 0 {
		t.Errorf("delegation from a revoked mandate accepted: %s", out)
	}
}

var untilRE = regexp.MustCompile(`until (\S+)`)

// Scenario 5: step-up: denied with an approval request, approved with
// mandatectl, allowed, then the window expires.
func scenarioStepUp(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("T5")
	base := "/payments/" + task
	tok, mid := d.issue(ctx, idPay, task, "payments", "--methods", "POST", "--paths", base+"/**", "--ttl", "5m")
	a := d.agent(t, idPay)
	pay := agentproto.Command{Method: "POST", Path: base + "/refund/1", Mandate: tok, Body: `{"amount":500}`}

	r := do(t, ctx, a, pay)
	b := denied(t, ctx, d, r, http.StatusUnauthorized, "step_up_required", decision{Result: "step_up", Subject: idPay, Task: task, MandateID: mid})
	if !strings.HasPrefix(b.ApprovalRequest, "ar-") {
		t.Fatalf("no approval request id in %q", r.Body)
	}
	if h := r.Headers["Www-Authenticate"]; len(h) != 1 || !strings.Contains(h[0], b.ApprovalRequest) {
		t.Errorf("www-authenticate %v", h)
	}
	upstreamCount(t, ctx, d, base, 0)

	// The request shows up for the operator (replicas report in batches).
	err := proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		out := d.mustCtl(ctx, "operator", "approvals")
		if !strings.Contains(out.stdout, b.ApprovalRequest) {
			return errorf("approvals: %s", out.stdout)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// An approval allows one request by default, counted by mandate-cp
	// across both replicas.
	out := d.mustCtl(ctx, "operator", "approve", b.ApprovalRequest, "--wait")
	if !strings.Contains(out.stdout, "1 use(s)") || !strings.Contains(out.stdout, "enforced by 2/2") {
		t.Fatalf("approve output: %s", out)
	}
	r = do(t, ctx, a, pay)
	allowed(t, ctx, d, r, decision{Subject: idPay, Task: task, MandateID: mid})
	upstreamCount(t, ctx, d, base, 1)
	r = do(t, ctx, a, pay)
	denied(t, ctx, d, r, http.StatusUnauthorized, "step_up_required", decision{Result: "step_up", Subject: idPay})
	upstreamCount(t, ctx, d, base, 1)
	// Another action is not covered by the approval.
	other := pay
	other.Path = base + "/refund/2"
	r = do(t, ctx, a, other)
	denied(t, ctx, d, r, http.StatusUnauthorized, "step_up_required", decision{Result: "step_up", Subject: idPay})

	// Approved again with uses to spare: allowed until the window ends.
	const window = 3 * time.Second
	approveStart := time.Now()
	out = d.mustCtl(ctx, "operator", "approve", b.ApprovalRequest, "--for", window.String(), "--uses", "1000", "--wait")
	approveEnd := time.Now()
	if !untilRE.MatchString(out.stdout) || !strings.Contains(out.stdout, "enforced by 2/2") {
		t.Fatalf("approve output: %s", out)
	}
	// The approval is granted during the approve call, so its window ends
	// within [approveStart+window, approveEnd+window] (the printed time has
	// second precision only).
	until := approveEnd.Add(window)
	t.Logf("approve took %v: %s", out.took, strings.TrimSpace(out.stdout))

	// Wait on the window: allowed until it ends, step-up again after. The
	// RFC 3339 output has second precision, so the window ends within
	// [until-1s, until].
	var allows, after int
	err = proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		sent := time.Now()
		r := do(t, ctx, a, pay)
		switch r.Status {
		case http.StatusOK:
			allows++
			if sent.After(until.Add(50 * time.Millisecond)) {
				after++
			}
			return errorf("still allowed")
		case http.StatusUnauthorized:
			return nil
		}
		t.Fatalf("status %d during the window: %s", r.Status, r.Body)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if after > 0 {
		t.Errorf("%d requests sent after the approval window ended were allowed", after)
	}
	if ended := time.Now(); ended.Before(approveStart.Add(window)) {
		t.Errorf("approval ended at %s, before its %v window", ended, window)
	}
	upstreamCount(t, ctx, d, base, 1+allows)
}

// Scenario 6: drift: repeated out-of-intent calls make the control plane
// revoke the task; the record says why; later requests are revoked.
func scenarioDrift(t *testing.T, ctx context.Context, d *deployment) {
	task := d.uniq("T6")
	base := "/s6/" + task
	tok, mid := d.issue(ctx, idDrifter, task, "research", "--methods", "GET", "--paths", base+"/docs/**", "--ttl", "5m")
	a := d.agent(t, idDrifter)
	ok := agentproto.Command{Method: "GET", Path: base + "/docs/1", Mandate: tok}
	allowed(t, ctx, d, do(t, ctx, a, ok), decision{Subject: idDrifter, Task: task, MandateID: mid})

	for i := range 6 {
		r := do(t, ctx, a, agentproto.Command{Method: "GET", Path: base + "/secrets/" + string(rune('a'+i)), Mandate: tok})
		denied(t, ctx, d, r, 403, "mandate_out_of_scope", decision{Subject: idDrifter, Task: task})
	}
	var rec revocationJSON
	err := proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		for _, r := range d.revocations(t, ctx) {
			if r.Value == task {
				rec = r
				return nil
			}
		}
		return errorf("no revocation of task %s yet", task)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drift revocation: %+v", rec)
	if !strings.HasPrefix(rec.Reason, "drift:") || !strings.Contains(rec.Reason, "mandate_out_of_scope") {
		t.Errorf("revocation reason %q", rec.Reason)
	}
	out := d.mustCtl(ctx, "operator", "get", "revocations")
	if !strings.Contains(out.stdout, task) || !strings.Contains(out.stdout, "drift:") {
		t.Errorf("get revocations table lacks the drift record:\n%s", out.stdout)
	}
	// Every replica enforces it (the cp pushed it; poll both logs).
	err = proc.Poll(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		r := do(t, ctx, a, ok)
		if r.Status == http.StatusOK {
			return errorf("still allowed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		denied(t, ctx, d, do(t, ctx, a, ok), 403, "revoked", decision{Subject: idDrifter, Task: task})
	}
	audit := d.mustCtl(ctx, "operator", "audit", "--since", "1h")
	if !strings.Contains(audit.stdout, task) {
		t.Errorf("audit trail lacks the drift revocation of %s:\n%s", task, audit.stdout)
	}
}

// revocationJSON is one record of `mandatectl get revocations -o json`.
type revocationJSON struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	Value     string    `json:"value"`
	Reason    string    `json:"reason"`
	Expires   time.Time `json:"expires"`
	CreatedAt time.Time `json:"createdAt"`
	CreatedBy string    `json:"createdBy"`
}

func (d *deployment) revocations(t *testing.T, ctx context.Context) []revocationJSON {
	t.Helper()
	out := d.mustCtl(ctx, "operator", "get", "revocations", "-o", "json")
	var resp struct {
		Revocations []revocationJSON `json:"revocations"`
	}
	if err := json.Unmarshal([]byte(out.stdout), &resp); err != nil {
		t.Fatalf("get revocations -o json: %v\n%s", err, out.stdout)
	}
	return resp.Revocations
}
