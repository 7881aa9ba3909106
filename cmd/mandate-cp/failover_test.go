package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// metricLines returns the lines of a process's /metrics.
func metricLines(t tb, p *proc) []string {
	t.Helper()
	resp, err := http.Get("http://" + p.addrs["metrics"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// metric reads one sample of a process's /metrics ("name{labels}").
func metric(t *testing.T, p *proc, sample string) float64 {
	t.Helper()
	for _, l := range metricLines(t, p) {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

const extraPolicy = `apiVersion: mandate.dev/v1
kind: Policy
metadata:
  name: extra
spec:
  rules:
    - name: agents-read-docs
      effect: allow
      subjects: ["spiffe://example.org/agent/*"]
      actions:
        - methods: [GET]
          paths: ["/docs/*"]
`

// TestEtcdReplicaFailsOver: a replica given both instances
// (--xds-server A,B) follows A. While the replica is frozen (SIGSTOP),
// A is killed (-9) and, through B, a policy is deleted and a subject
// revoked. Thawed, the replica moves to B and resumes its stream with
// initial_resource_versions: it decodes only the one new revocation (no
// full resend of the 40 it holds), drops the deleted policy, denies the
// new subject, and B's WaitAcked counts it.
func TestEtcdReplicaFailsOver(t *testing.T) {
	ctx := context.Background()
	a, b, ac, bc := twoInstances(t)
	r := startAuthz(t, a.addrs["xds"]+","+b.addrs["xds"], "authz-1")
	check := newChecker(t, r)
	waitFor(t, "the replica on A", func() bool {
		st, err := ac.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 1
	})
	if _, err := ac.ApplyPolicies(ctx, &mandatev1.ApplyPoliciesRequest{Policies: []*mandatev1.Policy{
		{Name: "extra", Source: []byte(extraPolicy), SourceFile: "extra.yaml"}}}); err != nil {
		t.Fatal(err)
	}
	waitAcked(ctx, t, ac, mandatev1.PolicyTypeURL, applyReports(ctx, t, ac), 1)
	batch := &mandatev1.RevokeBatchRequest{}
	for i := range 40 {
		batch.Revocations = append(batch.Revocations, &mandatev1.RevokeRequest{Kind: "subject",
			Value: fmt.Sprintf("spiffe://example.org/agent/old-%d", i), Ttl: durationpb.New(time.Hour)})
	}
	rb, err := ac.RevokeBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(ctx, t, ac, mandatev1.RevocationTypeURL, rb.GetVersion(), 1)
	const fresh = "spiffe://example.org/agent/fresh"
	mustAllowed(ctx, t, check, fresh, true)
	decoded := func(typ string) float64 {
		return metric(t, r, `mandate_xds_client_resources_decoded_total{type="`+typ+`"}`)
	}
	polBefore, revBefore := decoded("Policy"), decoded("Revocation")
	if revBefore < 40 {
		t.Fatalf("the replica decoded %v revocations, want at least 40", revBefore)
	}

	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	a.kill()
	del, err := bc.DeletePolicy(ctx, &mandatev1.DeletePolicyRequest{Name: "extra"})
	if err != nil {
		t.Fatal(err)
	}
	rv, err := bc.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: fresh, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// The new revocation reaches the replica only from B.
	waitFor(t, "the replica's stream to B", func() bool { return decoded("Revocation") > revBefore })
	t.Logf("replica got B's changes %v after it was thawed", time.Since(thawed).Round(time.Millisecond))
	// B's status and WaitAcked count it once the dead A's presence lapses
	// (--etcd-lease-ttl 2s).
	waitFor(t, "the replica counted on B", func() bool {
		st, err := bc.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 1 && st.GetReplicas()[0].GetConnected()
	})
	waitAcked(ctx, t, bc, mandatev1.RevocationTypeURL, rv.GetVersion(), 1)
	waitAcked(ctx, t, bc, mandatev1.PolicyTypeURL, del.GetVersion(), 1)
	mustAllowed(ctx, t, check, fresh, false)
	mustAllowed(ctx, t, check, "spiffe://example.org/agent/bob", true)
	if got := decoded("Revocation") - revBefore; got != 1 {
		t.Errorf("the replica decoded %v revocations after the failover, want 1 (no full resend)", got)
	}
	if got := decoded("Policy") - polBefore; got != 0 {
		t.Errorf("the replica decoded %v policies after the failover, want 0", got)
	}
	st, err := bc.Status(ctx, &mandatev1.StatusRequest{})
	if err != nil || len(st.GetReplicas()) != 1 {
		t.Fatalf("B's status: %v, %v", st, err)
	}
	lp, err := bc.ListPolicies(ctx, &mandatev1.ListPoliciesRequest{})
	if err != nil || len(lp.GetPolicies()) != 1 || lp.GetPolicies()[0].GetName() != "reports" {
		t.Fatalf("policies on B: %v, %v", lp, err)
	}
}
