package issuer

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/cp/issuance"
)

const orch2 = "spiffe://example.org/orchestrator-2"

// TestTaskOwnership: a task belongs to the orchestrator that first issued
// into it, durably. Another orchestrator cannot issue into it or complete
// it, nor can an agent that was delegated (or delegated) a mandate of it;
// an operator may, audited as such; completing twice is a no-op. Before,
// a second orchestrator could issue into any task, and a delegating agent
// could complete it.
func TestTaskOwnership(t *testing.T) {
	pol, err := issuance.Parse("two.yaml", []byte(strings.Replace(testPolicy,
		`callers: ["spiffe://example.org/orchestrator"]`,
		`callers: ["spiffe://example.org/orchestrator", "spiffe://example.org/orchestrator-2"]`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Policy = pol })
	ctx := context.Background()
	root := e.issue(t, agentA, 0)
	if _, err := e.svc.Delegate(ctx, agentA, DelegateRequest{ParentToken: root.Token, To: agentB, Scope: wideScope}); err != nil {
		t.Fatal(err)
	}
	denied := func(what string, err error) {
		t.Helper()
		var ie *Error
		if !errors.As(err, &ie) || ie.Kind != KindDenied {
			t.Fatalf("%s: %v, want denied", what, err)
		}
	}
	_, err = e.svc.Issue(ctx, orch2, IssueRequest{Subject: agentC, Task: "task-1", Intent: "triage", Scope: wideScope})
	denied("another orchestrator issuing into the task", err)
	_, err = e.svc.CompleteTask(ctx, orch2, false, "task-1", "mine now")
	denied("another orchestrator completing the task", err)
	_, err = e.svc.CompleteTask(ctx, agentA, false, "task-1", "delegator")
	denied("the agent that delegated completing the task", err)
	_, err = e.svc.CompleteTask(ctx, agentB, false, "task-1", "delegatee")
	denied("the delegatee completing the task", err)
	if len(e.plane.revs) != 0 {
		t.Fatalf("records written by refused calls: %+v", e.plane.revs)
	}
	// Its own task, another orchestrator may.
	if _, err := e.svc.Issue(ctx, orch2, IssueRequest{Subject: agentC, Task: "task-2", Intent: "triage", Scope: wideScope}); err != nil {
		t.Fatal(err)
	}

	// Durable: a restarted issuer over the same store still refuses.
	svc2, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = svc2.Issue(ctx, orch2, IssueRequest{Subject: agentC, Task: "task-1", Intent: "triage", Scope: wideScope})
	denied("another orchestrator after a restart", err)

	// An operator may complete it, audited as an operator completion;
	// the owner completing it again gets the same record.
	op := "spiffe://example.org/mandate/operator"
	done, err := svc2.CompleteTask(ctx, op, true, "task-1", "incident")
	if err != nil {
		t.Fatal(err)
	}
	again, err := svc2.CompleteTask(ctx, orchID, false, "task-1", "done")
	if err != nil || again.RevocationID != done.RevocationID || len(e.plane.revs) != 1 {
		t.Fatalf("second completion: %+v %v, %d records", again, err, len(e.plane.revs))
	}
	entries, err := e.plane.st.AuditLog(ctx, e.clock.Now().Add(-1e12), 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range entries {
		if a.Action == actionCompleteOperator && a.Actor == op && a.Object == "task/task-1" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no operator completion in the audit trail: %+v", entries)
	}
}
