package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/e2e/internal/agentproto"
	"github.com/mandate-dev/mandate/e2e/internal/proc"
)

const failureBudget = 2 * time.Minute

// TestControlPlaneLoss is scenario 7: mandate-cp killed (SIGKILL): the
// replicas keep deciding on what they have; past the staleness budget they
// fail closed (403 stale_state, /readyz 503); a restart on the same data
// directory loses nothing (policies, revocations, audit trail, signing keys)
// and the replicas converge again.
func TestControlPlaneLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), failureBudget)
	defer cancel()
	const budget = 3 * time.Second
	d := deploy(ctx, t, options{agents: []string{idWorker}, staleBudget: budget})
	a := d.agent(t, idWorker)

	live, revoked := d.uniq("T7live"), d.uniq("T7revoked")
	tokLive, _ := d.issue(ctx, idWorker, live, "batch", "--methods", "GET", "--paths", "/s7/"+live+"/**", "--ttl", "10m")
	tokRev, _ := d.issue(ctx, idWorker, revoked, "batch", "--methods", "GET", "--paths", "/s7/"+revoked+"/**", "--ttl", "10m")
	d.mustCtl(ctx, "operator", "revoke", "--task", revoked, "--for", "1h", "--reason", "e2e: before the crash", "--wait")
	reqLive := agentproto.Command{Method: "GET", Path: "/s7/" + live + "/x", Mandate: tokLive}
	reqRev := agentproto.Command{Method: "GET", Path: "/s7/" + revoked + "/x", Mandate: tokRev}
	allowed(t, ctx, d, do(t, ctx, a, reqLive), decision{Task: live})
	denied(t, ctx, d, do(t, ctx, a, reqRev), 403, "revoked", decision{Task: revoked})

	// An idle but live control plane is not a stale one: wait out the
	// budget with nothing to push (the replicas' heartbeats keep them fresh).
	idle := time.NewTimer(budget + time.Second)
	select {
	case <-idle.C:
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	allowed(t, ctx, d, do(t, ctx, a, reqLive), decision{Task: live})
	allowed(t, ctx, d, do(t, ctx, a, reqLive), decision{Task: live})

	before := map[string]string{}
	for _, args := range [][]string{{"get", "policies", "-o", "json"}, {"get", "revocations", "-o", "json"}, {"audit", "-o", "json"}} {
		before[strings.Join(args, " ")] = d.mustCtl(ctx, "operator", args...).stdout
	}

	d.cp.Kill()
	killed := time.Now()
	// Within the budget: the replicas keep deciding, both ways.
	var within int
	for time.Since(killed) < budget/2 {
		allowed(t, ctx, d, do(t, ctx, a, reqLive), decision{Task: live})
		denied(t, ctx, d, do(t, ctx, a, reqRev), 403, "revoked", decision{Task: revoked})
		within++
	}
	t.Logf("%d request pairs decided normally in the %v after the kill", within, budget/2)

	// Past the budget: fail closed, not ready.
	var staleAt time.Time
	err := proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		r := do(t, ctx, a, reqLive)
		if r.Status == http.StatusOK {
			within++
			return fmt.Errorf("still allowed %v after the kill", time.Since(killed))
		}
		staleAt = time.Now()
		denied(t, ctx, d, r, 403, "stale_state", decision{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The replica counts from its last contact with the control plane,
	// which may precede the kill by up to a keepalive interval.
	if staleAt.Sub(killed) < budget-time.Second {
		t.Errorf("stale after %v, before the %v budget", staleAt.Sub(killed), budget)
	}
	t.Logf("first stale_state deny %v after the kill (budget %v)", staleAt.Sub(killed).Round(time.Millisecond), budget)
	err = proc.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		for _, r := range d.replicas {
			if code, err := d.readyz(ctx, r); err != nil || code != http.StatusServiceUnavailable {
				return fmt.Errorf("%s /readyz %d %v", r.name, code, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 { // both replicas, round robin
		denied(t, ctx, d, do(t, ctx, a, reqLive), 403, "stale_state", decision{})
	}
	upstreamLive := len(d.seenWithPrefix(t, ctx, "/s7/"+live))
	if upstreamLive != within+3 {
		t.Errorf("upstream saw %d requests of the live task, want %d", upstreamLive, within+3)
	}

	// Restart on the same store and xDS port.
	d.startCP(ctx, d.cpAddrs.XDS)
	d.waitReady(ctx)
	for args, want := range before {
		got := d.mustCtl(ctx, "operator", strings.Fields(args)...).stdout
		if args == "audit -o json" {
			if !auditPrefix(t, want, got) {
				t.Errorf("audit trail after restart lost entries:\nbefore %s\nafter %s", want, got)
			}
			continue
		}
		if got != want {
			t.Errorf("%s changed across the restart:\nbefore %s\nafter %s", args, want, got)
		}
	}
	// The mandates signed before the crash still verify, the revocation holds.
	for range 4 {
		allowed(t, ctx, d, do(t, ctx, a, reqLive), decision{Task: live})
		denied(t, ctx, d, do(t, ctx, a, reqRev), 403, "revoked", decision{Task: revoked})
	}
	out := d.mustCtl(ctx, "operator", "status")
	if strings.Count(out.stdout, " yes ") < 2 {
		t.Errorf("status after restart: %s", out.stdout)
	}
}

// auditPrefix reports whether every entry of the before listing is in after.
func auditPrefix(t *testing.T, before, after string) bool {
	t.Helper()
	parse := func(s string) map[string]bool {
		var v struct {
			Entries []json.RawMessage `json:"entries"`
		}
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("audit -o json: %v: %s", err, s)
		}
		m := map[string]bool{}
		for _, e := range v.Entries {
			var buf bytes.Buffer
			_ = json.Compact(&buf, e)
			m[buf.String()] = true
		}
		return m
	}
	b, a := parse(before), parse(after)
	if len(b) == 0 {
		t.Fatalf("empty audit trail before the restart: %s", before)
	}
	for e := range b {
		if !a[e] {
			return false
		}
	}
	return true
}

// TestReplicaLoss is scenario 8: an authz replica is killed (SIGKILL) under
// load: requests in flight to it or routed to it before the proxy notices
// get 403 and are never forwarded; the other replica serves the rest.
func TestReplicaLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), failureBudget)
	defer cancel()
	d := deploy(ctx, t, options{agents: []string{idWorker}})
	a := d.agent(t, idWorker)
	task := d.uniq("T8")
	base := "/s8/" + task
	tok, _ := d.issue(ctx, idWorker, task, "batch", "--methods", "GET", "--paths", base+"/**", "--ttl", "10m")

	stop := filepath.Join(t.TempDir(), "stop")
	done := make(chan agentproto.Response, 1)
	go func() {
		r, err := a.Do(ctx, agentproto.Command{ID: "load", Op: agentproto.OpLoad, Method: "GET", Path: base + "/item", Mandate: tok,
			Load: &agentproto.Load{Concurrency: 4, MaxMS: 60000, StopFile: stop}})
		if err != nil {
			r.Error = err.Error()
		}
		done <- r
	}()
	stopLoad := func() agentproto.Response {
		if err := os.WriteFile(stop, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return <-done
	}
	err := proc.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		for _, r := range d.replicas {
			if n := countDecisions(d.decisions(t, r), task, "allow", time.Time{}); n < 20 {
				return fmt.Errorf("%s: %d allows", r.name, n)
			}
		}
		return nil
	})
	if err != nil {
		stopLoad()
		t.Fatal(err)
	}
	dead, survivor := d.replicas[0], d.replicas[1]
	killStart := time.Now()
	dead.p.Kill()
	killed := time.Now()
	err = proc.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		if n := countDecisions(d.decisions(t, survivor), task, "allow", killed.Add(time.Second)); n < 100 {
			return fmt.Errorf("survivor: %d allows since the kill", n)
		}
		return nil
	})
	res := stopLoad()
	if err != nil {
		t.Fatal(err)
	}
	if res.Error != "" {
		t.Fatalf("load: %s", res.Error)
	}

	survivorIDs := map[string]bool{}
	for _, rec := range d.decisions(t, survivor) {
		survivorIDs[rec.DecisionID] = true
	}
	allowedIDs := map[string]bool{}
	var n200, nErr, late int
	var lastErr time.Time
	for _, lr := range res.Results {
		start := time.Unix(0, lr.StartNS)
		switch {
		case lr.Error != "":
			t.Errorf("request failed at the transport: %s", lr.Error)
		case lr.Status == 200:
			n200++
			allowedIDs[lr.DecisionID] = true
			if start.After(killed) && !survivorIDs[lr.DecisionID] {
				t.Errorf("request sent after the kill allowed by decision %s, not in the survivor's log", lr.DecisionID)
			}
		case lr.Status == 403 && lr.Outcome == "error":
			nErr++
			if time.Unix(0, lr.EndNS).Before(killStart) {
				t.Errorf("check error before the kill: %+v", lr)
			}
			if start.After(killed.Add(2 * time.Second)) {
				late++
			}
			lastErr = start
		default:
			t.Errorf("unexpected response %+v", lr)
		}
	}
	if late > 0 {
		t.Errorf("%d requests sent more than 2s after the kill still failed: the proxy kept routing to the dead replica", late)
	}
	seenReqs := d.seenWithPrefix(t, ctx, base)
	if len(seenReqs) != n200 {
		t.Errorf("upstream saw %d requests, the agent got %d allows: a failed check was forwarded", len(seenReqs), n200)
	}
	for _, s := range seenReqs {
		if v := s.Headers["X-Mandate-Decision-Id"]; len(v) != 1 || !allowedIDs[v[0]] {
			t.Errorf("upstream saw a request without an allow: %v", v)
		}
	}
	msg := "none"
	if nErr > 0 {
		msg = fmt.Sprintf("last sent %v after the kill", lastErr.Sub(killed).Round(time.Millisecond))
	}
	t.Logf("%d requests: %d allowed, %d failed closed with 403 (%s)", len(res.Results), n200, nErr, msg)
}

