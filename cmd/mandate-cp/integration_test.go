package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func waitAcked(ctx context.Context, t *testing.T, c mandatev1.AdminClient, typeURL, v string, want int32) {
	t.Helper()
	w, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: typeURL, Version: v, Timeout: durationpb.New(15 * time.Second)})
	if err != nil || w.GetReplicas() != want {
		t.Fatalf("WaitAcked(%s %s) = %v %v, want %d replicas", typeURL, v, w, err, want)
	}
}

func mustAllowed(ctx context.Context, t *testing.T, c checker, subject string, want bool) {
	t.Helper()
	got, err := c.allowed(ctx, subject)
	if err != nil || got != want {
		t.Fatalf("Check(%s) allowed=%v err=%v, want allowed=%v", subject, got, err, want)
	}
}

// TestRevokeWaitThenDeniedEverywhere: once WaitAcked returns, the very
// next Check on every replica is denied, although each had a cached allow.
func TestRevokeWaitThenDeniedEverywhere(t *testing.T) {
	ctx := context.Background()
	cp := startCP(t, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	c := adminClient(t, cp)
	var checks []checker
	for i := range 3 {
		checks = append(checks, newChecker(t, startAuthz(t, cp.addrs["xds"], fmt.Sprintf("authz-%d", i))))
	}
	waitFor(t, "3 replicas", func() bool {
		st, err := c.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 3
	})
	waitAcked(ctx, t, c, mandatev1.PolicyTypeURL, applyReports(ctx, t, c), 3)
	const alice, bob = "spiffe://example.org/agent/alice", "spiffe://example.org/agent/bob"
	for round := range 5 {
		subject := fmt.Sprintf("spiffe://example.org/agent/r%d", round)
		for _, ch := range checks {
			mustAllowed(ctx, t, ch, subject, true) // now cached
		}
		r, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: subject, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		waitAcked(ctx, t, c, mandatev1.RevocationTypeURL, r.GetVersion(), 3)
		for _, ch := range checks {
			mustAllowed(ctx, t, ch, subject, false)
			mustAllowed(ctx, t, ch, bob, true)
		}
	}
	// A downgrade: alice keeps only the reports.read intent.
	r, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: alice, Intents: []string{"reports.read"}, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(ctx, t, c, mandatev1.RevocationTypeURL, r.GetVersion(), 3)
	for _, ch := range checks {
		mustAllowed(ctx, t, ch, alice, false) // no intent declared: outside the downgrade
	}
}

// TestRestartLosesNothing: a graceful stop or a kill -9 of mandate-cp
// loses no policy or revocation; replicas keep enforcing while it is down,
// reconnect, and converge, including a deletion made while one of them was
// away.
func TestRestartLosesNothing(t *testing.T) {
	for _, mode := range []string{"sigterm", "kill-9"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			data := t.TempDir()
			cp := startCP(t, data, "127.0.0.1:0", "127.0.0.1:0")
			xdsAddr, adminAddr := cp.addrs["xds"], cp.addrs["admin"]
			c := adminClient(t, cp)
			a1, a2 := startAuthz(t, xdsAddr, "a1"), startAuthz(t, xdsAddr, "a2")
			ch1, ch2 := newChecker(t, a1), newChecker(t, a2)
			waitFor(t, "2 replicas", func() bool {
				st, err := c.Status(ctx, &mandatev1.StatusRequest{})
				return err == nil && len(st.GetReplicas()) == 2
			})
			waitAcked(ctx, t, c, mandatev1.PolicyTypeURL, applyReports(ctx, t, c), 2)
			const alice, bob = "spiffe://example.org/agent/alice", "spiffe://example.org/agent/bob"
			r, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: alice, Ttl: durationpb.New(time.Hour), Reason: "test"})
			if err != nil {
				t.Fatal(err)
			}
			waitAcked(ctx, t, c, mandatev1.RevocationTypeURL, r.GetVersion(), 2)
			before, err := c.Status(ctx, &mandatev1.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}

			if mode == "sigterm" {
				cp.stop(t)
			} else {
				cp.kill()
			}
			// The control plane is gone: replicas keep what they have.
			for _, ch := range []checker{ch1, ch2} {
				mustAllowed(ctx, t, ch, alice, false)
				mustAllowed(ctx, t, ch, bob, true)
			}
			// One replica goes away too.
			a2.kill()

			cp2 := startCP(t, data, xdsAddr, adminAddr)
			c2 := adminClient(t, cp2)
			after, err := c2.Status(ctx, &mandatev1.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for typ, v := range before.GetVersions() {
				if after.GetVersions()[typ] != v {
					t.Errorf("%s version %s before restart, %s after", typ, v, after.GetVersions()[typ])
				}
			}
			rl, err := c2.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
			if err != nil || len(rl.GetRevocations()) != 1 || rl.GetRevocations()[0].GetName() != r.GetRecord().GetName() ||
				rl.GetRevocations()[0].GetReason() != "test" {
				t.Fatalf("revocations after restart: %v %v", rl, err)
			}
			audit, err := c2.AuditLog(ctx, &mandatev1.AuditLogRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var actions []string
			for _, e := range audit.GetEntries() {
				if e.GetActor() == "plaintext:loopback" {
					actions = append(actions, e.GetAction())
				}
			}
			// The operator's two actions survived (the signing key the cp
			// created for itself is audited too, under its own identity).
			if strings.Join(actions, ",") != "policy.apply,revocation.create" {
				t.Fatalf("operator audit entries after restart: %v", actions)
			}
			// a1 reconnects on its own; delete the policy while a2 is away.
			waitFor(t, "a1 reconnected", func() bool {
				st, err := c2.Status(ctx, &mandatev1.StatusRequest{})
				return err == nil && len(st.GetReplicas()) == 1 && st.GetReplicas()[0].GetConnected()
			})
			d, err := c2.DeletePolicy(ctx, &mandatev1.DeletePolicyRequest{Name: "reports"})
			if err != nil {
				t.Fatal(err)
			}
			waitAcked(ctx, t, c2, mandatev1.PolicyTypeURL, d.GetVersion(), 1)
			mustAllowed(ctx, t, ch1, bob, false)

			a2b := startAuthz(t, xdsAddr, "a2")
			waitFor(t, "a2 ready", func() bool { return ready(a2b) == http.StatusOK })
			ch2b := newChecker(t, a2b)
			mustAllowed(ctx, t, ch2b, bob, false)   // the deletion reached it
			mustAllowed(ctx, t, ch2b, alice, false) // and the revocation
			waitAcked(ctx, t, c2, mandatev1.PolicyTypeURL, d.GetVersion(), 2)
		})
	}
}

