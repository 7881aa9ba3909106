package issuer

import (
	"context"
	"errors"
	"github.com/mandate-dev/mandate/cp/store"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/issuance"
)

const (
	cpID    = "spiffe://example.org/mandate/cp"
	orchID  = "spiffe://example.org/orchestrator"
	agentA  = "spiffe://example.org/agent/a"
	agentB  = "spiffe://example.org/agent/b"
	agentC  = "spiffe://example.org/agent/c"
	agentD  = "spiffe://example.org/agent/d"
	agentE  = "spiffe://example.org/agent/e"
	mallory = "spiffe://example.org/mallory"
)

const testPolicy = `apiVersion: mandate.dev/v1
kind: IssuancePolicy
rules:
  - name: orch
    callers: ["spiffe://example.org/orchestrator"]
    subjects: ["spiffe://example.org/agent/*"]
    intents: ["triage"]
    maxTTL: 1h
    scope:
      destinations: ["spiffe://example.org/svc/*"]
      methods: [GET, POST]
      paths: ["/tickets/**"]
`

var wideScope = mandate.Scope{Destinations: []string{"spiffe://example.org/svc/tickets"}, Methods: []string{"GET", "POST"}, Paths: []string{"/tickets/**"}}

type env struct {
	clock *fakeClock
	plane *fakePlane
	svc   *Service
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	clock := newClock()
	plane := newFakePlane(t, clock.Now)
	pol, err := issuance.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Plane: plane, Store: plane.st, Policy: pol, Issuer: cpID, Now: clock.Now,
		Identify: func(context.Context) (string, error) { return "", errors.New("unused") },
	}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &env{clock: clock, plane: plane, svc: svc}
}