// TestPolicyNACK is scenario 10: a valid policy set bigger than one
// replica's --max-rules: that replica NACKs it and keeps enforcing the old
// set, the other takes the new one, and `mandatectl status` shows the NACK.
func TestPolicyNACK(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), failureBudget)
	defer cancel()
	d := deploy(ctx, t, options{agents: []string{idWorker}, maxRules: [2]int{0, 20}})
	a := d.agent(t, idWorker)
	task := d.uniq("T10")
	tok, _ := d.issue(ctx, idWorker, task, "batch", "--methods", "GET", "--paths", "/s10/**", "--ttl", "10m")
	mandated := agentproto.Command{Method: "GET", Path: "/s10/work/1", Mandate: tok}
	reports := agentproto.Command{Method: "GET", Path: "/s10/reports/q3"}

	statusBefore := d.mustCtl(ctx, "operator", "status")
	// The new set: the old policy plus a reports policy of 30 rules, one of
	// which lets the worker read reports without a mandate.
	dir := t.TempDir()
	old, err := os.ReadFile(filepath.Join(d.opts.policies, "agents.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata:\n  name: reports\nspec:\n  rules:\n")
	b.WriteString("    - name: worker-reads-reports\n      effect: allow\n      subjects: [\"" + idWorker + "\"]\n      actions:\n        - methods: [GET]\n          paths: [\"/s10/reports/*\"]\n")
	for i := range 29 {
		fmt.Fprintf(&b, "    - name: team-%d\n      effect: allow\n      subjects: [\"spiffe://example.org/team/%d/*\"]\n      actions:\n        - methods: [GET]\n          paths: [\"/reports/%d/*\"]\n", i, i, i)
	}
	for name, content := range map[string]string{"agents.yaml": string(old), "reports.yaml": b.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	out := d.ctl(ctx, "operator", "apply", "-f", dir, "--wait")
	t.Logf("apply --wait: %s", out)
	if out.code == 0 && strings.Contains(out.stdout, "enforced by 2/2") {
		t.Errorf("apply --wait claims both replicas enforce the set")
	}
	status := d.mustCtl(ctx, "operator", "status")
	t.Logf("status before:\n%s\nstatus after:\n%s%s", statusBefore.stdout, status.stdout, status.stderr)
	var nackLine string
	for _, l := range strings.Split(status.stdout+status.stderr, "\n") {
		if strings.Contains(l, "authz-2") || strings.HasPrefix(l, "NACK") {
			nackLine += l + "\n"
		}
	}
	if !strings.Contains(nackLine, "rules") {
		t.Errorf("status does not show authz-2's NACK and its reason:\n%s", status)
	}

	// Directly, replica by replica (the probe is an allowed Check caller).
	check := func(r *replica) ctlOut {
		return d.ctl(ctx, "probe", "check", "--addr", r.grpc, "--server-id", idAuthz, "--principal", idWorker,
			"--destination", frontproxyID, "--method", "GET", "--path", reports.Path)
	}
	if out := check(d.replicas[0]); out.code != 0 {
		t.Errorf("authz-1 (new set) denies the new rule's request: %s", out)
	}
	if out := check(d.replicas[1]); out.code != 3 || !strings.Contains(out.stdout, "no_matching_rule") {
		t.Errorf("authz-2 (old set) does not deny the new rule's request: %s", out)
	}
	// Through the proxy: round robin reaches both; each decides by its set.
	for range 4 {
		r := do(t, ctx, a, reports)
		var rec decision
		if r.Status == http.StatusOK {
			rec = d.waitDecision(t, ctx, echoedDecision(t, r))
		} else {
			rec = d.waitDecision(t, ctx, parseDeny(t, r).DecisionID)
		}
		want := map[string]string{"authz-1": "allow", "authz-2": "deny"}[rec.replica]
		if rec.Result != want {
			t.Errorf("%s decided %s (%s) for the reports request, want %s", rec.replica, rec.Result, rec.Reason, want)
		}
		allowed(t, ctx, d, do(t, ctx, a, mandated), decision{Task: task}) // the old rules hold on both
	}
}