// TestAuthzWithoutControlPlane: a replica that cannot reach mandate-cp is
// not ready and denies.
func TestAuthzWithoutControlPlane(t *testing.T) {
	ctx := context.Background()
	// A control plane that was there and is gone: its port is closed.
	cp := startCP(t, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	addr := cp.addrs["xds"]
	cp.stop(t)
	a := startAuthz(t, addr, "lonely")
	ch := newChecker(t, a)
	if code := ready(a); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d, want 503", code)
	}
	for range 3 {
		mustAllowed(ctx, t, ch, "spiffe://example.org/agent/alice", false)
	}
	// It becomes ready once the control plane is back, and enforces what
	// the control plane holds.
	cp2 := startCP(t, t.TempDir(), addr, "127.0.0.1:0")
	c2 := adminClient(t, cp2)
	waitFor(t, "replica reconnected", func() bool {
		st, err := c2.Status(ctx, &mandatev1.StatusRequest{})
		return err == nil && len(st.GetReplicas()) == 1 && st.GetReplicas()[0].GetConnected()
	})
	waitAcked(ctx, t, c2, mandatev1.PolicyTypeURL, applyReports(ctx, t, c2), 1)
	waitFor(t, "ready", func() bool { return ready(a) == http.StatusOK })
	mustAllowed(ctx, t, ch, "spiffe://example.org/agent/alice", true)
}

func TestFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{[]string{}, false},
		{[]string{"--data-dir", "x"}, true},
		{[]string{"--data-dir", "x", "extra"}, false},
		{[]string{"--data-dir", "x", "--xds-listen", ""}, false},
	}
	for _, tt := range tests {
		if _, err := parseFlags(tt.args, discardW{}); (err == nil) != tt.ok {
			t.Errorf("%q: %v", tt.args, err)
		}
	}
	// Plaintext on a non-loopback address is refused.
	err := run(context.Background(), []string{"--data-dir", t.TempDir(), "--plaintext", "--xds-listen", "0.0.0.0:0", "--metrics-addr", ""}, discardW{})
	if err == nil {
		t.Fatal("plaintext on 0.0.0.0 accepted")
	}
}

type discardW struct{}

func (discardW) Write(b []byte) (int, error) { return len(b), nil }