// replicaVerifier verifies like mandate-authz does, with the keys the
// plane was given.
func (e *env) replicaVerifier(t *testing.T) *mandate.Verifier {
	t.Helper()
	v, err := mandate.NewVerifier(mandate.VerifierConfig{Issuer: cpID, Audience: "mandate", Keys: e.plane.published(),
		Clock: clockFunc(e.clock.Now), CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) issue(t *testing.T, subject string, ttl time.Duration) *Issued {
	t.Helper()
	out, err := e.svc.Issue(context.Background(), orchID, IssueRequest{Subject: subject, Task: "task-1", Intent: "triage", Scope: wideScope, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestConfigValidation(t *testing.T) {
	base := func() Config {
		return Config{Plane: &fakePlane{}, Store: store.NewMemory(), Issuer: cpID, Identify: func(context.Context) (string, error) { return "", nil }}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no plane", func(c *Config) { c.Plane = nil }, "Plane"},
		{"no store", func(c *Config) { c.Store = nil }, "Store"},
		{"no identify", func(c *Config) { c.Identify = nil }, "Identify"},
		{"no issuer", func(c *Config) { c.Issuer = "" }, "Issuer"},
		{"bad issuer", func(c *Config) { c.Issuer = "mandate-cp" }, "issuer"},
		{"overlap below ttl", func(c *Config) { c.MaxTTL = 30 * time.Minute; c.Overlap = 20 * time.Minute }, "overlap"},
		{"ttl above replica cap", func(c *Config) { c.MaxTTL = 2 * time.Hour; c.Overlap = 3 * time.Hour }, "max TTL"},
		{"depth", func(c *Config) { c.MaxDepth = 9 }, "depth"},
		{"rotation", func(c *Config) { c.Rotation = time.Second }, "rotation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	out := e.issue(t, agentA, time.Hour)
	c, err := e.replicaVerifier(t).Verify(out.Token)
	if err != nil {
		t.Fatalf("replica cannot verify the issued mandate: %v", err)
	}
	if c.Subject != agentA || c.Task != "task-1" || c.Intent != "triage" || c.Issuer != cpID || c.Audience != "mandate" {
		t.Fatalf("claims = %+v", c)
	}
	if c.TTL() != DefaultMaxTTL {
		t.Fatalf("ttl = %v, want capped at %v", c.TTL(), DefaultMaxTTL)
	}
	// Audit trail has the issuance, never the token.
	log, err := e.plane.st.AuditLog(ctx, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range log {
		if strings.Contains(a.Detail, out.Token) || strings.Contains(a.Detail, string(out.Token[len(out.Token)-20:])) {
			t.Fatalf("audit entry leaks the token: %+v", a)
		}
		if a.Action == actionIssue && a.Object == "mandate/"+c.ID && a.Actor == orchID && strings.Contains(a.Detail, "task=task-1") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no issuance audit entry in %+v", log)
	}

	refusals := []struct {
		name   string
		caller string
		req    IssueRequest
		kind   ErrorKind
	}{
		{"unknown caller", mallory, IssueRequest{Subject: agentA, Task: "t", Intent: "triage", Scope: wideScope}, KindDenied},
		{"intent", orchID, IssueRequest{Subject: agentA, Task: "t", Intent: "delete", Scope: wideScope}, KindDenied},
		{"scope wider than ceiling", orchID, IssueRequest{Subject: agentA, Task: "t", Intent: "triage", Scope: mandate.Scope{Paths: []string{"/**"}}}, KindDenied},
		{"subject not spiffe", orchID, IssueRequest{Subject: "agent-a", Task: "t", Intent: "triage", Scope: wideScope}, KindInvalid},
		{"negative ttl", orchID, IssueRequest{Subject: agentA, Task: "t", Intent: "triage", Scope: wideScope, TTL: -time.Second}, KindInvalid},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.svc.Issue(ctx, tt.caller, tt.req)
			var ie *Error
			if !errors.As(err, &ie) || ie.Kind != tt.kind {
				t.Fatalf("Issue = %v, want kind %d", err, tt.kind)
			}
		})
	}
}

func TestRotationOverlap(t *testing.T) {
	e := newEnv(t, nil) // rotation 24h, overlap 1h, max TTL 15m
	ctx := context.Background()
	if n := len(e.plane.published()); n != 1 {
		t.Fatalf("published %d keys after start, want 1", n)
	}
	e.clock.Advance(24*time.Hour - time.Minute)
	if changed, err := e.svc.Keyring().Tick(ctx); err != nil || changed {
		t.Fatalf("Tick before the rotation time = %v, %v", changed, err)
	}
	old := e.issue(t, agentA, 15*time.Minute)
	e.clock.Advance(2 * time.Minute)
	if changed, err := e.svc.Keyring().Tick(ctx); err != nil || !changed {
		t.Fatalf("Tick at the rotation time = %v, %v", changed, err)
	}
	if n := len(e.plane.published()); n != 2 {
		t.Fatalf("published %d keys during the overlap, want 2", n)
	}
	if _, err := e.replicaVerifier(t).Verify(old.Token); err != nil {
		t.Fatalf("token of the retired key refused during the overlap: %v", err)
	}
	fresh := e.issue(t, agentA, 15*time.Minute)
	if fresh.KeyID == old.KeyID {
		t.Fatal("new tokens still signed with the retired key")
	}
	sks, _ := e.plane.st.SigningKeys(ctx)
	if len(sks) != 2 {
		t.Fatalf("store holds %d signing keys, want 2", len(sks))
	}

	// Restart: the same keys come back, nothing is rotated.
	svc2, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sg, _, _ := svc2.Keyring().Signer()
	if sg.KeyID() != fresh.KeyID {
		t.Fatalf("after restart the active key is %s, want %s", sg.KeyID(), fresh.KeyID)
	}

	// After the overlap the retired key is gone everywhere.
	e.clock.Advance(time.Hour)
	if _, err := e.svc.Keyring().Tick(ctx); err != nil {
		t.Fatal(err)
	}
	keys := e.plane.published()
	if len(keys) != 1 || keys[0].ID != fresh.KeyID {
		t.Fatalf("published after the overlap = %v, want only %s", keys, fresh.KeyID)
	}
	if sks, err := e.plane.st.SigningKeys(ctx); err != nil || slices.ContainsFunc(sks, func(k store.SigningKey) bool { return k.ID == old.KeyID }) {
		t.Fatal("retired signing key still in the store after the overlap")
	}
	// A token signed by the retired key is refused as unknown, whatever its
	// expiry (simulate a replica clock: verify a token still unexpired by
	// building one with the old key is impossible now; the key is unknown).
	if _, err := e.replicaVerifier(t).Verify(old.Token); mandate.ReasonOf(err) != mandate.ReasonUnknownKey {
		t.Fatalf("retired-key token after the overlap: %v, want %s", err, mandate.ReasonUnknownKey)
	}
}

func TestIssueRotatesWhenDue(t *testing.T) {
	e := newEnv(t, nil)
	first := e.issue(t, agentA, time.Minute)
	e.clock.Advance(25 * time.Hour) // Run never ticked
	second := e.issue(t, agentA, time.Minute)
	if first.KeyID == second.KeyID {
		t.Fatal("issued with a key past its rotation time")
	}
	if _, err := e.replicaVerifier(t).Verify(second.Token); err != nil {
		t.Fatal(err)
	}
}

func TestDelegate(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	root := e.issue(t, agentA, 10*time.Minute)
	narrow := mandate.Scope{Destinations: []string{"spiffe://example.org/svc/tickets"}, Methods: []string{"GET"}, Paths: []string{"/tickets/*"}}

	child, err := e.svc.Delegate(ctx, agentA, DelegateRequest{ParentToken: root.Token, To: agentB, Scope: narrow, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := e.replicaVerifier(t).Verify(child.Token)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Subject != agentB || cc.Depth != 1 || cc.Chain[0].ID != root.Claims.ID || cc.Chain[0].Subject != agentA || cc.Expiry > root.Claims.Expiry {
		t.Fatalf("child claims = %+v", cc)
	}

	refusals := []struct {
		name   string
		caller string
		req    DelegateRequest
		reason string
	}{
		{"wrong caller", agentB, DelegateRequest{ParentToken: root.Token, To: agentC, Scope: narrow}, string(mandate.ReasonWrongHolder)},
		{"widening", agentA, DelegateRequest{ParentToken: root.Token, To: agentC, Scope: mandate.Scope{Paths: []string{"/**"}}}, string(mandate.ReasonOutOfScope)},
		{"widening method", agentA, DelegateRequest{ParentToken: root.Token, To: agentC, Scope: mandate.Scope{Destinations: narrow.Destinations, Methods: []string{"DELETE"}, Paths: narrow.Paths}}, string(mandate.ReasonOutOfScope)},
		{"garbage parent", agentA, DelegateRequest{ParentToken: "a.b.c", To: agentC, Scope: narrow}, string(mandate.ReasonMalformed)},
		{"bad to", agentA, DelegateRequest{ParentToken: root.Token, To: "agent-c", Scope: narrow}, "bad_subject"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.svc.Delegate(ctx, tt.caller, tt.req)
			var ie *Error
			if !errors.As(err, &ie) || ie.Reason != tt.reason {
				t.Fatalf("Delegate = %v, want reason %s", err, tt.reason)
			}
		})
	}

	// Depth cap (3): a -> b -> c -> d is depth 3, d -> e would be 4.
	grand, err := e.svc.Delegate(ctx, agentB, DelegateRequest{ParentToken: child.Token, To: agentC, Scope: narrow})
	if err != nil {
		t.Fatal(err)
	}
	great, err := e.svc.Delegate(ctx, agentC, DelegateRequest{ParentToken: grand.Token, To: agentD, Scope: narrow})
	if err != nil {
		t.Fatal(err)
	}
	if great.Claims.Depth != 3 {
		t.Fatalf("depth = %d", great.Claims.Depth)
	}
	_, err = e.svc.Delegate(ctx, agentD, DelegateRequest{ParentToken: great.Token, To: agentE, Scope: narrow})
	if mandate.ReasonOf(err) != mandate.ReasonBadChain {
		t.Fatalf("delegation past the depth cap = %v, want %s", err, mandate.ReasonBadChain)
	}

	// Revoking the root refuses delegation from any descendant.
	if _, err := e.plane.Revoke(ctx, revocation.Record{ID: "r1", Kind: revocation.KindMandate, Value: root.Claims.ID,
		Expires: e.clock.Now().Add(time.Hour)}, "op"); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Delegate(ctx, agentC, DelegateRequest{ParentToken: grand.Token, To: agentD, Scope: narrow})
	var ie *Error
	if !errors.As(err, &ie) || ie.Kind != KindRevoked {
		t.Fatalf("delegation from a revoked lineage = %v, want revoked", err)
	}
}

func TestCompleteTask(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	root := e.issue(t, agentA, 10*time.Minute)
	if _, err := e.svc.CompleteTask(ctx, mallory, false, "task-1", "done"); err == nil {
		t.Fatal("a stranger completed the task")
	}
	done, err := e.svc.CompleteTask(ctx, orchID, false, "task-1", "done")
	if err != nil {
		t.Fatal(err)
	}
	if len(e.plane.revs) != 1 {
		t.Fatalf("revocations = %+v", e.plane.revs)
	}
	r := e.plane.revs[0]
	if r.Kind != revocation.KindTask || r.Value != "task-1" || r.ID != done.RevocationID || !strings.Contains(r.Reason, "done") ||
		r.Expires.Before(root.Claims.ExpiryTime()) {
		t.Fatalf("record = %+v", r)
	}
	// The record covers the task's mandates and their delegations.
	set, err := revocation.NewSet(e.plane.revs)
	if err != nil {
		t.Fatal(err)
	}
	if !set.Check(e.clock.Now(), revocation.Query{Subject: agentB, Task: "task-1", Chain: []string{root.Claims.ID, "child"}}).Revoked {
		t.Fatal("delegated mandate of the completed task not revoked")
	}
	// No new mandate for a completed task, and no delegation from it.
	if _, err := e.svc.Issue(ctx, orchID, IssueRequest{Subject: agentA, Task: "task-1", Intent: "triage", Scope: wideScope}); err == nil {
		t.Fatal("issued a mandate for a completed task")
	}
	if _, err := e.svc.Delegate(ctx, agentA, DelegateRequest{ParentToken: root.Token, To: agentB, Scope: wideScope}); err == nil {
		t.Fatal("delegated a mandate of a completed task")
	}
	// Operators may complete any task.
	if _, err := e.svc.CompleteTask(ctx, "spiffe://example.org/mandate/operator", true, "other-task", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CompleteTask(ctx, orchID, true, "bad task", ""); err == nil {
		t.Fatal("accepted a malformed task id")
	}

	// The task index survives a restart (rebuilt from the audit trail).
	svc2, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !svc2.tasks.issuedBy("task-1", orchID) {
		t.Fatal("task index not rebuilt from the audit trail")
	}
}
